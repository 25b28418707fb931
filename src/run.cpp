#include <processmanager/run.hpp>

#include <processmanager/builtin/blocking.hpp>
#include <processmanager/builtin/signals.hpp>
#include <processmanager/systemd.hpp>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "log.hpp"

namespace pm {

using detail::log_line;

namespace {

/// What pm::run handles: stop (SIGINT, SIGTERM, SIGQUIT) and reload (SIGHUP).
constexpr std::array<int, 4> handled_signals{SIGINT, SIGTERM, SIGQUIT, SIGHUP};

/// Used when the root is not a manager (which has its own abandon_timeout).
constexpr std::chrono::seconds default_abandon_bound{5};

/// How long the io threads get to run out of work by themselves once the
/// tree has ended (at most the abandon bound), before they are stopped: a
/// thread inside a handle's control() lets go in microseconds.
constexpr std::chrono::seconds run_out_grace{1};

/// How long io threads not blocked in a service take to return once their
/// io_context is stopped: the handler they run finishes first.
constexpr std::chrono::milliseconds stop_grace{100};

[[noreturn]] void throw_errno(const char* what) { throw std::system_error(errno, std::generic_category(), what); }

/// The handled signals, watched by a thread of its own: no io thread, stuck
/// or not, stands between a signal and its handling. The signals are
/// blocked in the calling thread before any of pm::run's threads exists
/// (they all inherit the mask) and read from a signalfd; the previous mask
/// is restored, and signals still pending are drained, when it goes.
/// Dispositions are never touched, so whatever was there before (SIG_IGN
/// included) is there afterwards.
class SignalWatcher {
 public:
  SignalWatcher() {
    sigemptyset(&set_);
    for (int sig : handled_signals) sigaddset(&set_, sig);
    if (const int rc = pthread_sigmask(SIG_BLOCK, &set_, &previous_mask_); rc != 0) {
      throw std::system_error(rc, std::generic_category(), "pthread_sigmask");
    }
    blocked_ = true;
    try {
      signal_fd_ = ::signalfd(-1, &set_, SFD_NONBLOCK | SFD_CLOEXEC);
      if (signal_fd_ < 0) throw_errno("signalfd");
      wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (wake_fd_ < 0) throw_errno("eventfd");
    } catch (...) {
      release();
      throw;
    }
  }
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;
  ~SignalWatcher() {
    stop();
    release();
  }

  /// Starts the thread: `on_signal` for each signal, `on_failure` if the
  /// watch itself fails (the thread then ends).
  void start(std::function<void(int)> on_signal, std::function<void(std::exception_ptr)> on_failure) {
    thread_ = std::thread([this, on_signal = std::move(on_signal), on_failure = std::move(on_failure)] {
      try {
        watch(on_signal);
      } catch (...) {
        on_failure(std::current_exception());
      }
    });
  }

  /// Ends the thread (it never blocks in anything but poll() and the
  /// handlers, which do not wait for the tree).
  void stop() {
    if (!thread_.joinable()) return;
    const std::uint64_t one = 1;
    while (::write(wake_fd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
    thread_.join();
  }

 private:
  void watch(const std::function<void(int)>& on_signal) const {
    for (;;) {
      std::array<pollfd, 2> fds{pollfd{signal_fd_, POLLIN, 0}, pollfd{wake_fd_, POLLIN, 0}};
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        throw_errno("poll");
      }
      if ((fds[1].revents & POLLIN) != 0) return;
      if ((fds[0].revents & (POLLERR | POLLNVAL)) != 0) throw std::runtime_error("the signalfd failed");
      signalfd_siginfo info{};
      const ssize_t n = ::read(signal_fd_, &info, sizeof info);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        throw_errno("read(signalfd)");
      }
      if (n == static_cast<ssize_t>(sizeof info)) on_signal(static_cast<int>(info.ssi_signo));
    }
  }

