// SystemdNotifier against real unix datagram sockets.
#include <processmanager/systemd.hpp>

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <future>
#include <string>

#include "lifecycle_support.hpp"
#include "notify_listener.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ChildOptions;
using pm::ProcessManagerBuilder;
using pm::SystemdNotifier;
using pm::SystemdOptions;
using pm::test::Beating;
using pm::test::Behaviour;
using pm::test::Journal;
using pm::test::NotifyListener;
using pm::test::Probe;
using pm::test::Running;
using pm::test::send;

std::uint64_t monotonic_usec() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000U + static_cast<std::uint64_t>(ts.tv_nsec) / 1000U;
}

std::string socket_path(const std::string& tag) {
  return "/tmp/pm-notify-" + std::to_string(getpid()) + "-" + tag + ".sock";
}

/// The notifier's run() on a strand of the tree's io_context.
std::future<void> start(Running& run, SystemdNotifier& n) {
  return asio::co_spawn(asio::make_strand(run.io()), n.run(), asio::use_future);
}

TEST(systemd, without_a_notify_socket_it_does_nothing) {
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  auto m = ProcessManagerBuilder().name("m").build();
  SystemdNotifier n(m);
  EXPECT_FALSE(n.enabled());
  EXPECT_FALSE(n.watchdog().has_value());
  EXPECT_FALSE(n.send("READY=1"));
  asio::io_context io;
  auto done = asio::co_spawn(io, n.run(), asio::use_future);
  io.run();  // returns: run() ended at once, with nothing to wait for
  EXPECT_NO_THROW(done.get());
}

