// Helpers for the lifecycle and supervision tests: a scriptable service that
// journals what happens to it, a recorder of manager events that tests can
// wait on, and a manager running on background io threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace pm::test {

/// An ordered, thread-safe list of lines ("start db", "stop db", ...).
class Journal {
 public:
  void add(std::string line) {
    std::lock_guard lock(mu_);
    lines_.push_back(std::move(line));
    cv_.notify_all();
  }
  std::vector<std::string> lines() const {
    std::lock_guard lock(mu_);
    return lines_;
  }
  /// The lines that start with `prefix`, in order.
  std::vector<std::string> with_prefix(const std::string& prefix) const {
    std::vector<std::string> out;
    for (const auto& l : lines()) {
      if (l.rfind(prefix, 0) == 0) out.push_back(l);
    }
    return out;
  }
  std::size_t count(const std::string& line) const {
    std::size_t n = 0;
    for (const auto& l : lines()) n += l == line ? 1 : 0;
    return n;
  }
  /// Waits until `line` has been added `times` times.
  bool wait_for(const std::string& line, std::size_t times = 1) const { return wait_for(line, times, hang_guard); }
  /// The same within `within`: for a test that shows something does not
  /// happen while the test holds it back.
  template <class Rep, class Period>
  bool wait_for(const std::string& line, std::size_t times, std::chrono::duration<Rep, Period> within) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, within, [&] {
      std::size_t n = 0;
      for (const auto& l : lines_) n += l == line ? 1 : 0;
      return n >= times;
    });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<std::string> lines_;
};

/// What a Probe does.
struct Behaviour {
  bool defer_ready = false;        ///< ready only on custom(1)
  int fail_first_runs = 0;         ///< the first runs throw as soon as they have their ticker
  bool end_at_once = false;        ///< returns as soon as it has its ticker
  bool throw_on_shutdown = false;  ///< a shutdown makes it throw (a collateral failure)
  bool ignore_shutdown = false;    ///< keeps running on shutdown (until cancelled)
};

/// Sends custom(code) to a runnable (Probe: 1 ready, 2 throw, 3 end).
inline void send(const std::shared_ptr<Runnable>& r, int code) {
  r->process_handle()->control(RuntimeControlMessage::custom(code));
}

/// A coroutine service that journals "start N", "ready N", "stop N",
/// "fail N", "end N" and obeys custom(1) (become ready), custom(2) (throw)
/// and custom(3) (end normally).
class Probe : public Runnable {
 public:
  Probe(std::string name, std::shared_ptr<Journal> journal, Behaviour b = {})
      : name_(std::move(name)), journal_(std::move(journal)), b_(b), guard_(name_) {}

  asio::awaitable<void> process_start() override {
    const int run = ++runs;
    journal_->add("start " + name_);
    if (b_.defer_ready) guard_.defer_readiness();
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    if (run <= b_.fail_first_runs) {
      journal_->add("fail " + name_);
      throw std::runtime_error(name_ + " failed on run " + std::to_string(run));
    }
    if (b_.end_at_once) {
      journal_->add("end " + name_);
      co_return;
    }
    for (;;) {
      timer.expires_after(std::chrono::hours(1));
      auto wait = timer.async_wait(asio::deferred);
      auto op = co_await ticker.tick(wait);
      if (op.is_next()) continue;
      const auto& msg = op.control();
      if (const int* code = msg.custom_if<int>()) {
        if (*code == 1) {
          journal_->add("ready " + name_);
          try {
            guard_.ready();
          } catch (const std::logic_error&) {
            // Ready since its ticker already (no defer_readiness, no
            // explicit_ready): the call is a mistake the guard reports.
          }
        } else if (*code == 2) {
          journal_->add("fail " + name_);
          throw std::runtime_error(name_ + " was told to fail");
        } else if (*code == 3) {
          journal_->add("end " + name_);
          co_return;
        }
      } else if (msg.is_shutdown()) {
        journal_->add("stop " + name_);
        if (b_.throw_on_shutdown) throw std::runtime_error(name_ + " threw while stopping");
        if (!b_.ignore_shutdown) co_return;
      }
    }
  }
  std::string process_name() const override { return name_; }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return guard_.handle(); }

  std::atomic<int> runs{0};

 private:
  std::string name_;
  std::shared_ptr<Journal> journal_;
  Behaviour b_;
  RuntimeGuard guard_;
};

