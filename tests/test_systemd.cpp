// SystemdNotifier against real unix datagram sockets.
#include <processmanager/systemd.hpp>

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <ctime>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

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

  EXPECT_NE(message({.socket = "@x", .watchdog = std::chrono::microseconds(0)}).find("watchdog must be positive"),
            std::string::npos);
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_PID");
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

/// Log lines, captured for one test.
class LogCapture {
 public:
  LogCapture() {
    pm::set_log_level(pm::LogLevel::info);
    pm::set_log_sink([this](pm::LogLevel, std::string_view path, std::string_view message) {
      std::lock_guard lock(mu_);
      lines_.push_back(std::string(path) + ": " + std::string(message));
    });
  }
  ~LogCapture() {
    pm::set_log_sink({});
    pm::set_log_level(std::nullopt);
  }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::size_t count(const std::string& text) const {
    std::lock_guard lock(mu_);
    std::size_t n = 0;
    for (const auto& l : lines_) n += l.find(text) != std::string::npos ? 1 : 0;
    return n;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> lines_;
};

/// The environment systemd gives a Type=notify service, for one test.
struct NotifyEnv {
  NotifyEnv(const std::string& socket, const char* watchdog_usec) {
    setenv("NOTIFY_SOCKET", socket.c_str(), 1);
    setenv("WATCHDOG_USEC", watchdog_usec, 1);
    setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  }
  ~NotifyEnv() {
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
  }
  NotifyEnv(const NotifyEnv&) = delete;
  NotifyEnv& operator=(const NotifyEnv&) = delete;
};

// Issue 12, item 12: a malformed WATCHDOG_USEC used to throw, and pm::run
// then ran without a notifier at all: READY=1 never went out.
TEST(systemd, a_malformed_watchdog_usec_turns_off_only_the_watchdog) {
  NotifyListener sd(socket_path("malformed"));
  LogCapture log;
  auto j = std::make_shared<Journal>();
  auto m = ProcessManagerBuilder().name("app").pre_insert(std::make_shared<Probe>("a", j)).build();
  std::optional<SystemdNotifier> n;
  {
    NotifyEnv env(sd.where(), "soon");
    ASSERT_NO_THROW(n.emplace(m));
  }
  EXPECT_TRUE(n->enabled());
  EXPECT_FALSE(n->watchdog().has_value());
  EXPECT_EQ(log.count("WATCHDOG_USEC 'soon' is not a positive integer"), 1u);
  Running run(m);
  auto done = start(run, *n);
  EXPECT_GE(sd.wait_for_text("READY=1"), 0);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(done.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_GE(sd.wait_for_text("STATUS=stopped"), 0);
  EXPECT_EQ(log.count("WATCHDOG_USEC"), 1u) << "said once";
  for (const auto& msg : sd.messages()) EXPECT_EQ(msg.find("WATCHDOG=1"), std::string::npos) << msg;
}

// Issue 12, item 13: WATCHDOG_USEC=1 meant a WATCHDOG=1 datagram every
// 0.5 us, and a value past ~1.8e16 overflowed the period in nanoseconds.
TEST(systemd, a_tiny_watchdog_is_raised_to_the_floor_and_a_huge_one_saturates) {
  auto m = ProcessManagerBuilder().name("app").build();
  const std::string where = socket_path("bounds");
  const std::chrono::microseconds floor = 20ms;
  const std::chrono::microseconds ceiling = std::chrono::hours(24 * 366);
  const auto period_for = [&](const char* usec) {
    NotifyEnv env(where, usec);
    return SystemdNotifier(m).watchdog();
  };
  EXPECT_EQ(period_for("1"), floor);
  EXPECT_EQ(period_for("19999"), floor);
  EXPECT_EQ(period_for("20000"), floor);
  EXPECT_EQ(period_for("30000000"), std::chrono::microseconds(30000000));
  EXPECT_EQ(period_for("20000000000000000"), ceiling);
  EXPECT_EQ(period_for("18446744073709551615"), ceiling);
  EXPECT_EQ(period_for("99999999999999999999999999"), ceiling);  // beyond 64 bits: saturates too
  EXPECT_EQ(SystemdNotifier(m, {.socket = where, .watchdog = std::chrono::microseconds(1)}).watchdog(), floor);

  // At the floor, the pings are 10 ms apart: five of them take 40 ms at
  // least (a timer never fires early), where 1 us meant five in no time.
  NotifyListener sd(socket_path("tiny"));
  auto j = std::make_shared<Journal>();
  auto tree = ProcessManagerBuilder().name("app").pre_insert(std::make_shared<Probe>("a", j)).build();
  std::optional<SystemdNotifier> n;
  {
    NotifyEnv env(sd.where(), "1");
    n.emplace(tree);
  }
  const auto t0 = std::chrono::steady_clock::now();  // before the first ping can go out
  Running run(tree);
  auto done = start(run, *n);
  auto at = sd.wait_for_text("WATCHDOG=1");
  ASSERT_GE(at, 0);
  for (int i = 0; i < 4; ++i) {
    at = sd.wait_for_text("WATCHDOG=1", static_cast<std::size_t>(at) + 1);
    ASSERT_GT(at, 0);
  }
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 40ms);  // 4 periods of 10 ms between the first and the fifth
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(done.wait_for(pm::test::hang_guard), std::future_status::ready);

  // A huge period runs without overflowing: one WATCHDOG=1 at the start,
  // the next one in half a year.
  NotifyListener sd2(socket_path("huge"));
  auto tree2 = ProcessManagerBuilder().name("app").pre_insert(std::make_shared<Probe>("a", j)).build();
  std::optional<SystemdNotifier> n2;
  {
    NotifyEnv env(sd2.where(), "18446744073709551615");
    n2.emplace(tree2);
  }
  Running run2(tree2);
  auto done2 = start(run2, *n2);
  ASSERT_GE(sd2.wait_for_text("READY=1"), 0);
  ASSERT_GE(sd2.wait_for_text("WATCHDOG=1"), 0);
  run2.stop();
  EXPECT_EQ(run2.finish(), nullptr);
  EXPECT_EQ(done2.wait_for(pm::test::hang_guard), std::future_status::ready);
  std::size_t pings = 0;
  for (const auto& msg : sd2.messages()) pings += msg.find("WATCHDOG=1") != std::string::npos ? 1 : 0;
  EXPECT_EQ(pings, 1u);
}

// Issue 12, item 14: a service name with a newline added lines of its own
// (MAINPID=, READY=1) to the datagram that named it.
TEST(systemd, a_name_with_control_characters_cannot_add_lines_to_a_datagram) {
  NotifyListener sd(socket_path("inject"));
  auto j = std::make_shared<Journal>();
  auto evil = std::make_shared<Beating>("evil\nMAINPID=1\nREADY=1\x7f", j);
  evil->beats().set(std::chrono::steady_clock::now() - std::chrono::hours(1));  // stale once its timeout passed
  auto m = ProcessManagerBuilder().name("app").pre_insert(evil, ChildOptions{.heartbeat_timeout = 30ms}).build();
  SystemdNotifier n(m, {.socket = sd.where(), .watchdog = std::chrono::microseconds(40000)});
  Running run(m);
  auto done = start(run, n);
  const auto withheld = sd.wait_for_text("STATUS=watchdog withheld: stale heartbeat: app/evil?MAINPID=1?READY=1?");
  ASSERT_GE(withheld, 0);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(done.wait_for(pm::test::hang_guard), std::future_status::ready);
  for (const auto& msg : sd.messages()) {
    EXPECT_EQ(msg.find("\nMAINPID="), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\x7f'), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind("MAINPID=", 0), std::string::npos) << msg;
  }
}

// Issue 12, item 15: the first watchdog round ran before the tree had
// started and reported "stale heartbeat: " with nobody in it; and from then
// on a child stale from its start was never named.
TEST(systemd, the_watchdog_names_a_child_stale_from_its_start_and_nothing_before_the_tree_runs) {
  NotifyListener sd(socket_path("from-start"));
  LogCapture log;
  auto j = std::make_shared<Journal>();
  auto silent = std::make_shared<Beating>("silent", j);  // never beats
  auto m = ProcessManagerBuilder()
               .name("app")
               .pre_insert(silent, ChildOptions{.heartbeat_timeout = 10ms})
               .pre_insert(std::make_shared<Probe>("plain", j))
               .build();
  SystemdNotifier n(m, {.socket = sd.where(), .watchdog = std::chrono::microseconds(100000)});
  // One io thread, the notifier spawned first: its first round runs before
  // the tree has started, every time.
  asio::io_context io(1);
  auto done = asio::co_spawn(io, n.run(), asio::use_future);
  std::exception_ptr error;
  pm::test::Event finished;
  asio::co_spawn(io, m->process_start(), [&](std::exception_ptr e) {
    error = e;
    finished.set();
  });
  std::thread runner([&io] { pm::test::run_io(io); });
  const auto named = sd.wait_for_text("STATUS=watchdog withheld: stale heartbeat: app/silent");
  EXPECT_GE(named, 0);
  m->process_handle()->request_shutdown();
  EXPECT_TRUE(finished.wait());
  runner.join();
  EXPECT_EQ(error, nullptr);
  EXPECT_NO_THROW(done.get());
  for (const auto& msg : sd.messages()) {
    EXPECT_EQ(msg.find("stale heartbeat: \n"), std::string::npos) << msg;
    EXPECT_FALSE(msg.size() >= 17 && msg.compare(msg.size() - 17, 17, "stale heartbeat: ") == 0) << "nobody named";
  }
  EXPECT_EQ(log.count("stale heartbeat: app/silent"), 1u);
  EXPECT_EQ(log.count("withheld"), 1u);
}

TEST(systemd, the_watchdog_and_status_lines_read_no_heartbeat_while_none_can_be_stale) {
  // The notifier judges the tree at every watchdog round (here every 10 ms)
  // and at every change of its state: from ProcessManager::health(), which
  // reads no heartbeat before the earliest could have run out (an hour),
  // not from a status() snapshot, which reads every one of them each time.
  NotifyListener sd(socket_path("cheap"));
  std::atomic<int> reads{0};
  ProcessManagerBuilder b;
  b.name("app");
  for (int i = 0; i < 50; ++i)
    b.pre_insert(std::make_shared<pm::test::Counted>(reads), ChildOptions{.heartbeat_timeout = 1h});
  auto m = b.build();
  SystemdNotifier n(m, {.socket = sd.where(), .watchdog = std::chrono::microseconds(20000)});
  Running run(m);
  auto done = start(run, n);
  ASSERT_GE(sd.wait_for_text("READY=1"), 0);
  std::ptrdiff_t fed = -1;
  for (int round = 0; round < 10; ++round) {
    fed = sd.wait_for_text("WATCHDOG=1", static_cast<std::size_t>(fed + 1));
    ASSERT_GE(fed, 0);
  }
  EXPECT_EQ(reads.load(), 0);
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

// --- Inserted into the tree it reports on ------------------------------------

/// The index of the first event about `path` entering `state`, or -1.
long index_of(const std::vector<pm::Event>& events, const std::string& path, pm::ChildState state) {
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (events[i].path == path && events[i].kind == pm::EventKind::state && events[i].state == state) {
      return static_cast<long>(i);
    }
  }
  return -1;
}

TEST(systemd, a_notifier_in_the_builder_chain_is_told_last_and_reports_the_whole_stop) {
  NotifyListener sd(socket_path("member"));
  auto j = std::make_shared<Journal>();
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  pm::test::EventRecorder rec;
  auto m = ProcessManagerBuilder()
               .name("app")
               .shutdown_grace_period(300ms)
               .on_event(rec.hook())
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where(), .extend_interval = 20ms}))
               .pre_insert(stubborn)
               .build();
  Running run(m);
  const auto ready = sd.wait_for_text("READY=1");
  ASSERT_GE(ready, 0);
  EXPECT_NE(sd.messages()[static_cast<std::size_t>(ready)].find("2 of 2 services running, 2 ready"), std::string::npos)
      << sd.messages()[static_cast<std::size_t>(ready)];

  run.stop();
  const auto stopping = sd.wait_for_text("STOPPING=1", static_cast<std::size_t>(ready) + 1);
  ASSERT_GT(stopping, ready);
  // 'stubborn' holds the stop for its grace period (300 ms); the notifier,
  // not told yet, keeps extending systemd's timeout meanwhile.
  const auto first = sd.wait_for_text("EXTEND_TIMEOUT_USEC=40000", static_cast<std::size_t>(stopping));
  ASSERT_GE(first, stopping);
  EXPECT_GT(sd.wait_for_text("EXTEND_TIMEOUT_USEC=40000", static_cast<std::size_t>(first) + 1), first);
  (void)run.finish();  // 'stubborn' was cancelled after its grace: reported as not stopped in time

  const auto events = rec.events();
  const auto stubborn_told = index_of(events, "app/stubborn", pm::ChildState::stopping);
  const auto stubborn_done = index_of(events, "app/stubborn", pm::ChildState::stopped);
  const auto notifier_told = index_of(events, "app/systemd", pm::ChildState::stopping);
  const auto notifier_done = index_of(events, "app/systemd", pm::ChildState::stopped);
  ASSERT_GE(stubborn_told, 0);
  ASSERT_GE(stubborn_done, 0);
  ASSERT_GE(notifier_told, 0) << "the notifier was never told to stop";
  EXPECT_GT(notifier_told, stubborn_done) << "told before the rest of the tree had ended";
  EXPECT_GT(notifier_done, notifier_told);
  // Its last word is the stop's last step: itself still running, nothing else.
  const auto last = sd.wait_for_text("STATUS=stopping: 1 of 1 services running", static_cast<std::size_t>(first) + 1);
  std::string all;
  for (const auto& msg : sd.messages()) all.append(msg).append(" | ");
  EXPECT_GE(last, first) << all;
}

TEST(systemd, a_notifier_in_the_tree_keeps_no_reference_to_it_and_checks_its_options_at_build) {
  std::weak_ptr<pm::ProcessManager> weak;
  {
    auto m = ProcessManagerBuilder().name("app").pre_insert_with(pm::systemd_notifier({.socket = "@x"})).build();
    weak = m;
  }
  EXPECT_TRUE(weak.expired()) << "the notifier inside the tree keeps the tree alive";

  try {
    (void)ProcessManagerBuilder().name("app").pre_insert_with(pm::systemd_notifier({.socket = "relative"})).build();
    ADD_FAILURE() << "a relative notify socket was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("app"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("relative"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)pm::systemd_notifier({}, ""), std::invalid_argument);
}

TEST(systemd, without_a_notify_socket_a_notifier_in_the_tree_idles_until_the_tree_stops) {
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  auto j = std::make_shared<Journal>();
  auto m = ProcessManagerBuilder()
               .name("app")
               .pre_insert_with(pm::systemd_notifier())
               .pre_insert(std::make_shared<Probe>("worker", j))
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  const auto st = m->status();
  const auto* n = st.find("systemd");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->state, pm::ChildState::ready);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("stop worker"), 1u);
}

}  // namespace
