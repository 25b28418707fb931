// The state a RuntimeGuard shares with its ticker and its handle.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/version.hpp>
#include <processmanager/detail/compact_mutex.hpp>
#include <processmanager/runnable.hpp>

static_assert(BOOST_ASIO_VERSION >= 102400 && BOOST_ASIO_VERSION < 103200,
              "processmanager reads asio::cancellation_state's signal (see detail/guard_state.hpp); "
              "check that its layout is unchanged before widening this range");

namespace pm::detail {

/// The signal that a coroutine's cancellation state relays to the operation
/// it is awaiting, or nullptr when the coroutine has no parent slot.
///
/// Why: a tick must cancel the work it races, and that work may be an
/// awaitable<T> whose inner operations are connected to this very signal.
/// Emitting on it directly reaches them without a co_spawn per tick (three
/// scheduler round trips) and without marking the state as cancelled (which
/// would make every later co_await throw). Asio keeps the pointer private;
/// the explicit instantiation below is the standard-sanctioned way to name a
/// private member, and the static_assert above pins the Asio versions whose
/// layout was checked.
asio::cancellation_signal* relay_signal_of(const asio::cancellation_state& state) noexcept;

/// When a service last said it is alive: one relaxed store to beat, one
/// load to read; shared by the guard's and the blocking service's handles.
class Heartbeat {
 public:
  void beat() noexcept {
    ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  }
  /// nullopt until the first beat.
  std::optional<std::chrono::steady_clock::time_point> last() const noexcept {
    const auto ns = ns_.load(std::memory_order_relaxed);
    if (ns == 0) return std::nullopt;
    return std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(ns));
  }

 private:
  std::atomic<std::chrono::steady_clock::rep> ns_{0};
};

/// Someone told when a service becomes ready (a supervisor's record of its
/// child). Held weakly by the guard: the watcher may go first.
class ReadinessTarget {
 public:
  virtual void on_ready(bool declared) = 0;
  /// It stopped being ready (a nested manager restarting a child, say).
  virtual void on_unready() {}
  /// It runs (has its ticker) but holds its readiness back until it says so.
  virtual void on_running() {}
  /// True when only a declared ready() counts, not having a ticker
  /// (ChildOptions::explicit_ready): lets a service tell a ready() call that
  /// takes effect from one that cannot.
  virtual bool needs_declared_ready() const { return false; }

 protected:
  ~ReadinessTarget() = default;
};

/// A handle that reports readiness to a target held weakly (no function
/// object per child): a guard's, a RestartSupervisor's.
class ReadinessSource {
 public:
  virtual void watch_target(std::weak_ptr<ReadinessTarget> target) = 0;

 protected:
  ~ReadinessSource() = default;
};

/// A service that must stop after the rest of its manager's children (the
/// systemd notifier): inserting or adding it sets ChildOptions::stop_last,
/// whatever options come with it.
class StopsLast {
 protected:
  ~StopsLast() = default;
};

/// A handle whose unread shutdown belongs to the run it was sent to. A
/// supervisor calls forget_shutdown() before it starts the service again,
/// so that a stop meant for the run that ended never reaches the next one.
class RunScoped {
 public:
  virtual void forget_shutdown() = 0;

 protected:
  ~RunScoped() = default;
};

/// A handle that supervises another service's handle (RestartSupervisor):
/// what a manager looks through for status and restart counts, so that the
/// core needs no built-in's header.
class Supervising {
 public:
  /// The handle of the supervised service's current run, or null between runs.
  virtual std::shared_ptr<ProcessControlHandler> supervised_handle() const = 0;
  /// Restarts made so far.
  virtual std::size_t supervised_restarts() const noexcept = 0;
  /// Runs that failed and were restarted (a failure it gives up on, or
  /// passes on, is its own manager's to count).
  virtual std::size_t supervised_failures() const noexcept { return 0; }
  /// The supervised runnable (for good, not only during a run), or null
  /// once it is gone: what inserting the supervisor looks through, so that
  /// a manager inside belongs to one tree.
  virtual std::shared_ptr<Runnable> supervised_runnable() const = 0;

 protected:
  ~Supervising() = default;
};

/// The cancellation types a control message emits: every type, so that any
/// operation that supports some form of cancellation gives way.
inline constexpr asio::cancellation_type_t control_cancellation =
    asio::cancellation_type::terminal | asio::cancellation_type::partial | asio::cancellation_type::total;

/// True when `e` holds the error Asio reports for a cancelled operation.
bool is_operation_aborted(const std::exception_ptr& e) noexcept;

class GuardState;

/// The wake-ups of a manager's fan-out (one message to many services),
/// gathered so that the services on one io_context are woken by one
/// handler posted there, not by one post each: a post to another thread's
/// io_context costs a lock and, while that thread sleeps, a wake-up call,
/// and a sharded run's fan-out crosses shards. Only wake-ups for a plain
/// io_context executor are gathered; one for a strand is posted at once,
/// as control() posts it. Whatever is gathered is posted by post(), or by
/// the destructor.
class WakeBatch {
 public:
  WakeBatch() = default;
  WakeBatch(const WakeBatch&) = delete;
  WakeBatch& operator=(const WakeBatch&) = delete;
  ~WakeBatch() { post(); }
  /// Posts one handler per io_context that wakes its services in order.
  void post() noexcept;

 private:
  friend class GuardState;
  struct Group {
    asio::io_context::executor_type ex;
    std::vector<std::pair<std::shared_ptr<GuardState>, std::uint64_t>> wakes;  // guard, generation
  };
  std::vector<Group> groups_;  // as many as io_contexts: a handful
};

