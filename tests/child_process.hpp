// A program run as a child process for tests: real signals, exit codes,
// and its stdout read line by line.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace pm::test {

/// A program run as a child process, its stdout read line by line.
class ChildProcess {
 public:
  ChildProcess(const std::string& program, const std::vector<std::string>& args) {
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
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(program.c_str()));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(program.c_str(), argv.data());
      _exit(127);
    }
    close(out[1]);
    close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
    close(err_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  /// Reads stdout until a line equal to `line` has been seen (services print
  /// in no fixed order, so earlier lines count too); false on EOF or guard.
  bool wait_line(const std::string& line, std::chrono::milliseconds guard = pm::test::hang_guard) {
    return wait_until([&] { return std::find(lines_.begin(), lines_.end(), line) != lines_.end(); }, guard);
  }
  /// Reads stdout until `seen()` holds for the lines so far; false on EOF or guard.
  template <class Pred>
  bool wait_until(Pred seen, std::chrono::milliseconds guard) {
    const auto deadline = std::chrono::steady_clock::now() + guard;
    for (;;) {
      auto nl = buf_.find('\n');
      while (nl != std::string::npos) {
        lines_.push_back(buf_.substr(0, nl));
        buf_.erase(0, nl + 1);
        nl = buf_.find('\n');
      }
      if (seen()) return true;
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
  /// The first line seen so far that starts with `prefix`, waiting for it.
  std::string wait_prefix(const std::string& prefix, std::chrono::milliseconds guard = pm::test::hang_guard) {
    std::string found;
    wait_until(
        [&] {
          for (const auto& l : lines_) {
            if (l.rfind(prefix, 0) == 0) {
              found = l;
              return true;
            }
          }
          return false;
        },
        guard);
    return found;
  }
  void signal(int sig) const { kill(pid_, sig); }
  /// Waits for the exit; returns the exit code, or 1000+signal if killed.
  int wait_exit() {
    int status = 0;
    // The child bounds its own run; the test's TIMEOUT guards a hang here.
    waitpid(pid_, &status, 0);
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
  }
  /// wait_exit(), bounded: -1 if the child has not exited within `guard`
  /// (it is then killed, and reaped by the destructor).
  int wait_exit(std::chrono::milliseconds guard) {
    std::promise<int> exited;
    auto code = exited.get_future();
    std::thread waiter([this, &exited] {
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      exited.set_value(WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status));
    });
    if (code.wait_for(guard) != std::future_status::ready) {
      kill(pid_, SIGKILL);  // ends the waiter's waitpid
      waiter.join();
      reaped_ = true;
      return -1;
    }
    waiter.join();
    reaped_ = true;
    return code.get();
  }
  /// Reads stdout until a line starting with `prefix` and containing
  /// `text` has been seen; false on EOF or guard.
  bool wait_line_with(const std::string& prefix, const std::string& text,
                      std::chrono::milliseconds guard = pm::test::hang_guard) {
    return wait_until(
        [&] {
          return std::any_of(lines_.begin(), lines_.end(), [&](const std::string& l) {
            return l.rfind(prefix, 0) == 0 && l.find(text) != std::string::npos;
          });
        },
        guard);
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

}  // namespace pm::test
