// An orders service of five parts, as a new user wrote it from the docs:
// an HTTP API takes orders and hands them to a consumer, which prices them
// and is flaky (it crashes after every fifth order and is restarted); a
// refresher reloads the price list every 200 ms; a blocking writer appends
// priced orders to a ledger on a thread of its own. /livez, /readyz and
// /status, systemd's notify protocol and the signals come from the library.
//
//   orders [--port N] [--health-port N]   runs until SIGINT/SIGTERM
//   orders --self-test                    places 12 orders against itself
//                                         over HTTP, checks the ledger and
//                                         /readyz, and stops (exit 0)
#include <processmanager/health.hpp>
#include <processmanager/processmanager.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace asio = pm::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

/// An order as it travels between the services (a custom control message).
struct Order {
  int id = 0;
  int price = 0;  // set by the consumer
};

/// What the parts share: the price list, and what the self-test looks at.
struct Shop {
  std::atomic<int> price{100};
  std::atomic<int> priced{0};
  std::atomic<int> written{0};
  std::atomic<std::uint16_t> api_port{0};
  std::atomic<std::uint16_t> health_port{0};
  std::FILE* ledger = stdout;
};

/// Reads a request's line and headers into `into`; false when the client
/// went away first.
asio::awaitable<bool> read_request(tcp::socket& socket, std::string& into) {
  boost::system::error_code ec;
  co_await asio::async_read_until(socket, asio::dynamic_buffer(into), "\r\n\r\n",
                                  asio::redirect_error(asio::use_awaitable, ec));
  co_return !ec;
}

/// The HTTP API: "POST /orders/<id>" hands the order to the consumer and
/// answers 202. One connection at a time; every wait is raced against
/// control messages, so a silent client never holds up a stop, and a
/// reload does not drop a request.
std::shared_ptr<pm::Runnable> api(std::shared_ptr<Shop> shop, std::uint16_t port,
                                  std::shared_ptr<pm::ProcessControlHandler> consumer) {
  return pm::make_runnable("api", [shop, port, consumer](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    tcp::acceptor acceptor(co_await asio::this_coro::executor, {asio::ip::make_address("127.0.0.1"), port});
    shop->api_port = acceptor.local_endpoint().port();
    for (;;) {
      auto accepted = co_await ctx.tick(acceptor.async_accept(asio::deferred));
      if (accepted.is_control()) {
        if (accepted.control().is_shutdown()) co_return;
        continue;
      }
      tcp::socket socket = std::move(accepted.next());
      std::string request;
      bool complete = false;
      for (;;) {
        auto read = co_await ctx.tick(read_request(socket, request));
        if (read.is_next()) {
          complete = read.next();
          break;
        }
        if (read.control().is_shutdown()) co_return;
      }
      if (!complete) continue;  // the client went away
      int id = 0;
      const bool ok = std::sscanf(request.c_str(), "POST /orders/%d", &id) == 1;
      if (ok) consumer->control(pm::RuntimeControlMessage::custom(Order{id}));
      const std::string_view answer = ok ? "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                         : "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      boost::system::error_code ec;
      asio::write(socket, asio::buffer(answer), ec);  // a few bytes into a fresh socket's buffer
    }
  });
}

/// The consumer: prices each order and hands it to the writer. It crashes
/// after every fifth order (once the order is handed on); the manager
/// restarts it, and orders sent meanwhile wait in its inbox.
std::shared_ptr<pm::Runnable> consumer(std::shared_ptr<Shop> shop, std::shared_ptr<pm::ProcessControlHandler> writer) {
  return pm::make_runnable("consumer", [shop, writer](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    for (;;) {
      const auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
      const Order* order = msg.custom_if<Order>();
      if (order == nullptr) continue;
      writer->control(pm::RuntimeControlMessage::custom(Order{order->id, shop->price.load()}));
      if (++shop->priced % 5 == 0) throw std::runtime_error("pricing backend dropped the connection");
    }
  });
}

/// The refresher: reloads the price list every 200 ms, beating each time
/// (a stale heartbeat would fail /livez and hold back systemd's watchdog).
std::shared_ptr<pm::Runnable> refresher(std::shared_ptr<Shop> shop) {
  return pm::make_runnable("price-refresher", [shop](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    pm::Interval every(co_await asio::this_coro::executor, 200ms, pm::MissedTickBehavior::skip);
    for (;;) {
      auto op = co_await ctx.tick(every.tick(asio::deferred));
      if (op.is_control()) {
        if (op.control().is_shutdown()) co_return;
        continue;
      }
      shop->price += 1;
      ctx.heartbeat();
    }
  });
}