/// Shared by a RuntimeGuard, its live RuntimeTicker and every copy of its
/// handle (it *is* the handle, to spend one allocation per service).
///
/// Two halves: the inbox and the ticker's executor are guarded by `mu_`
/// (control() comes from any thread); `waiting_`, `emitted_` and `own_` are
/// touched only on the ticker's executor, which must be a strand or
/// single-threaded (ProcessManager runs each child on its own strand).
class GuardState final : public ProcessControlHandler,
                         public ReadinessSource,
                         public RunScoped,
                         public std::enable_shared_from_this<GuardState> {
 public:
  explicit GuardState(std::string name) : name_(std::move(name)) {}

  void control(RuntimeControlMessage msg) override;
  /// control(), but a wake-up due for a service on a plain io_context
  /// executor is left to `batch` (see WakeBatch); the message itself is in
  /// the inbox, in order, when this returns.
  void control_into(RuntimeControlMessage msg, WakeBatch& batch);
  bool watch_readiness(std::function<void(bool)> on_ready) override;
  /// watch_readiness without a function object: what a manager uses.
  void watch_target(std::weak_ptr<ReadinessTarget> target) override;
  /// Drops unread shutdown messages (see RunScoped).
  void forget_shutdown() override;

  /// The service says it is ready.
  void declare_ready();
  /// Whether a ready() now would change nothing: the ticker made the
  /// service ready already, and its supervisor does not wait for a
  /// declared one.
  bool ready_is_moot() const;
  /// The ticker alone no longer makes the service ready.
  void defer_readiness();
  /// Reports the readiness that comes without a ready() call (a lambda
  /// service's body has started): counted unless the watcher needs a
  /// declared one.
  void report_implicit_ready() { notify_ready(false); }
  /// Whether the current watcher counts only a declared ready().
  bool watcher_needs_declared_ready() const;
  /// The service says it is alive: one relaxed store, any thread.
  void beat() noexcept { heartbeat_.beat(); }
  std::optional<std::chrono::steady_clock::time_point> last_heartbeat() const override { return heartbeat_.last(); }

  /// Registers the live ticker; throws std::logic_error if one is alive.
  void attach(const asio::any_io_executor& ex);
  /// Ends "running"; later messages stay in the inbox for the next ticker.
  void detach() noexcept;
  bool is_running() const noexcept { return alive_.load(std::memory_order_acquire); }

  /// A cheap check, on the hot path of every tick.
  bool has_pending() const noexcept { return pending_.load(std::memory_order_acquire) != 0; }
  /// Pops the oldest message; call only when has_pending().
  RuntimeControlMessage take();

  /// A tick is about to await work that `sig` can cancel.
  void begin_wait(asio::cancellation_signal* sig) noexcept {
    waiting_ = sig;
    emitted_ = false;
  }
  /// The work completed; returns true if a control message cancelled it.
  /// Ends the wait. Where the work was bound to the guard's own signal (a
  /// caller without a slot), its handler goes too: Asio clears a relay slot
  /// after each completion, and nothing would clear this one, which would
  /// keep the finished operation's handler (pointing into its I/O object,
  /// or holding an executor) until a later wake-up called it.
  bool end_wait() noexcept {
    if (waiting_ == &own_) own_.slot().clear();
    waiting_ = nullptr;
    return emitted_;
  }
  asio::cancellation_signal& own_signal() noexcept { return own_; }

  const std::string& name() const noexcept { return name_; }

  /// Runs a wake-up posted for ticker `generation`, on its executor.
  void wake(std::uint64_t generation) noexcept;
  /// A batched wake-up could not be posted: the next message posts one.
  void unmark_wake(std::uint64_t generation) noexcept;

 private:
  void notify_ready(bool declared);
  /// Queues `msg`; returns true when a wake-up is due (and marks it posted).
  /// Under mu_.
  bool enqueue(RuntimeControlMessage msg);

  const std::string name_;
  Heartbeat heartbeat_;

  // Guarded by mu_ (control() comes from any thread), except the atomics.
  // A FIFO: the oldest message inline, the rest in a vector read from
  // index head_. The inline slot spares the allocation in the common case
  // of one message at a time (a shutdown fanned out to N services), and
  // unlike std::deque (which allocates a block up front in libstdc++) the
  // vector costs nothing until a second message waits.
  RuntimeControlMessage first_;
  std::vector<RuntimeControlMessage> inbox_;
  asio::any_io_executor ex_;
  std::weak_ptr<ReadinessTarget> watcher_;
  std::shared_ptr<ReadinessTarget> owned_watcher_;  // a watch_readiness() function, kept here
  std::uint64_t generation_ = 0;

  // Touched only on the ticker's executor.
  asio::cancellation_signal* waiting_ = nullptr;
  asio::cancellation_signal own_;

  // The small fields of both halves side by side: one guard per service,
  // so each word here is 800 kB at 100k (docs/performance.md). Counts are
  // 32-bit: 2^32 waiting messages would take 128 GB.
  mutable CompactMutex mu_;
  std::atomic<std::uint32_t> pending_{0};
  std::uint32_t head_ = 0;  // mu_
  // Bit-fields only for fields under mu_: a bit-field shares its memory
  // location with its neighbours in the same run, so none of these may be
  // written by a thread that does not hold the lock.
  bool has_first_ : 1 = false;    // mu_
  bool wake_posted_ : 1 = false;  // mu_
  bool defer_ready_ : 1 = false;  // mu_
  std::atomic<bool> alive_{false};
  bool emitted_ = false;  // the ticker's executor
};

}  // namespace pm::detail
