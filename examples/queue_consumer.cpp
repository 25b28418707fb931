// Recipe: a queue consumer that acknowledges only finished work. It reads
// "MSG <id> <payload>" lines from a broker over TCP, processes each in a
// sub-task (at most 4 at once), and answers "ACK <id>" only once that
// processing has finished. On shutdown it stops reading and finishes what it
// holds within a grace; on a broken upstream it fails and is restarted with
// backoff. What it never acknowledged, the broker delivers again.
//
//   queue_consumer --self-test   a broker in the same program feeds 200
//                                messages, breaks the connection once, stops
//                                the consumer midway and starts it again
#include <processmanager/processmanager.hpp>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace asio = pm::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

/// What the consumer did, for whoever watches it (the self-test).
struct Processed {
  std::mutex mu;
  std::map<std::uint64_t, int> times;  // id -> how often it was processed
};

/// One connection to the broker, shared by the reader and the sub-tasks
/// (which may outlive a forced stop of the reader's frame).
struct Link {
  explicit Link(const asio::any_io_executor& ex) : socket(ex), slot_freed(ex, asio::steady_timer::time_point::max()) {}
  tcp::socket socket;
  asio::steady_timer slot_freed;  // cancelled whenever a sub-task ends: the reader may take more
  std::size_t in_flight = 0;
  std::deque<std::string> outbox;  // lines not yet written: one writer at a time
  bool writing = false;

  /// Queues `line`; the first sender writes until the queue is empty. All on
  /// the service's strand, so no lock.
  asio::awaitable<void> send(std::string line) {
    outbox.push_back(std::move(line));
    if (writing) co_return;
    writing = true;
    while (!outbox.empty()) {
      const std::string next = std::move(outbox.front());
      outbox.pop_front();
      co_await asio::async_write(socket, asio::buffer(next), asio::use_awaitable);
    }
    writing = false;
  }
};

/// Frees the sub-task's slot however it ends: finished, failed or cancelled.
struct Slot {
  std::shared_ptr<Link> link;
  ~Slot() {
    --link->in_flight;
    link->slot_freed.cancel();
  }
};

/// The work on one message; the ack goes out only after it.
asio::awaitable<void> process(std::shared_ptr<Link> link, std::uint64_t id, std::string payload,
                              std::shared_ptr<Processed> processed) {
  Slot slot{link};
  asio::steady_timer work(co_await asio::this_coro::executor, std::chrono::milliseconds(1 + (id + payload.size()) % 7));
  co_await work.async_wait(asio::use_awaitable);  // stands for real work on `payload`
  {
    std::lock_guard lock(processed->mu);
    ++processed->times[id];
  }
  co_await link->send(std::string("ACK ").append(std::to_string(id)).append("\n"));
}

