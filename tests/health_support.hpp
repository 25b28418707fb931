// Helpers for the adversarial tests of health() and the HealthServer
// (test_health_adversary.cpp, test_health_server_adversary.cpp).
#pragma once

#include <processmanager/health.hpp>
#include <processmanager/processmanager.hpp>

#include <chrono>
#include <future>
#include <thread>

#include "lifecycle_support.hpp"

namespace pm::test::health {

using namespace std::chrono_literals;

/// Elapsed time is the subject of heartbeat tests: this only bounds it from
/// below (past a timeout) and synchronises with no other thread.
inline void let_time_pass(std::chrono::milliseconds d) { std::this_thread::sleep_for(d); }

/// Waits (hang-guarded) until `pred` holds; polls a condition the test
/// cannot be told about otherwise (a counter, the manager's books).
template <class Pred>
bool wait_until(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + pm::test::hang_guard;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

inline pm::RestartOptions slow_restart() {
  pm::RestartOptions o;
  o.policy = pm::RestartPolicy::transient;
  o.backoff = {.initial = 1h, .factor = 1.0, .max = 1h, .jitter = false};
  return o;
}

/// A health server in `manager`; the port once it listens (0 if never).
struct Probed {
  std::promise<std::uint16_t> listening;
  std::shared_ptr<pm::HealthServer> server;

  Probed(const std::shared_ptr<pm::ProcessManager>& manager, pm::HealthOptions options = {}) {
    options.on_listening = [this](std::uint16_t port) { listening.set_value(port); };
    server = std::make_shared<pm::HealthServer>(manager, std::move(options));
    manager->insert(server);
  }
  std::uint16_t port() {
    auto f = listening.get_future();
    return f.wait_for(pm::test::hang_guard) == std::future_status::ready ? f.get() : 0;
  }
};

}  // namespace pm::test::health