TEST(systemd, malformed_settings_are_refused_with_the_trees_name) {
  auto m = ProcessManagerBuilder().name("app").build();
  auto message = [&](SystemdOptions o) -> std::string {
    try {
      SystemdNotifier n(m, std::move(o));
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no exception";
  };
  const auto relative = message({.socket = "run/notify"});
  EXPECT_NE(relative.find("app"), std::string::npos) << relative;
  EXPECT_NE(relative.find("run/notify"), std::string::npos) << relative;
  EXPECT_NE(message({.socket = "/" + std::string(200, 'x')}).find("longer"), std::string::npos);
  EXPECT_NE(message({.socket = "@"}).find("no name"), std::string::npos);
  EXPECT_NE(message({.socket = "@x", .extend_interval = 0s}).find("extend_interval"), std::string::npos);
  EXPECT_THROW(SystemdNotifier(nullptr), std::invalid_argument);

  unsetenv("NOTIFY_SOCKET");
  setenv("WATCHDOG_USEC", "soon", 1);
  unsetenv("WATCHDOG_PID");
  EXPECT_NE(message({}).find("WATCHDOG_USEC 'soon'"), std::string::npos) << message({});
  // A watchdog meant for another process is not ours.
  setenv("WATCHDOG_USEC", "1000000", 1);
  setenv("WATCHDOG_PID", std::to_string(getpid() + 1).c_str(), 1);
  EXPECT_FALSE(SystemdNotifier(m).watchdog().has_value());
  setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  EXPECT_EQ(SystemdNotifier(m).watchdog(), std::chrono::microseconds(1000000));
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
}

TEST(systemd, ready_reload_stopping_and_timeout_extensions_reach_a_path_socket) {
  NotifyListener sd(socket_path("life"));
  auto j = std::make_shared<Journal>();
  auto loader = std::make_shared<Probe>("loader", j, Behaviour{.defer_ready = true});
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m =
      ProcessManagerBuilder().name("app").shutdown_grace_period(300ms).pre_insert(loader).pre_insert(stubborn).build();
  SystemdNotifier n(m, {.socket = sd.where(), .extend_interval = 20ms});
  ASSERT_TRUE(n.enabled());
  Running run(m);
  auto done = start(run, n);
  ASSERT_TRUE(j->wait_for("start loader"));
  ASSERT_TRUE(j->wait_for("start stubborn"));
  for (const auto& msg : sd.messages()) EXPECT_EQ(msg.find("READY=1"), std::string::npos) << "ready too early";

  send(loader, 1);
  const auto ready = sd.wait_for_text("READY=1");
  ASSERT_GE(ready, 0);
  EXPECT_NE(sd.messages()[static_cast<std::size_t>(ready)].find("STATUS=ready: 2 of 2 services running, 2 ready"),
            std::string::npos)
      << sd.messages()[static_cast<std::size_t>(ready)];

  const auto before = monotonic_usec();
  m->process_handle()->request_reload();
  const auto reloading = sd.wait_for_text("RELOADING=1", static_cast<std::size_t>(ready) + 1);
  ASSERT_GT(reloading, ready);
  const std::string r = sd.messages()[static_cast<std::size_t>(reloading)];
  const auto at = r.find("MONOTONIC_USEC=");
  ASSERT_NE(at, std::string::npos) << r;
  const auto usec = std::stoull(r.substr(at + 15));
  EXPECT_GE(usec, before);
  EXPECT_LE(usec, monotonic_usec());
  const auto ready_again = sd.wait_for_text("READY=1", static_cast<std::size_t>(reloading) + 1);
  ASSERT_GT(ready_again, reloading);

  run.stop();
  const auto stopping = sd.wait_for_text("STOPPING=1", static_cast<std::size_t>(ready_again) + 1);
  ASSERT_GT(stopping, ready_again);
  // The stubborn child holds the stop for its whole grace period (300 ms):
  // the extensions keep coming meanwhile, each of twice the interval.
  const auto first = sd.wait_for_text("EXTEND_TIMEOUT_USEC=40000", static_cast<std::size_t>(stopping));
  ASSERT_GE(first, stopping);
  EXPECT_GT(sd.wait_for_text("EXTEND_TIMEOUT_USEC=40000", static_cast<std::size_t>(first) + 1), first);
  (void)run.finish();
  EXPECT_EQ(done.wait_for(pm::test::hang_guard), std::future_status::ready);
  // Sent before run() returned, but the listener thread may not have read
  // it yet: wait for it. Datagrams keep their order, so it is then the last.
  const auto last = sd.wait_for_text("STATUS=stopped", static_cast<std::size_t>(first));
  ASSERT_GE(last, first);
  EXPECT_EQ(static_cast<std::size_t>(last) + 1, sd.messages().size());
}

TEST(systemd, the_watchdog_is_fed_only_while_every_heartbeat_is_fresh) {
  const std::string name = "@pm-notify-" + std::to_string(getpid()) + "-watchdog";
  NotifyListener sd(name);
  // The environment systemd gives a Type=notify service with WatchdogSec.
  setenv("NOTIFY_SOCKET", name.c_str(), 1);
  setenv("WATCHDOG_USEC", "40000", 1);
  setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  auto j = std::make_shared<Journal>();
  auto beating = std::make_shared<Beating>("beating", j);
  beating->beats().set(std::chrono::steady_clock::now() + std::chrono::hours(1));
  auto m = ProcessManagerBuilder()
               .name("app")
               .pre_insert(beating, ChildOptions{.heartbeat_timeout = 50ms})
               .pre_insert(std::make_shared<Probe>("plain", j))
               .build();
  SystemdNotifier n(m);
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  ASSERT_EQ(n.watchdog(), std::chrono::microseconds(40000));
  Running run(m);
  auto done = start(run, n);
  const auto fed = sd.wait_for_text("WATCHDOG=1");
  ASSERT_GE(fed, 0);
  ASSERT_GT(sd.wait_for_text("WATCHDOG=1", static_cast<std::size_t>(fed) + 1), fed);

  // Its last beat is older than the timeout: once 50 ms have passed since it
  // started, the notifier's next watchdog round finds it stale. The test
  // waits for that report, not for time.
  beating->beats().set(std::chrono::steady_clock::now() - std::chrono::hours(1));
  const auto withheld = sd.wait_for_text("STATUS=watchdog withheld: stale heartbeat: app/beating");
  ASSERT_GE(withheld, 0);
  beating->beats().set(std::chrono::steady_clock::now() + std::chrono::hours(1));
  const auto again = sd.wait_for_text("healthy again", static_cast<std::size_t>(withheld));
  ASSERT_GT(again, withheld);
  const auto msgs = sd.messages();
  for (auto i = withheld; i < again; ++i) {
    EXPECT_EQ(msgs[static_cast<std::size_t>(i)].find("WATCHDOG=1"), std::string::npos) << "fed while stale";
  }
  EXPECT_NE(msgs[static_cast<std::size_t>(again)].find("WATCHDOG=1"), std::string::npos);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(done.wait_for(pm::test::hang_guard), std::future_status::ready);
}

TEST(systemd, stop_ends_a_notifier_whose_tree_never_ran) {
  NotifyListener sd(socket_path("never"));
  auto m = ProcessManagerBuilder().name("app").build();
  SystemdNotifier n(m, {.socket = sd.where()});
  asio::io_context io;
  auto done = asio::co_spawn(io, n.run(), asio::use_future);
  std::thread t([&io] { io.run(); });
  n.stop();
  t.join();
  EXPECT_NO_THROW(done.get());
  EXPECT_GE(sd.wait_for_text("STOPPING=1"), 0);
}

}  // namespace
