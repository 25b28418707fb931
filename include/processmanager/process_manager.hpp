// ProcessManager: runs child services concurrently and supervises them.
#pragma once

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <processmanager/context.hpp>
#include <processmanager/lifecycle.hpp>
#include <processmanager/restart_options.hpp>

namespace pm {

class ProcessManager;

namespace detail {
class ManagerCore;
class ManagerHandle;
struct CoreAccess;
}  // namespace detail

/// One child's failure.
struct Failure {
  std::string process_name;  ///< its path, "root/db/writer" when nested
  std::exception_ptr cause;  ///< what it threw
  std::string reason{};      ///< why it counts as failed, when not just "it threw" ("restart intensity exceeded ...")
  bool collateral = false;   ///< it failed after its manager had begun to stop (a consequence, not the cause)
};

/// The order in which a manager starts and stops its children.
enum class StartOrder {
  concurrent,  ///< all at once (the default)
  sequential,  ///< in insertion order, each once the previous is ready; stopped in reverse order
};

/// What a manager does when a child fails (Erlang/OTP's strategies).
enum class Strategy {
  stop_all,      ///< the first failure stops every child and fails the manager (the default)
  one_for_one,   ///< only the failed child is restarted
  one_for_all,   ///< every child is stopped (newest first) and all are restarted
  rest_for_one,  ///< the failed child and those inserted after it are stopped and restarted
};

/// Options for one child of a manager. The fields go what first, then
/// when (start, run, stop), the order designated initialisers must follow:
/// `ChildOptions{.restart = {{.policy = RestartPolicy::permanent}},
/// .start_timeout = 5s, .shutdown_timeout = 10s}`.
struct ChildOptions {
  /// How the child is restarted; the manager restarts it itself with this
  /// policy and backoff under every strategy. Under Strategy::stop_all its
  /// own max_restarts within its window limit it; under the other
  /// strategies the manager's intensity does. Default under a restarting
  /// strategy: RestartOptions{} (transient). Checked when given
  /// (pm::validate).
  std::optional<RestartOptions> restart{};
  /// Its normal end shuts the whole manager down (Erlang's significant child).
  bool significant = false;
  /// Only its own ready() call makes it ready, not merely having a ticker.
  bool explicit_ready = false;
  /// It must be ready this soon after it starts, or it fails the manager
  /// with "did not become ready within ...".
  std::optional<std::chrono::nanoseconds> start_timeout{};
  /// It must call heartbeat() (RuntimeGuard, RuntimeContext) at least this
  /// often while it runs (the clock starts when it starts); otherwise it is
  /// reported stale (ChildStatus::stale), which holds back the systemd
  /// watchdog and fails /livez. Staleness is reported, not acted on by the
  /// manager. Needs a handle that reports heartbeats (a guard's does).
  std::optional<std::chrono::nanoseconds> heartbeat_timeout{};
  /// How long shutdown waits for this child before cancelling it; replaces
  /// the manager's grace period for it.
  std::optional<std::chrono::nanoseconds> shutdown_timeout{};
  /// When the manager stops, it is told only once every other child has
  /// ended (or been abandoned); its shutdown_timeout, or the grace period,
  /// runs from then. For what reports on the stop of the rest (the systemd
  /// notifier, which sets it itself). A cancellation of the manager, and a
  /// restarting group's stop, reach it as they reach the others.
  bool stop_last = false;
  /// Its shard in a sharded run (RunOptions::sharded, shard_across), taken
  /// modulo the number of shards; unset, the manager deals its children
  /// out in turn. Without shards it changes nothing.
  std::optional<std::size_t> shard{};
};

/// A tree's health in a few numbers (ProcessManager::health()): what the
/// health probes and the systemd notifier need, at a cost that does not
/// grow with the number of services.
struct HealthSummary {
  ChildState state = ChildState::stopped;  ///< the manager's own state
  bool ready = false;                      ///< every child is ready (is_ready())
  /// Services in the books, in nested managers too; a running nested
  /// manager is not counted itself (its children are), one between runs
  /// (waiting for its restart, say) counts as one service, having no
  /// children to show.
  std::size_t services = 0;
  std::size_t running = 0;         ///< of them, running now (not waiting for a restart)
  std::size_t ready_services = 0;  ///< of them, ready
  std::size_t restarting = 0;      ///< of them, waiting for a restart
  /// Children (at any depth) whose heartbeat is older than their
  /// ChildOptions::heartbeat_timeout, as ChildStatus::stale says.
  std::size_t stale = 0;
  std::vector<std::string> stale_paths{};  ///< their paths, sorted; empty when `stale` is 0
};

/// What a failing manager throws once all its children have ended.
class ProcessError : public std::runtime_error {
 public:
  /// `failures` lists every failure, the first one first; when empty, it
  /// becomes the single failure {process_name, cause, reason}.
  ProcessError(std::string process_name, std::exception_ptr cause, std::vector<Failure> failures = {},
               std::string reason = {}, std::vector<std::string> not_stopped = {});
  /// The path of the child that failed first.
  const std::string& process_name() const noexcept { return failures_.front().process_name; }
  /// What it threw.
  std::exception_ptr cause() const noexcept { return failures_.front().cause; }
  /// Why it counts as failed when that is more than "it threw" (else empty).
  const std::string& reason() const noexcept { return failures_.front().reason; }
  /// Every failure, the first one first.
  const std::vector<Failure>& failures() const noexcept { return failures_; }
  /// The failure that started it all (failures().front()).
  const Failure& root_cause() const noexcept { return failures_.front(); }
  /// The failures that came after the stop had begun: consequences.
  std::vector<Failure> collateral() const;
  /// Paths of children that did not stop within their timeout and were
  /// cancelled or abandoned.
  const std::vector<std::string>& not_stopped() const noexcept { return not_stopped_; }

