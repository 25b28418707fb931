// HealthServer on big trees and against slow clients: what a probe costs
// the rest of the tree (/livez and /readyz read health(), /status is built
// in slices and shared), and the short header timeout.
#include <processmanager/health.hpp>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "http_client.hpp"
#include "lifecycle_support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ChildOptions;
using pm::HealthOptions;
using pm::HealthServer;
using pm::ProcessManagerBuilder;
using pm::test::body_of;
using pm::test::Client;
using pm::test::Counted;
using pm::test::get;
using pm::test::Running;
using pm::test::status_of;

/// A health server in `manager`; the port once it listens (0 if never).
struct Probed {
  std::promise<std::uint16_t> listening;
  std::shared_ptr<HealthServer> server;

  Probed(const std::shared_ptr<pm::ProcessManager>& manager, HealthOptions options = {}) {
    options.on_listening = [this](std::uint16_t port) { listening.set_value(port); };
    server = std::make_shared<HealthServer>(manager, std::move(options));
    manager->insert(server);
  }
  std::uint16_t port() {
    auto f = listening.get_future();
    return f.wait_for(pm::test::hang_guard) == std::future_status::ready ? f.get() : 0;
  }
};

TEST(health_cost, livez_and_readyz_read_no_heartbeat_while_none_can_be_stale) {
  std::atomic<int> reads{0};
  auto m = ProcessManagerBuilder().name("app").build();
  Probed probes(m);
  constexpr int n = 100;
  for (int i = 0; i < n; ++i) m->insert(std::make_shared<Counted>(reads), ChildOptions{.heartbeat_timeout = 1h});
  Running run(m);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(status_of(get(port, "/livez")), 200);
    EXPECT_EQ(status_of(get(port, "/readyz")), 200);
  }
  // A snapshot would have read every heartbeat at each /livez (2,000 reads).
  EXPECT_EQ(reads.load(), 0);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

/// While `marking`, runs again as soon as anything else queued on the
/// executor has run, and each time adds a child "tick-K" (K = 0, 1, ...) to
/// `early` and to `late`: a /status document that was built while it ran
/// shows more of them in the manager it read last.
class Marker final : public pm::Runnable {
 public:
  // Weak: the marker is a child of `late`, and must not keep it alive.
  Marker(std::weak_ptr<pm::ProcessManager> early, std::weak_ptr<pm::ProcessManager> late)
      : early_(std::move(early)), late_(std::move(late)) {}

  asio::awaitable<void> process_start() override {
    const auto ex = co_await asio::this_coro::executor;
    asio::steady_timer timer(ex);
    auto ticker = co_await guard_.runtime_ticker();
    for (;;) {
      bool shutdown = false;
      if (marking.load()) {
        // To the back of the queue: whatever was posted before runs first.
        const auto op = co_await ticker.tick(asio::post(ex, asio::deferred));
        shutdown = op.is_control() && op.control().is_shutdown();
      } else {
        timer.expires_after(1ms);
        const auto op = co_await ticker.tick(timer.async_wait(asio::deferred));
        shutdown = op.is_control() && op.control().is_shutdown();
      }
      if (shutdown) co_return;
      if (!marking.load()) continue;
      const std::string name = std::string("tick-").append(std::to_string(ticks_++));
      const auto early = early_.lock();
      const auto late = late_.lock();
      if (!early || !late) co_return;
      early->add(std::make_shared<pm::test::IdleService>(name));
      late->add(std::make_shared<pm::test::IdleService>(name));
    }
  }
  std::string process_name() const override { return "marker"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

  std::atomic<bool> marking{false};

 private:
  std::weak_ptr<pm::ProcessManager> early_;
  std::weak_ptr<pm::ProcessManager> late_;
  pm::RuntimeGuard guard_{"marker"};
  long ticks_ = 0;  // only the marker's run touches it
};

/// The highest K of the children named "tick-K" in `children`; -1 if none.
long last_tick(const std::vector<pm::ChildStatus>& children) {
  long last = -1;
  for (const auto& c : children) {
    const auto at = c.path.rfind("/tick-");
    if (at != std::string::npos) last = std::max(last, std::stol(c.path.substr(at + 6)));
  }
  return last;
}

TEST(health_cost, status_of_a_big_tree_is_built_in_slices_that_let_a_sibling_run) {
  // One io thread, as pm::run's default: the server, the marker and 40,000
  // services share it. The document is read depth first: `early` (the
  // root's first child) at its start, the root's last children at its end.
  // Built at once, in one handler, nothing else can run in between, so
  // both show the same last tick; built in slices that give the executor
  // back, the marker runs between them and the end shows later ticks.
  constexpr std::size_t n = 40000;
  auto m = ProcessManagerBuilder().name("big").build();
  auto early = ProcessManagerBuilder().name("early").build();
  early->insert(std::make_shared<pm::test::IdleService>());  // a manager without children ends at once
  m->insert(early);
  Probed probes(m);
  auto marker = std::make_shared<Marker>(early, m);
  m->insert(marker);
  for (std::size_t i = 0; i < n; ++i) m->insert(std::make_shared<pm::test::IdleService>());
  Running run(m, 1);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());