/// The service. Each run is one connection: connect, consume until shutdown
/// or until the connection breaks (then fail, for the supervisor to restart).
class Consumer : public pm::Runnable {
 public:
  Consumer(tcp::endpoint broker, std::chrono::milliseconds grace, std::shared_ptr<Processed> processed)
      : broker_(broker), grace_(grace), processed_(std::move(processed)) {}
  std::string process_name() const override { return "consumer"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

  asio::awaitable<void> process_start() override {
    auto ticker = co_await guard_.runtime_ticker();
    const auto ex = co_await asio::this_coro::executor;  // not inside the next line: GCC PR 100611
    auto link = std::make_shared<Link>(ex);
    for (;;) {  // refused: throws, and the supervisor restarts the service after its backoff
      auto connected = co_await ticker.tick(link->socket.async_connect(broker_, asio::deferred));
      if (connected.is_next()) break;
      if (connected.control().is_shutdown()) co_return;
      boost::system::error_code ignored;
      link->socket.close(ignored);  // a reload interrupted the connect: connect again
    }
    pm::TaskScope work(ex, {.name = "consumer/messages"});
    std::string buffer;
    std::exception_ptr broken;
    try {
      for (;;) {
        if (link->in_flight == max_in_flight) {  // back-pressure: read no more until a slot frees
          auto freed = co_await ticker.tick(link->slot_freed.async_wait(asio::as_tuple(asio::deferred)));
          if (freed.is_control() && freed.control().is_shutdown()) break;
          continue;
        }
        auto read = co_await ticker.tick(
            asio::async_read_until(link->socket, asio::dynamic_buffer(buffer, 4096), '\n', asio::deferred));
        if (read.is_control()) {
          if (read.control().is_shutdown()) break;
          continue;
        }
        const std::string line = buffer.substr(0, read.next() - 1);
        buffer.erase(0, read.next());
        std::uint64_t id = 0;
        int payload_at = 0;
        if (std::sscanf(line.c_str(), "MSG %" SCNu64 " %n", &id, &payload_at) != 1 || payload_at == 0) {
          throw std::runtime_error(std::string("bad line from the broker: ").append(line));
        }
        ++link->in_flight;
        work.spawn(process(link, id, line.substr(static_cast<std::size_t>(payload_at)), processed_),
                   std::string("msg-").append(std::to_string(id)));
      }
    } catch (...) {
      broken = std::current_exception();  // eof, reset: the upstream is gone
    }
    // Lines read but not yet taken stay unacknowledged: the broker has them.
    if (broken) {
      // Nothing can be acknowledged any more: stop the work now and fail.
      boost::system::error_code ignored;
      link->socket.close(ignored);
      co_await work.drain(0ms);
      std::rethrow_exception(broken);
    }
    // A stop: what is in flight finishes and is acked within the grace; what
    // is cut off is not acked, so the broker delivers it again.
    const pm::DrainReport report = co_await work.drain(grace_);
    if (!report.cancelled.empty()) {
      pm::log(pm::LogLevel::warn, "consumer",
              std::string("left unacknowledged for redelivery: ").append(std::to_string(report.cancelled.size())));
    }
    boost::system::error_code ec;
    link->socket.shutdown(tcp::socket::shutdown_send, ec);  // after the last ack: the broker reads them all
    link->socket.close(ec);
  }

 private:
  static constexpr std::size_t max_in_flight = 4;
  pm::RuntimeGuard guard_{"consumer"};
  tcp::endpoint broker_;
  std::chrono::milliseconds grace_;
  std::shared_ptr<Processed> processed_;
};

// ---------------------------------------------------------------- self-test

/// The broker, and the oracle: its books say what was acknowledged. It runs
/// on one thread of its own (its io_context), so its books need no lock
/// until that thread has ended.
struct Broker {
  explicit Broker(asio::io_context& io, std::uint64_t messages) : io(io), acceptor(io) {
    for (std::uint64_t id = 1; id <= messages; ++id) ready.push_back(id);
    listen(0);
  }
  asio::io_context& io;
  tcp::acceptor acceptor;
  std::deque<std::uint64_t> ready;  // to deliver, lowest first
  std::set<std::uint64_t> acked;
  std::map<std::uint64_t, int> deliveries;
  std::vector<std::string> errors;
  int connections = 0;
  std::vector<std::shared_ptr<tcp::socket>> live;
  std::vector<asio::steady_timer*> writers;  // woken when there is more to send
  std::function<void(Broker&)> on_ack;       // the self-test's script
  static constexpr std::size_t window = 8;   // unacked messages per connection