 private:
  std::vector<Failure> failures_;
  std::vector<std::string> not_stopped_;
};

/// What a blocking service's run ends with when its thread has not returned
/// by the time its manager cancels it: the thread is abandoned, never
/// joined, and this names it. A manager counts it as a child that did not
/// stop (ProcessError::not_stopped()), as it does a coroutine cancelled
/// after its grace period, not as a failure of its own.
class AbandonedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The text of an exception: what() for std::exception, else a placeholder.
/// A system error names its code ("cannot listen: Address already in use
/// [system:98]"); Boost.System's source location is kept only while debug
/// logging is on.
std::string describe(const std::exception_ptr& e);
/// A failure in words: "failed: <cause>", or "<reason>; last failure: <cause>".
std::string describe(const Failure& f);

/// Runs its children concurrently, each on its own strand of the executor
/// it runs on. The first child that throws makes it shut the others down
/// gracefully; process_start() then throws ProcessError once all ended.
/// A child that returns normally is done; the others go on. Shutdown asks
/// every child at once; a child still running after the grace period is
/// cancelled (terminal cancellation), and one that ignores even that is
/// abandoned after a further bound, so the manager never hangs on it.
/// Managers nest: control sent to a manager reaches its whole subtree.
class ProcessManager : public Runnable {
 public:
  /// A manager named "process-manager-<id>" with the default options.
  ProcessManager();
  ~ProcessManager() override;
  ProcessManager(const ProcessManager&) = delete;
  ProcessManager& operator=(const ProcessManager&) = delete;

  /// Adds a child to start with the manager. Throws std::logic_error while
  /// the manager runs (use add()), or when the child is a manager that is
  /// this one, one of its ancestors, or already in another tree;
  /// std::invalid_argument for a null child.
  void insert(std::shared_ptr<Runnable> child);
  /// insert() with options; throws std::invalid_argument for a negative
  /// timeout or nonsensical restart options, naming the child.
  void insert(std::shared_ptr<Runnable> child, ChildOptions options);
  /// Starts a child in the running manager at once, from any thread. During
  /// shutdown the child is started and asked to shut down straight away.
  /// Throws std::logic_error when the manager is not running,
  /// std::invalid_argument for a null child.
  void add(std::shared_ptr<Runnable> child);
  /// add() with options (a sequential manager starts an added child at once).
  void add(std::shared_ptr<Runnable> child, ChildOptions options);