// A guard's handle whose heartbeat the test sets.
class BeatHandle final : public ProcessControlHandler {
 public:
  explicit BeatHandle(std::shared_ptr<ProcessControlHandler> inner) : inner_(std::move(inner)) {}
  void control(RuntimeControlMessage msg) override { inner_->control(std::move(msg)); }
  bool watch_readiness(std::function<void(bool)> fn) override { return inner_->watch_readiness(std::move(fn)); }
  std::optional<std::chrono::steady_clock::time_point> last_heartbeat() const override {
    std::lock_guard lock(mu_);
    return beat_;
  }
  void set(std::chrono::steady_clock::time_point t) {
    std::lock_guard lock(mu_);
    beat_ = t;
  }

 private:
  std::shared_ptr<ProcessControlHandler> inner_;
  mutable std::mutex mu_;
  std::optional<std::chrono::steady_clock::time_point> beat_;
};

class Beating : public Runnable {
 public:
  Beating(std::string name, std::shared_ptr<Journal> j)
      : probe_(std::move(name), std::move(j)), handle_(std::make_shared<BeatHandle>(probe_.process_handle())) {}
  asio::awaitable<void> process_start() override { return probe_.process_start(); }
  std::string process_name() const override { return probe_.process_name(); }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return handle_; }
  BeatHandle& beats() { return *handle_; }

 private:
  Probe probe_;
  std::shared_ptr<BeatHandle> handle_;
};

/// A service whose handle counts every read of its heartbeat (how often
/// the manager or a probe looks) and passes the rest to its guard's handle.
class Counted final : public Runnable {
 public:
  class Handle final : public ProcessControlHandler {
   public:
    Handle(std::shared_ptr<ProcessControlHandler> inner, std::atomic<int>& reads)
        : inner_(std::move(inner)), reads_(reads) {}
    void control(RuntimeControlMessage msg) override { inner_->control(std::move(msg)); }
    bool watch_readiness(std::function<void(bool)> fn) override { return inner_->watch_readiness(std::move(fn)); }
    std::optional<std::chrono::steady_clock::time_point> last_heartbeat() const override {
      reads_.fetch_add(1);
      return inner_->last_heartbeat();
    }

   private:
    std::shared_ptr<ProcessControlHandler> inner_;
    std::atomic<int>& reads_;
  };

  /// `reads` counts for every service given it; it must outlive them.
  explicit Counted(std::atomic<int>& reads, std::string name = "counted")
      : probe_(std::move(name), std::make_shared<Journal>()),
        handle_(std::make_shared<Handle>(probe_.process_handle(), reads)) {}
  asio::awaitable<void> process_start() override { return probe_.process_start(); }
  std::string process_name() const override { return probe_.process_name(); }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return handle_; }

 private:
  Probe probe_;
  std::shared_ptr<Handle> handle_;
};