/// The ledger writer: a plain blocking loop on a thread of its own. On
/// shutdown it has written every order that reached it before the stop.
std::shared_ptr<pm::Runnable> writer(std::shared_ptr<Shop> shop) {
  return pm::make_blocking_runnable("ledger-writer", [shop](pm::BlockingContext& ctx) {
    for (;;) {
      auto msg = ctx.next_control(1s);
      if (!msg) {
        if (ctx.stop_requested()) return;
        continue;
      }
      if (msg->is_shutdown()) return;
      if (const Order* order = msg->custom_if<Order>()) {
        std::fprintf(shop->ledger, "ledger: order %d at %d\n", order->id, order->price);
        std::fflush(shop->ledger);
        ++shop->written;
      }
    }
  });
}

/// Sends `request_line` (and a Host header) to 127.0.0.1:port; the status
/// code of the answer.
asio::awaitable<int> http(std::uint16_t port, const std::string& request_line) {
  tcp::socket socket(co_await asio::this_coro::executor);
  co_await socket.async_connect({asio::ip::make_address("127.0.0.1"), port}, asio::use_awaitable);
  const std::string request = request_line + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  co_await asio::async_write(socket, asio::buffer(request), asio::use_awaitable);
  std::string answer;
  boost::system::error_code ec;  // the end of the answer (eof) included
  co_await asio::async_read(socket, asio::dynamic_buffer(answer), asio::redirect_error(asio::use_awaitable, ec));
  int code = 0;
  std::sscanf(answer.c_str(), "HTTP/1.1 %d", &code);
  co_return code;
}

/// --self-test: places 12 orders once the tree is ready, waits until the
/// ledger holds them, checks /readyz, and stops the tree. Throws (and so
/// fails the run, exit 1) when anything is off.
std::shared_ptr<pm::Runnable> self_test(std::shared_ptr<Shop> shop, std::weak_ptr<pm::ProcessManager> tree) {
  return pm::make_runnable("self-test", [shop, tree](pm::RuntimeContext&) -> asio::awaitable<void> {
    auto root = tree.lock();
    if (!root) co_return;
    // Everything before it in the sequential start is ready; this waits
    // for the tree as a whole (itself included).
    if (!co_await root->wait_ready(10s)) throw std::runtime_error("the tree did not become ready");
    constexpr int orders = 12;
    for (int id = 1; id <= orders; ++id) {
      const int code = co_await http(shop->api_port, "POST /orders/" + std::to_string(id));
      if (code != 202) throw std::runtime_error("order " + std::to_string(id) + " got " + std::to_string(code));
    }
    asio::steady_timer poll(co_await asio::this_coro::executor);
    for (int i = 0; shop->written < orders; ++i) {
      if (i == 2000) throw std::runtime_error("the ledger holds " + std::to_string(shop->written) + " orders");
      poll.expires_after(5ms);
      co_await poll.async_wait(asio::use_awaitable);
    }
    if (const int code = co_await http(shop->health_port, "GET /readyz"); code != 200) {
      throw std::runtime_error("/readyz answered " + std::to_string(code) + " after the consumer's restarts");
    }
    const auto status = root->status();
    const pm::ChildStatus* pricing = status.find("consumer");
    if (pricing == nullptr || pricing->restarts != 2) throw std::runtime_error("the consumer was not restarted twice");
    std::printf("self-test: %d orders written; the consumer was restarted %zu times; ready\n", shop->written.load(),
                pricing->restarts);
    root->process_handle()->request_shutdown();
  });
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::uint16_t port = 8081;
  std::uint16_t health_port = 8080;
  bool test = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--self-test") {
      test = true;
      port = health_port = 0;  // free ports
    } else if ((arg == "--port" || arg == "--health-port") && i + 1 < argc) {
      (arg == "--port" ? port : health_port) = static_cast<std::uint16_t>(std::strtoul(argv[++i], nullptr, 10));
    } else {
      std::fprintf(stderr, "usage: orders [--port N] [--health-port N] | --self-test\n");
      return 2;
    }
  }
  auto shop = std::make_shared<Shop>();

  const auto announce = [shop](std::uint16_t p) {
    shop->health_port = p;
    std::printf("probes on http://127.0.0.1:%u/readyz\n", static_cast<unsigned>(p));
  };

  // The wiring: what runs, in which order, restarted how, watched how.
  auto ledger = writer(shop);
  auto pricing = consumer(shop, ledger->process_handle());
  auto root = pm::ProcessManagerBuilder()
                  .name("orders")
                  .start_order(pm::StartOrder::sequential)  // started in this order, stopped in reverse
                  .pre_insert_with(pm::health_server({.port = health_port, .on_listening = announce}))
                  .pre_insert(ledger)
                  .pre_insert(pricing, {.restart = {{.max_restarts = 10, .window = 10s, .backoff = {.initial = 10ms}}}})
                  .pre_insert(refresher(shop), {.heartbeat_timeout = 2s})
                  .pre_insert(api(shop, port, pricing->process_handle()))
                  .build();
  if (test) root->insert(self_test(shop, root));
  const int code = pm::run(root, {.threads = 2});
  if (test) std::printf("self-test: exit %d\n", code);
  return code;
}
