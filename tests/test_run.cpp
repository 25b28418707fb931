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

#include "notify_listener.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;

/// The run helper as a child process, with its stdout read line by line.
class Child {
 public:
  explicit Child(const std::string& mode) {
    int out[2];
    int err[2];
    if (pipe(out) != 0 || pipe(err) != 0) throw std::runtime_error("pipe failed");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      dup2(err[1], STDERR_FILENO);
      close(out[0]);
      close(err[0]);
      unsetenv("PM_LOG");
      execl(PM_RUN_HELPER, PM_RUN_HELPER, mode.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(out[1]);
    close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
    close(err_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  /// Reads stdout until a line equal to `line` has been seen (services print
  /// in no fixed order, so earlier lines count too); false on EOF or guard.
  bool wait_line(const std::string& line, std::chrono::milliseconds guard = pm::test::hang_guard) {
    const auto deadline = std::chrono::steady_clock::now() + guard;
    for (;;) {
      auto nl = buf_.find('\n');
      while (nl != std::string::npos) {
        lines_.push_back(buf_.substr(0, nl));
        buf_.erase(0, nl + 1);
        nl = buf_.find('\n');
      }
      if (std::find(lines_.begin(), lines_.end(), line) != lines_.end()) return true;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
      char chunk[256];
      const ssize_t n = read(out_, chunk, sizeof chunk);
      if (n <= 0) return false;
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  /// Both services of the helper's tree are in their loops.
  bool wait_ready() { return wait_line("ready a") && wait_line("ready b"); }
  void signal(int sig) const { kill(pid_, sig); }
  /// Waits for the exit; returns the exit code, or 1000+signal if killed.
  int wait_exit() {
    int status = 0;
    // The child bounds its own run; the test's TIMEOUT guards a hang here.
    waitpid(pid_, &status, 0);
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
  }
  std::string stderr_text() const {
    std::string all;
    char chunk[512];
    ssize_t n = 0;
    while ((n = read(err_, chunk, sizeof chunk)) > 0) all.append(chunk, static_cast<std::size_t>(n));
    return all;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  int err_ = -1;
  bool reaped_ = false;
  std::string buf_;
  std::vector<std::string> lines_;
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