  marker->marking = true;
  const std::string response = get(port, "/status");
  marker->marking = false;
  ASSERT_EQ(status_of(response), 200) << response.substr(0, 200);
  const auto status = pm::status_from_json(boost::json::parse(body_of(response)));
  ASSERT_EQ(status.children.at(0).path, "big/early");
  const long at_start = last_tick(status.children.at(0).children);
  const long at_end = last_tick(status.children);
  EXPECT_GT(at_end, at_start) << "no other handler ran while the document was built";
  EXPECT_GE(status.children.size(), n + 3);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_cost, concurrent_status_requests_get_the_document_to_json_gives_and_head_its_length) {
  // Several chunks of children, a nested manager and a supervised one: the
  // document is streamed level by level, and must be the very text of
  // serialize(to_json(status())) while the tree stands still.
  auto m = ProcessManagerBuilder().name("app").build();
  Probed probes(m);
  auto inner = ProcessManagerBuilder().name("inner").build();
  for (int i = 0; i < 300; ++i) inner->insert(std::make_shared<pm::test::IdleService>("in"));
  auto wrapped = ProcessManagerBuilder().name("wrapped").build();
  wrapped->insert(std::make_shared<pm::test::IdleService>("deep"));
  m->insert(inner);
  m->insert(std::make_shared<pm::RestartSupervisor>(wrapped));
  for (int i = 0; i < 700; ++i) m->insert(std::make_shared<pm::test::IdleService>("top"));
  Running run(m);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  const std::string expected = boost::json::serialize(pm::to_json(m->status()));

  std::vector<std::string> bodies(8);
  std::vector<std::thread> clients;
  for (auto& body : bodies) clients.emplace_back([&body, port] { body = body_of(get(port, "/status")); });
  const std::string head = get(port, "/status", "HEAD");
  for (auto& c : clients) c.join();
  for (const auto& body : bodies) EXPECT_TRUE(body == expected) << body.size() << " bytes, not " << expected.size();
  EXPECT_EQ(status_of(head), 200) << head;
  EXPECT_NE(head.find(std::string("Content-Length: ").append(std::to_string(expected.size()))), std::string::npos)
      << head;
  EXPECT_EQ(body_of(head), "");
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_cost, clients_waiting_for_status_at_the_connection_limit_never_starve_a_probe) {
  // Every connection the limit allows asks for /status of a big tree and
  // waits for its document; a probe that comes meanwhile evicts the oldest
  // of them (after any idle one) rather than being refused with 503.
  constexpr std::size_t n = 40000;
  auto m = ProcessManagerBuilder().name("big").build();
  Probed probes(
      m, HealthOptions{
             .request_timeout = pm::test::hang_guard, .header_timeout = pm::test::hang_guard, .max_connections = 4});
  for (std::size_t i = 0; i < n; ++i) m->insert(std::make_shared<pm::test::IdleService>());
  Running run(m, 1);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  std::vector<std::unique_ptr<Client>> askers;
  for (int i = 0; i < 4; ++i) {
    askers.push_back(std::make_unique<Client>(port));
    askers.back()->write("GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  }
  const auto r = get(port, "/livez");
  EXPECT_EQ(status_of(r), 200) << r;
  std::size_t answered = 0;
  std::size_t evicted = 0;
  for (auto& a : askers) {
    const auto response = a->read_all();
    if (response.empty()) {
      ++evicted;
    } else if (status_of(response) == 200) {
      ++answered;
    }
  }
  EXPECT_GE(evicted, 1u);
  EXPECT_EQ(answered + evicted, askers.size());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_cost, the_header_timeout_cuts_off_slow_headers_and_idle_connections_but_not_a_slow_body) {
  auto m = ProcessManagerBuilder().name("app").build();
  EXPECT_THROW(HealthServer(m, HealthOptions{.header_timeout = 0s}), std::invalid_argument);
  // The request timeout is the hang guard: only the header timeout can end
  // these connections before it.
  Probed probes(m, HealthOptions{.request_timeout = pm::test::hang_guard, .header_timeout = 200ms});
  Running run(m);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  {
    Client slowloris(port);  // half a header, then nothing
    slowloris.write("GET /livez HTTP/1.1\r\nHo");
    EXPECT_EQ(slowloris.read_all(), "");  // closed unanswered
  }
  {
    Client idle(port);  // one request kept alive, then idle
    idle.write("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(status_of(idle.read_until("alive\n")), 200);
    EXPECT_EQ(idle.read_all(), "");  // closed after the header timeout
  }
  {
    // The headers at once, the body after the header timeout: the body has
    // the rest of the request timeout. Time is the subject: the sleep only
    // bounds the wait from below and synchronises with no other thread.
    Client slow_body(port);
    slow_body.write("GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n");
    std::this_thread::sleep_for(300ms);
    slow_body.write("hello");
    const auto r = slow_body.read_all();
    EXPECT_EQ(status_of(r), 200) << r;
  }
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

}  // namespace