  /// Completes with true once the manager runs and every child is ready,
  /// false if `timeout` passes first, once shutdown begins, or at once when
  /// the manager has run and stopped (neither will become ready). Before
  /// the first run it waits for the run. Completes on the caller's executor.
  /// Terminal cancellation ends the wait with operation_aborted.
  asio::awaitable<bool> wait_ready(std::chrono::nanoseconds timeout);
  /// True while the manager runs, is not stopping, and every child is ready.
  bool is_ready() const;

  /// wait_ready(timeout) for main() and tests: blocks the calling thread
  /// until it completes. Call it from a thread that does not run the
  /// manager's executor; from one that does (a child, a coroutine or a
  /// handler on the manager's io_context) it throws std::logic_error naming
  /// the manager, since blocking there could stall what it waits for.
  /// Before the manager's first run its executor is unknown and cannot be
  /// checked. What the wait throws is rethrown as it is.
  bool wait_ready_blocking(std::chrono::nanoseconds timeout);
  /// process_handle()->shutdown() for main() and tests: asks the manager to
  /// stop and blocks until its whole subtree has stopped (at once when it
  /// does not run). Same thread rule and errors as wait_ready_blocking().
  void shutdown_blocking();
  /// process_handle()->reload() for main() and tests: blocks until every
  /// service of the subtree has the reload. Same thread rule and errors as
  /// wait_ready_blocking().
  void reload_blocking();
  /// A snapshot of the manager and its subtree (nested managers included).
  /// It costs time and memory in proportion to the whole tree (every
  /// child is copied, with its full path): for a probe, use health().
  ChildStatus status() const;
  /// The tree's state, readiness, counts and stale heartbeats, without a
  /// snapshot: one lock per manager in the tree, whatever the number of
  /// services. Heartbeats are read only for children already found stale,
  /// and for all children with a heartbeat_timeout once the earliest of
  /// them could have run out (a heartbeat only ever moves its deadline
  /// later). The stale children are those status() would mark stale.
  HealthSummary health() const;

  /// Ends an observation when the last copy is dropped.
  using Observation = std::shared_ptr<void>;
  /// Calls `fn` with events about the manager itself, its path in `path`:
  /// each change of its own state (kind state: running, ready, stopping,
  /// stopped, failed; ready and running alternate as its readiness
  /// changes), and each reload or custom message sent to it while it runs
  /// (kind control, once every child has the message; what the children do
  /// about it may be reported first). In order, one at a time,
  /// never with a library lock held, from any thread; what it throws is
  /// dropped. The observation lasts while the returned token is kept (a
  /// call already under way may still finish after it is dropped). Throws
  /// std::invalid_argument for an empty function. Read the current state
  /// with status() after observing, so that no change falls in between.
  [[nodiscard]] Observation observe(EventHook fn);

  /// Runs every child until all have ended. Returns when every child ended
  /// (or was abandoned); throws ProcessError if any child failed. Throws
  /// std::logic_error if this manager is already running. Honours terminal
  /// cancellation by cancelling every child at once. Completes only after
  /// every event of the run has been handed to every hook and observer. A
  /// stop sent to an earlier run never reaches this one.
  asio::awaitable<void> process_start() override;
  std::string process_name() const override;
  /// The manager's handle: control reaches every child; shutdown() completes
  /// once the whole subtree has stopped. It does not keep the manager alive
  /// (a child may hold its own manager's handle without a cycle); once the
  /// manager is gone it does nothing.
  std::shared_ptr<ProcessControlHandler> process_handle() override;

  /// How long shutdown waits for children before cancelling them.
  std::chrono::nanoseconds shutdown_grace_period() const;
  /// How long, after terminal cancellation, before a child is abandoned.
  std::chrono::nanoseconds abandon_timeout() const;
  /// Whether finished children are dropped from the books at once.
  bool auto_cleanup() const;
  /// True while process_start() runs.
  bool is_running() const;
  /// Children in the books: the running ones, plus those that finished
  /// normally when auto_cleanup is off.
  std::size_t child_count() const;
  /// Children that are running now (not those waiting for a restart).
  std::size_t running_count() const;

