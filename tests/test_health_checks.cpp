// HealthServer's checks of the user's own (/readyz, /livez, ?verbose),
// hanging and throwing checks, and routes of the user's own.
#include <processmanager/health.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

#include "health_support.hpp"
#include "http_client.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::CheckKind;
using pm::HealthCheck;
using pm::HealthCheckResult;
using pm::HealthOptions;
using pm::ProcessManagerBuilder;
using pm::test::body_of;
using pm::test::get;
using pm::test::Running;
using pm::test::status_of;
using pm::test::health::Probed;
using pm::test::health::wait_until;

/// A check whose answer the test sets.
struct Switch {
  std::atomic<bool> ok{true};
  std::atomic<int> runs{0};
  std::string reason = "connection refused";
  HealthCheck check(std::string name, CheckKind kind) {
    return pm::make_check(std::move(name), kind, [this] {
      ++runs;
      return ok ? HealthCheckResult::healthy() : HealthCheckResult::unhealthy(reason);
    });
  }
};

/// A server on a tree of its own; the tree is ready once it listens.
struct Served {
  std::shared_ptr<pm::ProcessManager> manager = ProcessManagerBuilder().name("app").build();
  Probed health;
  Running run;
  std::uint16_t port;
  explicit Served(HealthOptions options) : health(manager, std::move(options)), run(manager), port(health.port()) {}
  ~Served() {
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
};

TEST(HealthChecks, a_failing_readiness_check_makes_readyz_answer_503_naming_it_and_its_reason) {
  Switch db;
  Switch heart;
  HealthOptions options;
  options.checks = {db.check("db", CheckKind::readiness), heart.check("heart", CheckKind::liveness)};
  Served s(options);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  EXPECT_EQ(body_of(get(s.port, "/readyz")), "ready\n");
  db.ok = false;
  const std::string failing = get(s.port, "/readyz");
  EXPECT_EQ(status_of(failing), 503);
  EXPECT_EQ(body_of(failing), "check 'db' failed: connection refused\n");
  EXPECT_EQ(status_of(get(s.port, "/livez")), 200) << "a readiness check does not gate liveness";
  heart.ok = false;
  heart.reason = "deadlocked";
  const std::string dead = get(s.port, "/livez");
  EXPECT_EQ(status_of(dead), 503);
  EXPECT_EQ(body_of(dead), "check 'heart' failed: deadlocked\n");
  db.ok = true;
  heart.ok = true;
  EXPECT_EQ(status_of(get(s.port, "/readyz")), 200);
  EXPECT_EQ(status_of(get(s.port, "/livez")), 200);
  EXPECT_EQ(status_of(get(s.port, "/readyz", "HEAD")), 200);
  EXPECT_GE(db.runs.load(), 4) << "each probe runs the check anew";
}

TEST(HealthChecks, verbose_lists_the_tree_and_every_check_as_kubernetes_does) {
  Switch db;
  Switch cache;
  cache.reason = "cold";
  HealthOptions options;
  options.checks = {db.check("db", CheckKind::readiness), cache.check("cache", CheckKind::readiness)};
  Served s(options);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  const std::string ok = get(s.port, "/readyz?verbose");
  EXPECT_EQ(status_of(ok), 200);
  EXPECT_EQ(body_of(ok), "[+]tree ok\n[+]db ok\n[+]cache ok\nreadyz check passed\n");
  cache.ok = false;
  const std::string bad = get(s.port, "/readyz?exclude=x&verbose=true");
  EXPECT_EQ(status_of(bad), 503);
  EXPECT_EQ(body_of(bad), "[+]tree ok\n[+]db ok\n[-]cache failed: cold\nreadyz check failed\n");
  EXPECT_EQ(body_of(get(s.port, "/livez?verbose")), "[+]tree ok\nlivez check passed\n");
  EXPECT_EQ(body_of(get(s.port, "/readyz?verbosely")), "check 'cache' failed: cold\n") << "not the parameter";
}

/// A check that waits until `released`; with `deaf`, it ignores the
/// server's cancellation meanwhile.
asio::awaitable<HealthCheckResult> hang(std::shared_ptr<std::atomic<bool>> released,
                                        std::shared_ptr<std::atomic<int>> runs, std::shared_ptr<std::atomic<int>> ended,
                                        bool deaf) {
  ++*runs;
  struct Count {
    std::atomic<int>& n;
    ~Count() { ++n; }
  } count{*ended};
  if (deaf) {
    co_await asio::this_coro::reset_cancellation_state(
        [](asio::cancellation_type) { return asio::cancellation_type::none; });
  }
  asio::steady_timer tick(co_await asio::this_coro::executor);
  while (!*released) {
    tick.expires_after(2ms);
    auto [ec] = co_await tick.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return HealthCheckResult::unhealthy("cancelled");
  }
  co_return HealthCheckResult::healthy();
}

struct Hanging {
  std::shared_ptr<std::atomic<int>> runs = std::make_shared<std::atomic<int>>(0);
  std::shared_ptr<std::atomic<bool>> released = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<std::atomic<int>> ended = std::make_shared<std::atomic<int>>(0);
  HealthCheck check(bool deaf, std::chrono::milliseconds timeout) const {
    HealthCheck c;
    c.name = "slow";
    c.timeout = timeout;
    c.run = [runs = runs, released = released, ended = ended, deaf] { return hang(released, runs, ended, deaf); };
    return c;
  }
};

TEST(HealthChecks, a_check_that_ignores_its_cancellation_fails_at_its_timeout_and_then_at_once) {
  Hanging h;
  HealthOptions options;
  options.checks = {h.check(true, 300ms)};
  Served s(options);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  const auto began = std::chrono::steady_clock::now();
  const std::string first = get(s.port, "/readyz");
  EXPECT_GE(std::chrono::steady_clock::now() - began, 300ms) << "answered before the timeout";
  EXPECT_EQ(status_of(first), 503);
  EXPECT_EQ(body_of(first), "check 'slow' failed: timed out after 300 ms\n");
  // It still hangs: the next probes fail at once, without a second run.
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(body_of(get(s.port, "/readyz")), "check 'slow' failed: timed out after 300 ms\n");
  EXPECT_EQ(h.runs->load(), 1);
  EXPECT_EQ(status_of(get(s.port, "/livez")), 200) << "a hung readiness check holds up nothing else";
  // Once it answers, the next probe runs it again.
  *h.released = true;
  ASSERT_TRUE(wait_until([&] { return status_of(get(s.port, "/readyz")) == 200; }));
  // That answer may be the first run's own (it ended while the probe
  // waited); the next probe runs the check again.
  EXPECT_EQ(status_of(get(s.port, "/readyz")), 200);
  EXPECT_GE(h.runs->load(), 2);
}

TEST(HealthChecks, a_check_that_honours_its_cancellation_is_run_again_by_the_next_probe) {
  Hanging h;
  HealthOptions options;
  options.checks = {h.check(false, 100ms)};
  Served s(options);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  EXPECT_EQ(body_of(get(s.port, "/readyz")), "check 'slow' failed: timed out after 100 ms\n");
  // Cancelled at its timeout, it ended: the next probe starts a new run.
  EXPECT_EQ(body_of(get(s.port, "/readyz")), "check 'slow' failed: timed out after 100 ms\n");
  EXPECT_EQ(h.runs->load(), 2);
}

TEST(HealthChecks, a_check_that_throws_fails_with_the_message_and_the_server_stops_while_one_hangs) {
  HealthOptions options;
  options.checks = {pm::make_check("boom", CheckKind::readiness,
                                   []() -> HealthCheckResult { throw std::runtime_error("no route to db"); })};
  Hanging h;
  options.checks.push_back(h.check(true, 1h));
  options.checks.back().kind = CheckKind::liveness;
  auto manager = ProcessManagerBuilder().name("app").build();
  Probed health(manager, options);
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  const std::string r = get(port, "/readyz");
  EXPECT_EQ(status_of(r), 503);
  EXPECT_EQ(body_of(r), "check 'boom' failed: threw: no route to db\n");
  // A probe waits on the hung liveness check; the tree's stop is not held
  // up by it, nor by the check, which ignores its cancellation.
  pm::test::Client waiting(port);
  waiting.write("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(wait_until([&] { return h.runs->load() == 1; }));
  run.stop();
  ASSERT_TRUE(wait_until([&] { return manager->health().state == pm::ChildState::stopped; }));
  EXPECT_EQ(waiting.read_all(), "") << "the waiting probe's connection is closed unanswered";
  EXPECT_EQ(h.ended->load(), 0) << "the check still hangs";
  *h.released = true;  // it may end now: the io_context can run out
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(h.ended->load(), 1);
}

/// The user's own routes.
asio::awaitable<pm::HealthResponse> echo(pm::HealthRequest req) {
  co_return pm::HealthResponse{201, "application/json",
                               req.method + " " + req.path + " [" + req.query + "] " + req.body};
}
asio::awaitable<pm::HealthResponse> broken(pm::HealthRequest) {
  throw std::runtime_error("page on fire");
  co_return pm::HealthResponse{};
}
asio::awaitable<pm::HealthResponse> odd_status(pm::HealthRequest) { co_return pm::HealthResponse{42, "x", ""}; }

TEST(HealthRoutes, a_route_answers_every_method_and_its_failures_are_500s_naming_it) {
  HealthOptions options;
  options.routes = {{"/debug", echo}, {"/broken", broken}, {"/odd", odd_status}};
  Served s(options);
  ASSERT_NE(s.port, 0);
  const std::string r = get(s.port, "/debug?x=1");
  EXPECT_EQ(status_of(r), 201);
  EXPECT_NE(r.find("Content-Type: application/json"), std::string::npos) << r;
  EXPECT_EQ(body_of(r), "GET /debug [x=1] ");
  pm::test::Client c(s.port);
  c.write("POST /debug HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
  EXPECT_EQ(body_of(c.read_all()), "POST /debug [] hello");
  const std::string head = get(s.port, "/debug", "HEAD");
  EXPECT_EQ(status_of(head), 201);
  EXPECT_EQ(body_of(head), "");
  const std::string fire = get(s.port, "/broken");
  EXPECT_EQ(status_of(fire), 500);
  EXPECT_EQ(body_of(fire), "route /broken failed: page on fire\n");
  EXPECT_EQ(status_of(get(s.port, "/odd")), 500);
  EXPECT_EQ(status_of(get(s.port, "/debug/more")), 404) << "a route is one path exactly";
  EXPECT_EQ(status_of(get(s.port, "/readyz")), 200) << "the server's own paths still answer";
}

TEST(HealthChecks, nonsensical_checks_and_routes_are_refused_by_name) {
  auto manager = ProcessManagerBuilder().name("app").build();
  auto refused = [&](HealthOptions o, const std::string& words) {
    try {
      pm::HealthServer server(manager, std::move(o), "probe");
      ADD_FAILURE() << "accepted: " << words;
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("'probe'"), std::string::npos) << what;
      EXPECT_NE(what.find(words), std::string::npos) << what;
    }
  };
  Switch sw;
  HealthOptions o;
  o.checks = {sw.check("", CheckKind::readiness)};
  refused(o, "has no name");
  o.checks = {sw.check("a\nb", CheckKind::readiness)};
  refused(o, "control characters");
  o.checks = {HealthCheck{"x", CheckKind::readiness, nullptr, 1s}};
  refused(o, "has no function");
  o.checks = {sw.check("x", CheckKind::readiness)};
  o.checks[0].timeout = 0s;
  refused(o, "timeout must be positive");
  o.checks = {sw.check("x", CheckKind::readiness), sw.check("x", CheckKind::readiness)};
  refused(o, "has that name already");
  o.checks = {sw.check("x", CheckKind::readiness), sw.check("x", CheckKind::liveness)};
  EXPECT_NO_THROW(pm::HealthServer(manager, o)) << "one name, two kinds";
  o.checks.clear();
  o.routes = {{"debug", echo}};
  refused(o, "begins with '/'");
  o.routes = {{"/metrics", echo}};
  refused(o, "one of the server's own");
  o.routes = {{"/d", nullptr}};
  refused(o, "has no handler");
  o.routes = {{"/d", echo}, {"/d", echo}};
  refused(o, "given twice");
}

}  // namespace
