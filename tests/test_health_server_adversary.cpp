// Adversarial tests of the HealthServer: server options and client
// behaviours at the edges, and /status built while the tree changes.
#include <processmanager/health.hpp>
#include <processmanager/processmanager.hpp>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <future>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "health_support.hpp"
#include "http_client.hpp"
#include "lifecycle_support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ChildOptions;
using pm::ChildState;
using pm::ChildStatus;
using pm::HealthOptions;
using pm::HealthServer;
using pm::HealthSummary;
using pm::ProcessManagerBuilder;
using pm::RestartOptions;
using pm::Strategy;
using pm::test::Beating;
using pm::test::Behaviour;
using pm::test::body_of;
using pm::test::Client;
using pm::test::get;
using pm::test::Journal;
using pm::test::Probe;
using pm::test::Running;
using pm::test::send;
using pm::test::status_of;
using namespace pm::test::health;

// With one connection allowed and it being written a document too big for
// the socket buffers (its client reads nothing more), a probe is answered
// 503: every connection is busy being written its answer.
TEST(health_adversary, a_probe_gets_503_only_while_every_connection_is_being_written) {
  constexpr std::size_t n = 40000;
  auto m = ProcessManagerBuilder().name("big").build();
  Probed probes(
      m, HealthOptions{
             .request_timeout = pm::test::hang_guard, .header_timeout = pm::test::hang_guard, .max_connections = 1});
  for (std::size_t i = 0; i < n; ++i) m->insert(std::make_shared<pm::test::IdleService>());
  Running run(m, 1);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  {
    Client busy(port);
    busy.write("GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_EQ(status_of(busy.read_until("\r\n\r\n")), 200);  // being written now, and never read further
    const auto r = get(port, "/livez");
    EXPECT_EQ(status_of(r), 503) << r;
    EXPECT_NE(r.find("too many connections"), std::string::npos) << r;
  }
  // The busy one has gone (once the server's write fails, a moment later).
  EXPECT_TRUE(wait_until([&] { return status_of(get(port, "/livez")) == 200; }));
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

// A server out of connections answers 503 before it reads the request
// (docs/builtin.md, max_connections): a HEAD gets the short body too.
TEST(health_adversary, a_probe_refused_for_want_of_connections_is_answered_before_its_request_is_read) {
  constexpr std::size_t n = 40000;
  auto m = ProcessManagerBuilder().name("big").build();
  Probed probes(
      m, HealthOptions{
             .request_timeout = pm::test::hang_guard, .header_timeout = pm::test::hang_guard, .max_connections = 1});
  for (std::size_t i = 0; i < n; ++i) m->insert(std::make_shared<pm::test::IdleService>());
  Running run(m, 1);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  {
    Client busy(port);
    busy.write("GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_EQ(status_of(busy.read_until("\r\n\r\n")), 200);
    const auto r = get(port, "/livez", "HEAD");
    ASSERT_EQ(status_of(r), 503) << r;
    EXPECT_EQ(body_of(r), "too many connections\n") << r;
  }
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

// A randomized walk: services added to managers at several depths (through
// ----------------------------------------------------------- HealthServer

/// Reads one response from `c`: the head, then Content-Length bytes of
/// body unless `head_request`.
std::pair<std::string, std::string> read_response(const Client& c, bool head_request) {
  std::string head = c.read_until("\r\n\r\n");
  std::size_t length = 0;
  const auto at = head.find("Content-Length: ");
  if (at != std::string::npos) length = std::stoul(head.substr(at + 16));
  std::string body;
  if (!head_request) {
    char ch = 0;
    while (body.size() < length && ::recv(c.fd(), &ch, 1, 0) == 1) body.push_back(ch);
  }
  return {head, body};
}

TEST(health_adversary, pipelined_requests_with_head_status_are_answered_in_order) {
  auto m = ProcessManagerBuilder().name("app").build();
  for (int i = 0; i < 600; ++i)
    m->insert(std::make_shared<pm::test::IdleService>(std::string("s").append(std::to_string(i))));
  Probed probes(m);
  Running run(m);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  const std::string expected = boost::json::serialize(pm::to_json(m->status()));
  Client c(port);
  c.write(
      "GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
      "HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
      "HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /status?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  auto [h1, b1] = read_response(c, false);
  auto [h2, b2] = read_response(c, true);
  auto [h3, b3] = read_response(c, false);
  auto [h4, b4] = read_response(c, true);
  auto [h5, b5] = read_response(c, false);
  EXPECT_EQ(status_of(h1), 200) << h1;
  EXPECT_EQ(b1, expected);
  EXPECT_EQ(status_of(h2), 200) << h2;
  EXPECT_NE(h2.find(std::string("Content-Length: ").append(std::to_string(expected.size()))), std::string::npos) << h2;
  EXPECT_EQ(status_of(h3), 200) << h3;
  EXPECT_EQ(b3, "alive\n");
  EXPECT_EQ(status_of(h4), 200) << h4;
  EXPECT_NE(h4.find("Content-Length: 6"), std::string::npos) << h4;
  EXPECT_EQ(status_of(h5), 200) << h5;
  EXPECT_EQ(b5, expected);
  EXPECT_EQ(c.read_all(), "") << "nothing after the last answer, then closed";
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_adversary, header_and_request_timeouts_of_max_serve_keep_alive_requests) {
  auto m = ProcessManagerBuilder().name("app").build();
  Probed probes(m, HealthOptions{.request_timeout = std::chrono::nanoseconds::max(),
                                 .header_timeout = std::chrono::nanoseconds::max()});
  Running run(m);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  Client c(port);
  for (int i = 0; i < 3; ++i) {
    c.write("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
    auto [head, body] = read_response(c, false);
    EXPECT_EQ(status_of(head), 200) << head;
    EXPECT_EQ(body, "alive\n");
    c.write("GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    auto [shead, sbody] = read_response(c, false);
    EXPECT_EQ(status_of(shead), 200) << shead;
    EXPECT_NO_THROW((void)pm::status_from_json(boost::json::parse(sbody)));
  }
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_adversary, zero_limits_are_refused_and_one_connection_is_enough_for_a_probe) {
  auto m = ProcessManagerBuilder().name("app").build();
  EXPECT_THROW(HealthServer(m, HealthOptions{.max_connections = 0}), std::invalid_argument);
  EXPECT_THROW(HealthServer(m, HealthOptions{.header_timeout = 0ns}), std::invalid_argument);
  Probed probes(
      m, HealthOptions{
             .request_timeout = pm::test::hang_guard, .header_timeout = pm::test::hang_guard, .max_connections = 1});
  Running run(m);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  for (int i = 0; i < 3; ++i) {
    Client idle(port);     // holds the only place, sends nothing
    Client partial(port);  // evicts it, then holds the place with half a request
    partial.write("GET /livez HTTP/1.1\r\nHo");
    const auto r = get(port, "/livez");  // evicts the partial one
    EXPECT_EQ(status_of(r), 200) << r;
    EXPECT_EQ(idle.read_all(), "");
    EXPECT_EQ(partial.read_all(), "");
  }
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

/// While it has a budget, runs again as soon as anything else queued on the
/// executor has run, and changes the tree each time: adds services to the
/// nested managers, adds new nested managers to the root, and ends nested
/// managers (shutdown) now and then.
class Churner final : public pm::Runnable {
 public:
  // Weak: the churner is a child of `root`, and must not keep it alive.
  explicit Churner(std::weak_ptr<pm::ProcessManager> root) : root_(std::move(root)) {}
  asio::awaitable<void> process_start() override {
    const auto ex = co_await asio::this_coro::executor;
    asio::steady_timer timer(ex);
    auto ticker = co_await guard_.runtime_ticker();
    for (;;) {
      bool shutdown = false;
      if (budget.load() > 0) {
        const auto op = co_await ticker.tick(asio::post(ex, asio::deferred));
        shutdown = op.is_control() && op.control().is_shutdown();
      } else {
        timer.expires_after(1ms);
        const auto op = co_await ticker.tick(timer.async_wait(asio::deferred));
        shutdown = op.is_control() && op.control().is_shutdown();
      }
      if (shutdown) co_return;
      if (budget.fetch_sub(1) <= 0) {
        budget.store(0);
        continue;
      }
      const long k = ticks_++;
      if (k % 7 == 0 || nested_.empty()) {
        auto nm = ProcessManagerBuilder().name(std::string("n").append(std::to_string(k))).build();
        for (int i = 0; i < 10; ++i) nm->insert(std::make_shared<pm::test::IdleService>("x"));
        const auto root = root_.lock();
        if (!root) co_return;
        root->add(nm);
        nested_.push_back(nm);
      } else if (k % 5 == 0) {
        nested_.front()->process_handle()->request_shutdown();  // ends mid-document, perhaps
        nested_.erase(nested_.begin());
      } else {
        try {
          nested_.back()->add(std::make_shared<pm::test::IdleService>(std::string("t").append(std::to_string(k))));
        } catch (const std::logic_error&) {
        }
      }
    }
  }
  std::string process_name() const override { return "churner"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }
  std::atomic<int> budget{0};  // changes still to make

 private:
  std::weak_ptr<pm::ProcessManager> root_;
  std::vector<std::shared_ptr<pm::ProcessManager>> nested_;
  pm::RuntimeGuard guard_{"churner"};
  long ticks_ = 0;
};

TEST(health_adversary, status_documents_built_while_the_tree_changes_are_valid) {
  auto m = ProcessManagerBuilder().name("app").build();
  Probed probes(m);
  auto churner = std::make_shared<Churner>(m);
  m->insert(churner);
  for (int i = 0; i < 3000; ++i) m->insert(std::make_shared<pm::test::IdleService>("s"));
  Running run(m, 1);
  const auto port = probes.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  for (int i = 0; i < 10; ++i) {
    churner->budget = 300;
    std::vector<std::string> responses(3);
    std::vector<std::thread> clients;
    for (auto& r : responses) clients.emplace_back([&r, port] { r = get(port, "/status"); });
    for (auto& t : clients) t.join();
    for (const auto& r : responses) {
      ASSERT_EQ(status_of(r), 200) << r.substr(0, 200);
      boost::system::error_code ec;
      const auto v = boost::json::parse(body_of(r), ec);
      ASSERT_FALSE(ec) << "invalid JSON: " << ec.message();
      EXPECT_NO_THROW((void)pm::status_from_json(v));
    }
  }
  churner->budget = 0;
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_adversary, stopping_while_status_is_built_or_waited_for_neither_hangs_nor_crashes) {
  for (int round = 0; round < 3; ++round) {
    auto m = ProcessManagerBuilder().name("app").build();
    Probed probes(m, HealthOptions{.max_connections = 2});
    for (int i = 0; i < 20000; ++i) m->insert(std::make_shared<pm::test::IdleService>("s"));
    Running run(m, 1);
    const auto port = probes.port();
    ASSERT_NE(port, 0);
    ASSERT_TRUE(run.wait_ready());
    std::vector<std::unique_ptr<Client>> askers;
    for (int i = 0; i < 4; ++i) {
      askers.push_back(std::make_unique<Client>(port));
      askers.back()->write("GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    {
      Client quitter(port);  // goes away mid-document
      quitter.write("GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
      (void)quitter.read_until("\"children\"");
    }
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
    for (auto& a : askers) {
      const auto r = a->read_all();  // an answer, or closed: never a hang
      if (!r.empty()) {
        EXPECT_EQ(status_of(r), 200) << r.substr(0, 100);
      }
    }
  }
}

// The server run twice (its manager run a second time): /status, /livez and
// the connection limit work as in the first run.
TEST(health_adversary, a_server_run_a_second_time_serves_status_again) {
  auto m = ProcessManagerBuilder().name("app").build();
  auto server = std::make_shared<HealthServer>(m, HealthOptions{.max_connections = 1});
  m->insert(server);
  for (int i = 0; i < 2000; ++i) m->insert(std::make_shared<pm::test::IdleService>("s"));
  for (int round = 0; round < 2; ++round) {
    Running run(m, 1);
    ASSERT_TRUE(run.wait_ready());
    const auto port = server->port();
    ASSERT_NE(port, 0);
    Client waiting(port);
    waiting.write("GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    const auto r = get(port, "/status");
    EXPECT_EQ(status_of(r), 200) << "round " << round << ": " << r.substr(0, 100);
    const auto l = get(port, "/livez");
    EXPECT_EQ(status_of(l), 200) << "round " << round << ": " << l;
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
}

}  // namespace