 private:
  friend class ProcessManagerBuilder;
  friend struct detail::CoreAccess;  // the library's own readers of the core (the health server's /status)
  explicit ProcessManager(std::shared_ptr<detail::ManagerCore> core);
  void add_with(std::shared_ptr<Runnable> child, std::shared_ptr<const ChildOptions> options);
  /// Throws std::logic_error when this thread runs the executor of the
  /// manager's current run (`call` names the blocking call).
  void refuse_on_own_executor(const char* call) const;
  /// Refuses (std::logic_error, naming both) a child manager that is this
  /// one, one of its ancestors, or already in another tree; else records
  /// this manager as its owner.
  void adopt(Runnable& child) const;
  std::shared_ptr<detail::ManagerCore> core_;
  std::shared_ptr<detail::ManagerHandle> handle_;
};

/// Makes a child that needs the manager it goes into (a HealthServer, say);
/// ProcessManagerBuilder::pre_insert_with() calls it from build().
using ChildFactory = std::function<std::shared_ptr<Runnable>(const std::shared_ptr<ProcessManager>&)>;

/// Configures and builds a ProcessManager.
class ProcessManagerBuilder {
 public:
  ProcessManagerBuilder();
  /// The manager's name (the first element of its children's paths).
  ProcessManagerBuilder& name(std::string name);
  /// How long shutdown waits before cancelling children. Default 30 s.
  ProcessManagerBuilder& shutdown_grace_period(std::chrono::nanoseconds grace);
  /// How long after terminal cancellation a child is abandoned. Default 5 s.
  ProcessManagerBuilder& abandon_timeout(std::chrono::nanoseconds timeout);
  /// Drop finished children from the books at once. Default true.
  ProcessManagerBuilder& auto_cleanup(bool on);
  /// A child to start with the manager. Throws std::invalid_argument if null.
  ProcessManagerBuilder& pre_insert(std::shared_ptr<Runnable> child);
  /// pre_insert() with options (see ProcessManager::insert).
  ProcessManagerBuilder& pre_insert(std::shared_ptr<Runnable> child, ChildOptions options);
  /// A child made by `make` from the built manager, in build(), in its
  /// place among the pre_insert()ed children (start order). Throws
  /// std::invalid_argument for an empty factory here, and from build()
  /// when it returns null; what it throws, build() throws.
  ProcessManagerBuilder& pre_insert_with(ChildFactory make);
  /// pre_insert_with() with options, checked once the child exists.
  ProcessManagerBuilder& pre_insert_with(ChildFactory make, ChildOptions options);
  /// Concurrent (default) or sequential start and stop.
  ProcessManagerBuilder& start_order(StartOrder order);
  /// Receives every event of this manager and its subtree, in order.
  ProcessManagerBuilder& on_event(EventHook hook);
  /// What a child's failure does. Default Strategy::stop_all.
  ProcessManagerBuilder& strategy(Strategy strategy);
  /// More than `max_restarts` restarts within `window` fails the manager
  /// ("restart intensity exceeded"), which escalates to its parent.
  /// Default 3 within 5 s. Throws std::invalid_argument for a zero window.
  ProcessManagerBuilder& intensity(std::size_t max_restarts, std::chrono::nanoseconds window);
  /// The manager.
  std::shared_ptr<ProcessManager> build();

 private:
  std::string name_;
  std::chrono::nanoseconds grace_;
  std::chrono::nanoseconds abandon_;
  bool auto_cleanup_ = true;
  StartOrder order_ = StartOrder::concurrent;
  Strategy strategy_ = Strategy::stop_all;
  std::size_t max_restarts_ = 3;
  std::chrono::nanoseconds window_ = std::chrono::seconds(5);
  EventHook hook_;
  ProcessManagerBuilder& plan_factory(ChildFactory make, std::optional<ChildOptions> options);
  /// A child given to pre_insert(), or one to make in build().
  struct Planned {
    std::shared_ptr<Runnable> child;
    std::shared_ptr<const ChildOptions> options;
    ChildFactory make;
    std::optional<ChildOptions> make_options;  // checked once made
  };
  std::vector<Planned> children_;
};

}  // namespace pm
