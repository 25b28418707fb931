// Recipe: an HTTP server (Boost.Beast) that drains gracefully. On shutdown it
// stops accepting, closes idle keep-alive connections at once, lets the
// requests in flight finish (answered with "Connection: close") within a
// drain grace, and cancels what still runs at that deadline, by name.
//
//   http_drain [--port N]   serves /fast, /slow (200 ms) and /hang until SIGINT/SIGTERM
//   http_drain --self-test  drives it with concurrent keep-alive clients (docs/recipes.md)
#include <processmanager/processmanager.hpp>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace asio = pm::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// What the server tells the outside (a probe, the self-test): readable from
/// any thread, and waitable, so that a test synchronises on events.
struct Gauges {
  std::mutex mu;
  std::condition_variable cv;
  std::uint16_t port = 0;
  int slow = 0;                     // /slow requests in flight
  int ready = 0;                    // (test clients) clients in position
  std::vector<std::string> hung{};  // connections inside /hang
  Clock::time_point drain_began{}, drain_ended{};
  std::optional<pm::DrainReport> report{};

  void update(const std::function<void(Gauges&)>& change) {
    {
      std::lock_guard lock(mu);
      change(*this);
    }
    cv.notify_all();
  }
  bool wait(const std::function<bool(const Gauges&)>& done, Clock::duration guard) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, guard, [&] { return done(*this); });
  }
};

/// What the sessions share with the accept loop. All of it lives on the
/// service's strand (the sessions run there too), so it needs no lock.
struct Shared {
  std::shared_ptr<Gauges> gauges;
  std::chrono::milliseconds slow_for;
  bool stopping = false;
  std::set<tcp::socket*> idle{};  // sessions waiting for their next request
};

/// Half-closes, then reads what the client may still send until it closes
/// too (bounded): closing a socket with unread bytes would reset it.
asio::awaitable<void> close_gracefully(beast::tcp_stream& stream) {
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  stream.expires_after(1s);
  char scratch[512];
  while (!ec) co_await stream.async_read_some(asio::buffer(scratch), asio::redirect_error(asio::use_awaitable, ec));
  stream.close();
}

/// The application: /slow takes a while, /hang never ends by itself.
asio::awaitable<std::string> handle(const http::request<http::string_body>& req, Shared& sh, const std::string& conn) {
  if (req.target() == "/slow") {
    sh.gauges->update([](Gauges& g) { ++g.slow; });
    asio::steady_timer work(co_await asio::this_coro::executor, sh.slow_for);
    co_await work.async_wait(asio::use_awaitable);
    sh.gauges->update([](Gauges& g) { --g.slow; });
    co_return "slow\n";
  }
  if (req.target() == "/hang") {
    sh.gauges->update([&conn](Gauges& g) { g.hung.push_back(conn); });
    asio::steady_timer never(co_await asio::this_coro::executor, Clock::time_point::max());
    co_await never.async_wait(asio::use_awaitable);  // only the drain deadline ends this
  }
  co_return "fast\n";
}

/// One keep-alive connection. Between requests it is idle: a stop closes it
/// at once. Once a byte of a request has arrived it is busy: the request is
/// answered, with "Connection: close" when a stop came meanwhile.
asio::awaitable<void> session(std::shared_ptr<Shared> sh, tcp::socket socket, std::string name) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    if (buffer.size() == 0) {  // nothing of a next request yet (none pipelined)
      if (sh->stopping) break;
      sh->idle.insert(&stream.socket());
      beast::error_code ec;
      co_await stream.socket().async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
      sh->idle.erase(&stream.socket());
      // The stop cancelled the wait; a request whose bytes are already
      // here is still served, since its client could not know.
      if (ec == asio::error::operation_aborted && stream.socket().available(ec) == 0) break;
    }
    http::request<http::string_body> req;
    beast::error_code ec;
    stream.expires_after(30s);  // a client that stalls mid-request
    co_await http::async_read(stream, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;  // the client closed (or broke) the connection
    stream.expires_never();
    std::string body = co_await handle(req, *sh, name);
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.set(http::field::content_type, "text/plain");
    res.keep_alive(req.keep_alive() && !sh->stopping);  // decided now, not when the request came
    res.body() = std::move(body);
    res.prepare_payload();
    co_await http::async_write(stream, res, asio::use_awaitable);
    if (!res.keep_alive()) break;
  }
  co_await close_gracefully(stream);
}

