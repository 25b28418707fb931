#include <processmanager/run.hpp>

#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "notify_listener.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;

/// The run helper as a child process.
class Child : public pm::test::ChildProcess {
 public:
  explicit Child(const std::string& mode) : ChildProcess(PM_RUN_HELPER, {mode}) {}
  /// Both services of the helper's tree are in their loops.
  bool wait_ready() { return wait_line("ready a") && wait_line("ready b"); }
};

TEST(run, sigint_stops_the_tree_gracefully_with_exit_code_0) {
  Child c("idle");
  ASSERT_TRUE(c.wait_ready());
  c.signal(SIGINT);
  EXPECT_EQ(c.wait_exit(), 0);
  const auto err = c.stderr_text();
  EXPECT_NE(err.find("SIGINT"), std::string::npos) << err;
}

TEST(run, sigterm_reaches_every_service_and_exits_0) {
  Child c("idle");
  ASSERT_TRUE(c.wait_ready());
  c.signal(SIGTERM);
  EXPECT_TRUE(c.wait_line("shutdown a"));
  EXPECT_EQ(c.wait_exit(), 0);
}

TEST(run, a_failure_exits_1_and_names_the_path_and_cause) {
  Child c("fail");
  EXPECT_EQ(c.wait_exit(), 1);
  const auto err = c.stderr_text();
  EXPECT_NE(err.find("root/db/writer"), std::string::npos) << err;
  EXPECT_NE(err.find("disk full"), std::string::npos) << err;
}

TEST(run, a_second_signal_forces_the_stop_with_128_plus_signal) {
  Child c("stubborn");
  ASSERT_TRUE(c.wait_ready());
  c.signal(SIGTERM);
  ASSERT_TRUE(c.wait_line("shutdown a"));  // the stubborn one saw it and goes on
  c.signal(SIGTERM);
  EXPECT_EQ(c.wait_exit(), 128 + SIGTERM);
}

TEST(run, in_process_a_plain_root_that_returns_exits_0_and_one_that_throws_exits_1) {
  auto ok = pm::make_runnable("ok", [](pm::RuntimeContext&) -> pm::asio::awaitable<void> { co_return; });
  EXPECT_EQ(pm::run(ok, {.threads = 2, .handle_signals = false}), 0);
  auto bad = pm::make_runnable("bad", [](pm::RuntimeContext&) -> pm::asio::awaitable<void> {
    throw std::runtime_error("nope");
    co_return;
  });
  EXPECT_EQ(pm::run(bad, {.threads = 1, .handle_signals = false}), 1);
  EXPECT_THROW(pm::run(nullptr), std::invalid_argument);
}

TEST(run, sighup_reloads_every_service_and_the_tree_keeps_running) {
  Child c("idle");
  ASSERT_TRUE(c.wait_ready());
  c.signal(SIGHUP);
  ASSERT_TRUE(c.wait_line("reload a"));
  ASSERT_TRUE(c.wait_line("reload b"));
  c.signal(SIGTERM);
  EXPECT_EQ(c.wait_exit(), 0);
}

TEST(run, a_second_sigint_forces_the_stop_with_130) {
  Child c("stubborn");
  ASSERT_TRUE(c.wait_ready());
  c.signal(SIGINT);
  ASSERT_TRUE(c.wait_line("shutdown a"));
  c.signal(SIGINT);
  EXPECT_EQ(c.wait_exit(), 130);
}

TEST(run, under_systemd_it_notifies_ready_reloading_and_stopping) {
  const std::string where = "@pm-run-notify-" + std::to_string(getpid());
  pm::test::NotifyListener sd(where);
  setenv("NOTIFY_SOCKET", where.c_str(), 1);  // inherited by the child
  Child c("idle");
  unsetenv("NOTIFY_SOCKET");
  ASSERT_TRUE(c.wait_ready());
  const auto ready = sd.wait_for_text("READY=1");
  ASSERT_GE(ready, 0);
  c.signal(SIGHUP);
  ASSERT_TRUE(c.wait_line("reload a"));
  const auto reloading = sd.wait_for_text("RELOADING=1\nMONOTONIC_USEC=", static_cast<std::size_t>(ready));
  ASSERT_GT(reloading, ready);
  ASSERT_GT(sd.wait_for_text("READY=1", static_cast<std::size_t>(reloading) + 1), reloading);
  c.signal(SIGTERM);
  EXPECT_EQ(c.wait_exit(), 0);
  EXPECT_GE(sd.wait_for_text("STOPPING=1"), 0);
}

TEST(run, a_storm_of_sighups_then_sigterm_exits_0) {
  Child c("idle");
  ASSERT_TRUE(c.wait_ready());
  for (int i = 0; i < 1000; ++i) c.signal(SIGHUP);
  c.signal(SIGTERM);
  EXPECT_EQ(c.wait_exit(), 0);  // the SIGTERM was not lost in the storm
  EXPECT_TRUE(c.wait_line("shutdown a"));
}

}  // namespace