  void listen(std::uint16_t port) {
    acceptor.open(tcp::v4());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    acceptor.bind({asio::ip::make_address("127.0.0.1"), port});
    acceptor.listen();
    asio::co_spawn(io, accept(), asio::detached);
  }
  /// Kills the connection with a reset and stops listening ("the broker is down").
  void crash() {
    for (auto& s : live) {
      boost::system::error_code ec;
      s->set_option(asio::socket_base::linger(true, 0), ec);
      s->close(ec);
    }
    acceptor.close();
  }
  void wake() {
    for (auto* w : writers) w->cancel();
  }
  asio::awaitable<void> accept() {
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      ++connections;
      asio::co_spawn(io, serve(std::make_shared<tcp::socket>(std::move(socket))), asio::detached);
    }
  }
  asio::awaitable<void> deliver(std::shared_ptr<tcp::socket> s, std::shared_ptr<std::set<std::uint64_t>> outstanding) {
    asio::steady_timer more(io, asio::steady_timer::time_point::max());
    writers.push_back(&more);
    boost::system::error_code ec;
    while (s->is_open() && !ec) {
      if (ready.empty() || outstanding->size() >= window) {
        co_await more.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        ec = {};
        continue;
      }
      const std::uint64_t id = ready.front();
      ready.pop_front();
      outstanding->insert(id);
      ++deliveries[id];
      const std::string line =
          std::string("MSG ").append(std::to_string(id)).append(" order-").append(std::to_string(id)).append("\n");
      co_await asio::async_write(*s, asio::buffer(line), asio::redirect_error(asio::use_awaitable, ec));
    }
    writers.erase(std::find(writers.begin(), writers.end(), &more));
  }
  asio::awaitable<void> serve(std::shared_ptr<tcp::socket> s) {
    live.push_back(s);
    auto outstanding = std::make_shared<std::set<std::uint64_t>>();
    asio::co_spawn(io, deliver(s, outstanding), asio::detached);
    std::string buffer;
    for (;;) {
      auto [ec, n] =
          co_await asio::async_read_until(*s, asio::dynamic_buffer(buffer), '\n', asio::as_tuple(asio::use_awaitable));
      if (ec) break;
      const std::string line = buffer.substr(0, n - 1);
      buffer.erase(0, n);
      std::uint64_t id = 0;
      if (std::sscanf(line.c_str(), "ACK %" SCNu64, &id) != 1) {
        errors.push_back(std::string("unknown line: ").append(line));
      } else if (outstanding->erase(id) == 0) {
        errors.push_back(std::string("ACK ").append(std::to_string(id)).append(" not outstanding on this connection"));
      } else if (!acked.insert(id).second) {
        errors.push_back(std::string("ACK ").append(std::to_string(id)).append(" twice"));
      } else if (on_ack) {
        on_ack(*this);
      }
      wake();
    }
    // Whatever this connection held unacknowledged goes back to the queue.
    for (auto id : *outstanding) ready.push_back(id);
    std::sort(ready.begin(), ready.end());
    outstanding->clear();
    boost::system::error_code ignored;
    s->close(ignored);
    live.erase(std::find(live.begin(), live.end(), s));
    wake();
  }
};

/// Restarts of the consumer as the manager's events tell them.
struct Restarts {
  std::mutex mu;
  std::vector<std::chrono::nanoseconds> backoff, observed;
  std::chrono::system_clock::time_point last{};
  int count = 0;
  std::function<void(int count)> on_restart;  // called outside the lock
};

/// One run of the consumer under pm::run on two threads: a fresh tree.
int run_consumer(std::uint16_t port, std::shared_ptr<Processed> processed, Restarts& restarts,
                 std::shared_ptr<pm::ProcessControlHandler>& handle, std::mutex& handle_mu) {
  auto consumer =
      std::make_shared<Consumer>(tcp::endpoint{asio::ip::make_address("127.0.0.1"), port}, 2000ms, processed);
  auto root =
      pm::ProcessManagerBuilder()
          .name("queue")
          .on_event([&restarts](const pm::Event& e) {
            if (e.path != "queue/consumer") return;
            int restart = 0;
            {
              std::lock_guard lock(restarts.mu);
              if (e.kind == pm::EventKind::restart && e.backoff) {
                restart = ++restarts.count;
                restarts.backoff.push_back(*e.backoff);
                restarts.last = e.time;
              } else if (e.kind == pm::EventKind::state && e.state == pm::ChildState::running &&
                         restarts.observed.size() < restarts.backoff.size()) {
                restarts.observed.push_back(e.time - restarts.last);
              }
            }
            if (restart != 0 && restarts.on_restart) restarts.on_restart(restart);
          })
          .pre_insert(consumer, {.restart = {{.max_restarts = 10, .window = 10s, .backoff = {.initial = 50ms}}}})
          .build();
  {
    std::lock_guard lock(handle_mu);
    handle = root->process_handle();
  }
  const int code = pm::run(root, {.threads = 2, .handle_signals = false});
  std::lock_guard lock(handle_mu);
  handle.reset();
  return code;
}