/// The service: accepts until shutdown, then drains its connections.
class HttpServer : public pm::Runnable {
 public:
  HttpServer(std::uint16_t port, std::chrono::milliseconds grace, std::chrono::milliseconds slow_for,
             std::shared_ptr<Gauges> gauges)
      : port_(port), grace_(grace), slow_for_(slow_for), gauges_(std::move(gauges)) {}
  std::string process_name() const override { return "http"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

  asio::awaitable<void> process_start() override {
    auto ticker = co_await guard_.runtime_ticker();
    auto shared = std::make_shared<Shared>(Shared{.gauges = gauges_, .slow_for = slow_for_});  // per run
    const auto ex = co_await asio::this_coro::executor;  // not inside the next line: GCC PR 100611
    tcp::acceptor acceptor(ex, {asio::ip::make_address("127.0.0.1"), port_});
    shared->gauges->update([&](Gauges& g) { g.port = acceptor.local_endpoint().port(); });
    pm::TaskScope connections(ex, {.name = "http/connections"});
    for (std::uint64_t accepted = 0;;) {
      auto op = co_await ticker.tick(acceptor.async_accept(asio::as_tuple(asio::deferred)));
      if (op.is_control()) {
        if (op.control().is_shutdown()) break;
        continue;
      }
      auto [ec, socket] = std::move(op.next());
      if (ec) continue;
      std::string name = std::string("conn-").append(std::to_string(++accepted));
      connections.spawn(session(shared, std::move(socket), name), name);
    }
    // The drain: no new connections, idle ones closed now, busy ones given
    // the grace to answer; the rest are cancelled at the deadline.
    acceptor.close();
    shared->stopping = true;
    for (tcp::socket* idle : shared->idle) idle->cancel();
    const auto began = Clock::now();
    pm::DrainReport report = co_await connections.drain(grace_);
    const auto ended = Clock::now();
    for (const std::string& name : report.cancelled) {
      pm::log(pm::LogLevel::warn, "http",
              std::string("drain: ")
                  .append(name)
                  .append(" cut off at the ")
                  .append(std::to_string(grace_.count()))
                  .append(" ms deadline"));
    }
    shared->gauges->update([&](Gauges& g) {
      g.drain_began = began;
      g.drain_ended = ended;
      g.report = report;
    });
  }

 private:
  pm::RuntimeGuard guard_{"http"};
  std::uint16_t port_;
  std::chrono::milliseconds grace_;
  std::chrono::milliseconds slow_for_;
  std::shared_ptr<Gauges> gauges_;
};

// ---------------------------------------------------------------- self-test

/// What one test client saw.
struct Seen {
  std::string path;
  unsigned status = 0;  // 0: no response
  bool keep_alive = true;
  std::string body;
  beast::error_code response;  // reading the response
  beast::error_code after;     // reading past it: eof is a clean close
  Clock::time_point closed{};  // when the connection was seen closed
};

/// Sends `path` on `stream` and reads the answer into `seen`.
asio::awaitable<void> exchange(beast::tcp_stream& stream, const std::string& path, Seen& seen) {
  http::request<http::empty_body> req{http::verb::get, path, 11};
  req.set(http::field::host, "127.0.0.1");
  co_await http::async_write(stream, req, asio::use_awaitable);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  co_await http::async_read(stream, buffer, res, asio::redirect_error(asio::use_awaitable, seen.response));
  seen.path = path;
  seen.status = seen.response ? 0 : res.result_int();
  seen.keep_alive = res.keep_alive();
  seen.body = res.body();
}

/// Waits for what follows the last response: a clean close is eof.
asio::awaitable<void> read_close(beast::tcp_stream& stream, Seen& seen) {
  char byte;
  co_await stream.async_read_some(asio::buffer(&byte, 1), asio::redirect_error(asio::use_awaitable, seen.after));
  seen.closed = Clock::now();
}

/// A keep-alive client: two quick requests, then `path` (or, for "", it
/// stays idle), then it waits for the server to close. `ready` counts the
/// clients that are in position.
asio::awaitable<void> client(std::uint16_t port, std::string path, Seen& seen, Gauges& ready) {
  beast::tcp_stream stream(co_await asio::this_coro::executor);
  stream.expires_after(20s);  // a guard only
  co_await stream.async_connect(tcp::endpoint{asio::ip::make_address("127.0.0.1"), port}, asio::use_awaitable);
  for (int i = 0; i < 2; ++i) {
    co_await exchange(stream, "/fast", seen);
    if (seen.status != 200 || !seen.keep_alive) co_return;
  }
  ready.update([](Gauges& g) { ++g.ready; });
  if (!path.empty()) co_await exchange(stream, path, seen);
  if (seen.response) {  // the connection closed instead of answering
    seen.after = seen.response;
    seen.closed = Clock::now();
    co_return;
  }
  co_await read_close(stream, seen);
}

struct Outcome {
  int exit_code = -1;
  std::vector<Seen> busy, idle;
  pm::DrainReport report;
  std::vector<std::string> hung;
  Clock::time_point stop;
  Clock::duration drain{};
};

/// Runs a server with `grace` under pm::run on two threads, clients for
/// `paths` plus `idle` idle ones on a thread of their own, and stops it
/// once every busy client's request is in flight on the server.
Outcome scenario(std::chrono::milliseconds grace, const std::vector<std::string>& paths, int idle,
                 std::vector<std::string>& failed) {
  auto gauges = std::make_shared<Gauges>();
  auto root = pm::ProcessManagerBuilder()
                  .name("http-drain")
                  .pre_insert(std::make_shared<HttpServer>(0, grace, 200ms, gauges))
                  .build();
  Outcome out;
  std::thread server([&] { out.exit_code = pm::run(root, {.threads = 2, .handle_signals = false}); });
  if (!gauges->wait([](const Gauges& g) { return g.port != 0; }, 10s)) failed.emplace_back("the server did not listen");

  asio::io_context io;
  Gauges ready;
  out.busy.resize(paths.size());
  out.idle.resize(static_cast<std::size_t>(idle));
  for (std::size_t i = 0; i < paths.size(); ++i)
    asio::co_spawn(io, client(gauges->port, paths[i], out.busy[i], ready), asio::detached);
  for (Seen& seen : out.idle) asio::co_spawn(io, client(gauges->port, "", seen, ready), asio::detached);
  std::thread clients([&io] { io.run(); });

  // The stop comes once every busy request is in flight on the server and
  // every idle client is idle: there is then no request on the wire.
  const auto slow = static_cast<int>(std::count(paths.begin(), paths.end(), "/slow"));
  const auto hang = static_cast<std::size_t>(std::count(paths.begin(), paths.end(), "/hang"));
  const bool in_flight =
      ready.wait([&](const Gauges& g) { return g.ready == static_cast<int>(paths.size()) + idle; }, 10s) &&
      gauges->wait([&](const Gauges& g) { return g.slow == slow && g.hung.size() == hang; }, 10s);
  if (!in_flight) failed.emplace_back("the requests never were all in flight at once");
  out.stop = Clock::now();
  root->process_handle()->request_shutdown();
  server.join();
  clients.join();
  std::lock_guard lock(gauges->mu);
  if (gauges->report) out.report = *gauges->report;
  out.hung = gauges->hung;
  out.drain = gauges->drain_ended - gauges->drain_began;
  return out;
}

long long ms(Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

/// The checks every scenario shares: exit 0, and each idle client saw a
/// clean close (eof, not a reset) promptly after the stop.
void check_common(const char* name, const Outcome& out, std::vector<std::string>& failed) {
  const auto fail = [&](const std::string& what) { failed.push_back(std::string(name).append(": ").append(what)); };
  if (out.exit_code != 0) fail(std::string("pm::run returned ").append(std::to_string(out.exit_code)));
  for (const Seen& s : out.idle) {
    if (s.after != asio::error::eof) fail(std::string("an idle client saw ").append(s.after.message()));
    if (s.closed < out.stop) fail("an idle client was closed before the stop");
    if (s.closed - out.stop > 1s)
      fail(std::string("an idle client was closed after ")
               .append(std::to_string(ms(s.closed - out.stop)))
               .append(" ms"));
  }
}

int self_test() {
  std::vector<std::string> failed;

  // 1: eight /slow requests in flight and two idle connections at the stop.
  // Every request gets its whole 200 with "Connection: close", then a clean
  // close; the idle connections are closed at once; nothing is cancelled.
  const std::chrono::milliseconds grace1 = 5s;
  Outcome one = scenario(grace1, std::vector<std::string>(8, "/slow"), 2, failed);
  check_common("scenario 1", one, failed);
  int answered = 0;
  for (const Seen& s : one.busy) {
    if (s.status == 200 && !s.keep_alive && s.body == "slow\n" && s.after == asio::error::eof) ++answered;
    if (s.status != 200 || s.keep_alive || s.body != "slow\n" || s.after != asio::error::eof) {
      failed.push_back(std::string("scenario 1: a /slow client saw status ")
                           .append(std::to_string(s.status))
                           .append(s.keep_alive ? ", keep-alive" : ", close")
                           .append(", response ")
                           .append(s.response.message())
                           .append(", then ")
                           .append(s.after.message()));
    }
  }
  if (!one.report.clean() || one.report.finished != 10) failed.emplace_back("scenario 1: the drain was not clean");
  if (one.drain > grace1 / 2)
    failed.push_back(std::string("scenario 1: the drain took ").append(std::to_string(ms(one.drain))).append(" ms"));

  // 2: one request hangs past a 1 s grace, beside a /slow one and an idle
  // connection. /slow is answered; /hang is cancelled at the deadline, named
  // in the report, and its client sees the connection closed unanswered.
  const std::chrono::milliseconds grace2 = 1s;
  Outcome two = scenario(grace2, {"/slow", "/hang"}, 1, failed);
  check_common("scenario 2", two, failed);
  const Seen& slow = two.busy[0];
  const Seen& hung = two.busy[1];
  if (slow.status != 200 || slow.keep_alive) failed.emplace_back("scenario 2: /slow was not answered with close");
  if (hung.status != 0 || hung.response != http::error::end_of_stream) {
    failed.push_back(std::string("scenario 2: the /hang client saw ").append(hung.response.message()));
  }
  if (two.report.cancelled != two.hung || two.hung.size() != 1 || !two.report.abandoned.empty()) {
    failed.emplace_back("scenario 2: the report does not name the hung connection alone");
  }
  if (two.drain < grace2 || two.drain > grace2 + 900ms) {
    failed.push_back(std::string("scenario 2: the drain took ").append(std::to_string(ms(two.drain))).append(" ms"));
  }

  for (const std::string& f : failed) std::printf("FAILED: %s\n", f.c_str());
  const long long idle1 = one.idle.empty() ? -1 : ms(one.idle[0].closed - one.stop);
  std::printf(
      "self-test: scenario 1: %d/8 in-flight requests answered, idle closed in %lld ms, drain %lld ms, "
      "%zu cancelled; scenario 2: cancelled %s at %lld ms; exit %d\n",
      answered, idle1, ms(one.drain), one.report.cancelled.size(),
      two.report.cancelled.empty() ? "-" : two.report.cancelled[0].c_str(), ms(two.drain), failed.empty() ? 0 : 1);
  return failed.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::uint16_t port = 8080;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--self-test") return self_test();
    if (arg == "--port" && i + 1 < argc) {
      port = static_cast<std::uint16_t>(std::strtoul(argv[++i], nullptr, 10));
    } else {
      std::fprintf(stderr, "usage: http_drain [--port N] | --self-test\n");
      return 2;
    }
  }
  auto root = pm::ProcessManagerBuilder()
                  .name("http-drain")
                  .pre_insert(std::make_shared<HttpServer>(port, 10s, 200ms, std::make_shared<Gauges>()))
                  .build();
  std::printf("serving http://127.0.0.1:%u/slow; Ctrl-C drains and stops\n", static_cast<unsigned>(port));
  return pm::run(root, {.threads = 2});
}
