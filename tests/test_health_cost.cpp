// HealthServer on big trees: what a probe costs the rest of the tree
// (/livez and /readyz read health(), not a snapshot).
#include <processmanager/health.hpp>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
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

}  // namespace