  void release() noexcept {
    if (signal_fd_ >= 0) {
      // What came after the end is dropped rather than left pending for the
      // restored mask to deliver (which would kill the process with it).
      signalfd_siginfo info{};
      while (::read(signal_fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
      }
      ::close(signal_fd_);
      signal_fd_ = -1;
    }
    if (wake_fd_ >= 0) {
      ::close(wake_fd_);
      wake_fd_ = -1;
    }
    if (blocked_) {
      pthread_sigmask(SIG_SETMASK, &previous_mask_, nullptr);
      blocked_ = false;
    }
  }

  sigset_t set_{};
  sigset_t previous_mask_{};
  bool blocked_ = false;
  int signal_fd_ = -1;
  int wake_fd_ = -1;
  std::thread thread_;
};

/// An io_context whose handlers and services can be shut down before it is
/// destroyed: the shards of a sharded run refer to each other (a manager on
/// one holds work on the others), so all are shut down before any goes.
struct Shard : asio::io_context {
  using asio::execution_context::shutdown;
  using asio::io_context::io_context;
};

/// Everything the io threads touch. A thread stuck in a service keeps it
/// alive after pm::run has returned (see the end of run()).
struct RunState {
  RunState(std::shared_ptr<Runnable> t, std::size_t threads, bool sharded) : tree(std::move(t)) {
    // One thread per shard promises each a single thread (no locking in
    // its scheduler); unsharded, one io_context for all the threads.
    const std::size_t count = sharded ? threads : 1;
    const int hint = sharded ? 1 : static_cast<int>(threads);
    io.reserve(count);
    for (std::size_t i = 0; i < count; ++i) io.push_back(std::make_unique<Shard>(hint));
    if (count > 1) {
      std::vector<asio::io_context*> all;
      for (auto& c : io) all.push_back(c.get());
      shard_across(all);
    }
  }
  RunState(const RunState&) = delete;
  RunState& operator=(const RunState&) = delete;
  ~RunState() {
    for (auto& c : io) c->shutdown();
  }