int self_test() {
  constexpr std::uint64_t messages = 200;
  asio::io_context io;
  Broker broker(io, messages);
  const std::uint16_t port = broker.acceptor.local_endpoint().port();
  auto processed = std::make_shared<Processed>();
  Restarts restarts;
  std::mutex handle_mu;
  std::shared_ptr<pm::ProcessControlHandler> handle;  // the running tree's, for the broker's script
  const auto stop_tree = [&] {
    std::lock_guard lock(handle_mu);
    if (handle) handle->request_shutdown();
  };

  // The script, driven by the broker's books: at 60 acks the broker crashes
  // (a reset, then refused connections) and comes back once the consumer's
  // second restart is scheduled; at 130 the first run is stopped; at 200
  // the second.
  bool crashed = false;
  broker.on_ack = [&](Broker& b) {
    if (b.acked.size() == 60 && !crashed) {
      crashed = true;
      b.crash();
    }
    if (b.acked.size() == 130 || b.acked.size() == messages) stop_tree();
  };
  asio::steady_timer guard(io, 40s);
  guard.async_wait([&](boost::system::error_code ec) {
    if (ec) return;
    broker.errors.emplace_back("the self-test ran out of time");
    stop_tree();
    io.stop();
  });
  // The second restart has found the broker down: it comes back up.
  restarts.on_restart = [&](int restart) {
    if (restart == 2) asio::post(io, [&] { broker.listen(port); });
  };
  std::thread broker_thread([&io] { io.run(); });

  const int first = run_consumer(port, processed, restarts, handle, handle_mu);
  std::promise<std::size_t> books;
  asio::post(io, [&] { books.set_value(broker.acked.size()); });
  const std::size_t acked_after_first = books.get_future().get();
  const int second = run_consumer(port, processed, restarts, handle, handle_mu);
  guard.cancel();
  asio::post(io, [&] {
    broker.acceptor.close();
    io.stop();
  });
  broker_thread.join();

  std::vector<std::string> failed = broker.errors;
  if (first != 0 || second != 0)
    failed.push_back(
        std::string("exit codes ").append(std::to_string(first)).append(", ").append(std::to_string(second)));
  if (broker.acked.size() != messages)
    failed.push_back(std::string("acked ").append(std::to_string(broker.acked.size())));
  int processings = 0;
  for (std::uint64_t id = 1; id <= messages; ++id) {
    const int n = processed->times[id];
    if (n == 0) failed.push_back(std::string("never processed: ").append(std::to_string(id)));
    processings += n;
  }
  if (acked_after_first < 130 || acked_after_first == messages)
    failed.emplace_back("the first run was not stopped midway");
  if (restarts.count < 2) failed.emplace_back("the consumer was not restarted twice");
  // Every restart must have been followed by a run, or the check below
  // would pass having measured nothing. The millisecond allows for the
  // event clock's rounding, not for an early restart.
  if (restarts.observed.size() != restarts.backoff.size()) failed.emplace_back("a restart was never followed by a run");
  for (std::size_t i = 0; i < restarts.observed.size(); ++i) {
    if (restarts.observed[i] + 1ms < restarts.backoff[i]) failed.emplace_back("a restart came before its backoff");
  }
  int redelivered = 0;
  for (auto& [id, n] : broker.deliveries) redelivered += n - 1;
  for (std::size_t i = 0; i < failed.size() && i < 10; ++i) std::printf("FAILED: %s\n", failed[i].c_str());
  if (failed.size() > 10) std::printf("FAILED: ... and %zu more\n", failed.size() - 10);
  std::string backoffs;
  for (std::size_t i = 0; i < restarts.observed.size(); ++i) {
    backoffs.append(i == 0 ? "" : ", ")
        .append(std::to_string(restarts.backoff[i] / 1ms))
        .append(" ms (waited ")
        .append(std::to_string(restarts.observed[i] / 1ms))
        .append(" ms)");
  }
  std::printf(
      "self-test: %zu messages acked %s (%zu in the first run); %d processings, %d repeated after a "
      "lost ack; %d redeliveries over %d connections; restarts after backoff %s; exit %d\n",
      broker.acked.size(), broker.errors.empty() ? "exactly once" : "with errors", acked_after_first, processings,
      processings - static_cast<int>(messages), redelivered, broker.connections, backoffs.c_str(),
      failed.empty() ? 0 : 1);
  return failed.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc == 2 && std::string_view(argv[1]) == "--self-test") return self_test();
  std::fprintf(stderr, "usage: queue_consumer --self-test\n");
  return 2;
}