/// Records a manager's events; tests wait for a matching one.
class EventRecorder {
 public:
  EventHook hook() {
    return [this](const pm::Event& e) {
      std::lock_guard lock(mu_);
      events_.push_back(e);
      cv_.notify_all();
    };
  }
  std::vector<pm::Event> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }
  /// Waits until an event satisfies `pred`.
  bool wait_for(const std::function<bool(const pm::Event&)>& pred) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, hang_guard, [&] {
      for (const auto& e : events_) {
        if (pred(e)) return true;
      }
      return false;
    });
  }
  /// "state:running", "restart", ... for the events about `path`, in order.
  std::vector<std::string> story(const std::string& path) const {
    std::vector<std::string> out;
    for (const auto& e : events()) {
      if (e.path != path) continue;
      if (e.kind == EventKind::state) {
        out.push_back("state:" + std::string(to_string(e.state.value())));
      } else {
        out.push_back(std::string(to_string(e.kind)));
      }
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<pm::Event> events_;
};

/// A manager running on `threads` io threads in the background; the test
/// thread drives it through handles and waits on journals and events.
class Running {
 public:
  explicit Running(std::shared_ptr<ProcessManager> manager, std::size_t threads = 2)
      : io_(static_cast<int>(threads)), strand_(asio::make_strand(io_)), manager_(std::move(manager)) {
    asio::co_spawn(strand_, manager_->process_start(), [this](std::exception_ptr e) {
      error_ = e;
      done_.set();
    });
    runner_ = std::thread([this, threads] { run_io(io_, threads); });
  }
  Running(const Running&) = delete;
  Running& operator=(const Running&) = delete;
  ~Running() {
    if (runner_.joinable()) {
      auto h = manager_->process_handle();
      h->request_shutdown();
      runner_.join();
    }
  }
  /// wait_ready(timeout) on the manager, from this thread, once its run has
  /// begun: a manager that ran before answers false at once between runs,
  /// and the run's start is queued on the strand this wait is queued on
  /// after it, so the wait cannot overtake it.
  bool wait_ready(std::chrono::nanoseconds timeout = hang_guard) {
    return asio::co_spawn(strand_, manager_->wait_ready(timeout), asio::use_future).get();
  }
  void stop() {
    auto h = manager_->process_handle();
    h->request_shutdown();
  }
  /// Waits for process_start() to end; returns what it threw.
  std::exception_ptr finish() {
    EXPECT_TRUE(done_.wait()) << "the manager did not finish";
    if (runner_.joinable()) runner_.join();
    return error_;
  }
  asio::io_context& io() { return io_; }

 private:
  asio::io_context io_;
  asio::strand<asio::io_context::executor_type> strand_;
  std::shared_ptr<ProcessManager> manager_;
  std::exception_ptr error_;
  Event done_;
  std::thread runner_;
};

/// The ProcessError in `e`; fails the test when it holds something else.
inline std::optional<ProcessError> process_error(const std::exception_ptr& e) {
  if (!e) {
    ADD_FAILURE() << "expected a ProcessError, got success";
    return std::nullopt;
  }
  try {
    std::rethrow_exception(e);
  } catch (const ProcessError& pe) {
    return pe;
  } catch (const std::exception& other) {
    ADD_FAILURE() << "expected a ProcessError, got: " << other.what();
  }
  return std::nullopt;
}

/// RestartOptions whose restarts happen at once (no backoff).
inline RestartOptions no_backoff(RestartPolicy policy = RestartPolicy::transient) {
  RestartOptions o;
  o.policy = policy;
  o.backoff = {
      .initial = std::chrono::nanoseconds(0), .factor = 1.0, .max = std::chrono::nanoseconds(0), .jitter = false};
  return o;
}

/// What the lifecycle tests name unqualified: `using namespace pm::test::lifecycle;`.
namespace lifecycle {
using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ChildOptions;
using pm::ChildState;
using pm::EventKind;
using pm::ProcessManagerBuilder;
using pm::RestartOptions;
using pm::RestartPolicy;
using pm::StartOrder;
using pm::Strategy;
using pm::test::Beating;
using pm::test::Behaviour;
using pm::test::EventRecorder;
using pm::test::Journal;
using pm::test::no_backoff;
using pm::test::Probe;
using pm::test::process_error;
using pm::test::Running;
using pm::test::send;
}  // namespace lifecycle

}  // namespace pm::test