  std::shared_ptr<Runnable> tree;
  std::shared_ptr<ProcessManager> manager;  // the tree, when it is one
  std::shared_ptr<SystemdNotifier> notifier;
  std::mutex mu;
  std::condition_variable cv;
  bool tree_done = false;      // under mu
  bool notifier_done = true;   // under mu
  std::size_t io_running = 0;  // under mu
  std::exception_ptr failure;  // under mu: what the tree threw
  bool beside_failed = false;  // under mu: signal handling, the notifier or an io thread failed
  // Last: destroyed first, while the tree still exists. The tree runs on
  // the first; in a sharded run, thread i runs the i-th.
  std::vector<std::unique_ptr<Shard>> io;
};

/// Something that runs beside the tree failed: logged, and the run fails
/// (exit 1); the tree is asked to stop, since what watched it is gone.
void fail_beside(RunState& st, const std::string& root_name, const std::string& what, const std::exception_ptr& e) {
  log_line(LogLevel::error, root_name, what + " failed: " + describe(e) + "; stopping the tree; the run fails");
  {
    std::lock_guard lock(st.mu);
    st.beside_failed = true;
  }
  if (auto handle = st.tree->process_handle()) handle->request_shutdown();
}

/// "root/db/writer (stopping), root/cache (ready)": the leaves of the tree
/// that have not ended, as far as its status knows.
std::string still_running(const std::shared_ptr<ProcessManager>& manager, const std::string& root_name) {
  if (!manager) return root_name;
  std::string out;
  auto walk = [&out](const auto& self, const ChildStatus& s) -> void {
    for (const auto& c : s.children) {
      if (!c.children.empty()) {
        self(self, c);
        continue;
      }
      if (c.state == ChildState::stopped || c.state == ChildState::failed) continue;
      out += (out.empty() ? "" : ", ") + c.path + " (" + std::string(to_string(c.state)) + ")";
    }
  };
  try {
    walk(walk, manager->status());
  } catch (...) {
    return "unknown";
  }
  return out.empty() ? "nothing known" : out;
}

bool is_abandonment(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const AbandonedError&) {
    return true;
  } catch (...) {
    return false;
  }
}

/// The exit code for what the tree threw (logged here); 0 for nothing.
int exit_code_for(const std::exception_ptr& failure, const std::string& root_name) {
  if (!failure) return 0;
  try {
    std::rethrow_exception(failure);
  } catch (const ProcessError& e) {
    // A manager counts an abandoned service (coroutine or blocking thread)
    // as not stopped, never as a failure: it is named in the log and does
    // not change the exit code. What is here failed.
    // Each failure was logged where it happened (the manager's events);
    // here one summary line, so the exit is explained without repeats.
    log_line(LogLevel::error, root_name,
             "exiting with code 1: " + std::to_string(e.failures().size()) + " failure(s), the first '" +
                 e.process_name() + "' " + describe(e.root_cause()));
  } catch (const std::exception& e) {
    // A root that is itself a blocking service, abandoned: the same rule.
    if (is_abandonment(failure)) {
      log_line(LogLevel::warn, root_name, std::string("stopped, leaving it abandoned: ") + e.what());
      return 0;
    }
    log_line(LogLevel::error, root_name, std::string("failed: ") + e.what());
  } catch (...) {
    log_line(LogLevel::error, root_name, "failed with an exception not derived from std::exception");
  }
  return 1;
}

}  // namespace

int run(std::shared_ptr<Runnable> root, RunOptions options) {
  if (!root) throw std::invalid_argument("pm::run: the root runnable is null");
  const std::size_t threads = options.threads == 0 ? 1 : options.threads;
  const std::string root_name = root->process_name();
  const auto handle = root->process_handle();

  // Before any thread of ours exists (they all inherit the blocked mask),
  // and before the io_context takes its descriptors.
  std::optional<SignalWatcher> watcher;
  if (options.handle_signals && handle) {
    try {
      watcher.emplace();
    } catch (const std::exception& e) {
      log_line(LogLevel::error, root_name,
               std::string("signal handling could not start: ") + e.what() + "; not running the tree");
      return 1;
    }
  }

  // Owned here, and by every io thread, for the whole run.
  auto st = std::make_shared<RunState>(std::move(root), threads, options.sharded);
  st->manager = std::dynamic_pointer_cast<ProcessManager>(st->tree);
  const auto abandon_bound = st->manager ? st->manager->abandon_timeout()
                                         : std::chrono::duration_cast<std::chrono::nanoseconds>(default_abandon_bound);

  // Beside the tree, not in it: it reports the stop while the tree stops.
  if (options.notify_systemd && st->manager) {
    try {
      st->notifier = std::make_shared<SystemdNotifier>(st->manager);
    } catch (const std::invalid_argument& e) {
      // A malformed environment must not keep the service from running.
      log_line(LogLevel::warn, root_name, std::string("systemd notify disabled: ") + e.what());
    }
    if (st->notifier && !st->notifier->enabled()) st->notifier.reset();
  }

  asio::awaitable<void> body;
  try {
    body = st->tree->process_start();
  } catch (...) {
    return exit_code_for(std::current_exception(), root_name);
  }

  RunState* const s = st.get();  // handlers on the io_context: it is destroyed before *s
  if (st->notifier) {
    st->notifier_done = false;
    asio::co_spawn(asio::make_strand(*st->io.front()), st->notifier->run(),
                   [s, root_name](const std::exception_ptr& e) {
                     if (e) fail_beside(*s, root_name, "the systemd notifier", e);
                     std::lock_guard lock(s->mu);
                     s->notifier_done = true;
                     s->cv.notify_all();
                   });
  }
  asio::co_spawn(asio::make_strand(*st->io.front()), std::move(body), [s](const std::exception_ptr& e) {
    if (s->notifier) s->notifier->stop();
    std::lock_guard lock(s->mu);
    s->failure = e;
    s->tree_done = true;
    s->cv.notify_all();
  });

  if (watcher) {
    auto on_signal = [s, handle, root_name, first = 0](int sig) mutable {
      const bool stop = sig == SIGINT || sig == SIGTERM || sig == SIGQUIT;
      if (stop && first == 0) {
        first = sig;
        log_line(LogLevel::info, root_name, "received " + signal_name(sig) + ": shutting down gracefully");
        handle->request_shutdown();
      } else if (sig == SIGINT || sig == SIGTERM) {
        // Whatever holds the stop up (a service ignoring it, a coroutine
        // blocking its thread, a stuck executor), the process ends now.
        log_line(LogLevel::error, root_name,
                 "received " + signal_name(sig) + " again during the shutdown: exiting at once with code " +
                     std::to_string(128 + sig) + "; not stopped: " + still_running(s->manager, root_name));
        std::_Exit(128 + sig);
      } else if (stop) {
        log_line(LogLevel::info, root_name, "received " + signal_name(sig) + ": already shutting down");
      } else {
        log_line(LogLevel::info, root_name, "received " + signal_name(sig) + ": reloading");
        handle->request_reload();
      }
    };
    try {
      watcher->start(std::move(on_signal),
                     [s, root_name](const std::exception_ptr& e) { fail_beside(*s, root_name, "signal handling", e); });
    } catch (const std::exception& e) {
      // No thread: the tree's coroutine is never run, and goes with the io_context.
      log_line(LogLevel::error, root_name,
               std::string("signal handling could not start: ") + e.what() + "; not running the tree");
      return 1;
    }
  }

  // A shard other than the tree's may have nothing to do before the tree
  // places a child there: held until the io_contexts are stopped.
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> shard_work;
  for (std::size_t i = 1; i < st->io.size(); ++i) shard_work.emplace_back(st->io[i]->get_executor());
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (std::size_t i = 0; i < threads; ++i) {
    {
      std::lock_guard lock(st->mu);
      ++st->io_running;
    }
    asio::io_context& mine = *st->io[st->io.size() > 1 ? i : 0];
    pool.emplace_back([st, root_name, &mine] {
      for (;;) {
        try {
          mine.run();
          break;
        } catch (...) {
          // A handler threw out of the io_context: logged, the run fails,
          // and this thread goes on running the others.
          fail_beside(*st, root_name, "a handler on an io thread", std::current_exception());
        }
      }
      std::lock_guard lock(st->mu);
      --st->io_running;
      st->cv.notify_all();
    });
  }

  // The tree ends (or, which should not happen, every io thread returned
  // without it); then the notifier has until the abandon bound for its last
  // words, and the io threads as long to return once the io_context stops.
  std::unique_lock lock(st->mu);
  st->cv.wait(lock, [&st] { return st->tree_done || st->io_running == 0; });
  const auto deadline = std::chrono::steady_clock::now() + abandon_bound;
  st->cv.wait_until(lock, deadline, [&st] { return st->notifier_done || st->io_running == 0; });
  // The io threads first get to run out of work by themselves: a thread
  // outside them that is still inside a handle's control() holds counted
  // work (and the tree's objects) until it lets go, and stopping under it
  // would destroy the io_context first. What still holds work a moment
  // later (a service left behind, a timer a service left armed) is stopped.
  lock.unlock();
  shard_work.clear();
  lock.lock();
  const auto run_out_by = std::min(deadline, std::chrono::steady_clock::now() + run_out_grace);
  if (!st->cv.wait_until(lock, run_out_by, [&st] { return st->io_running == 0; })) {
    lock.unlock();
    for (auto& c : st->io) c->stop();
    lock.lock();
  }
  const bool all_returned = st->cv.wait_until(lock, std::max(deadline, std::chrono::steady_clock::now() + stop_grace),
                                              [&st] { return st->io_running == 0; });
  const std::size_t stuck = st->io_running;
  const bool tree_done = st->tree_done;
  const std::exception_ptr failure = st->failure;
  const bool beside_failed = st->beside_failed;
  lock.unlock();

  if (all_returned) {
    for (auto& t : pool) t.join();
  } else {
    // A service blocks an io thread (a blocking call in a coroutine). It
    // cannot be joined; it keeps the io_context and the tree alive, and
    // the process may end with it still blocked.
    log_line(LogLevel::error, root_name,
             std::to_string(stuck) +
                 " io thread(s) still blocked in a service after the tree ended (a blocking call "
                 "in a coroutine?); left behind");
    for (auto& t : pool) t.detach();
  }
  if (watcher) watcher->stop();
  watcher.reset();  // the signal mask as it was

  int code = 0;
  if (!tree_done) {
    log_line(LogLevel::error, root_name, "the io_context stopped before the tree ended");
    code = 1;
  } else {
    code = exit_code_for(failure, root_name);
  }
  if (beside_failed) code = 1;
  return code;
}

}  // namespace pm
