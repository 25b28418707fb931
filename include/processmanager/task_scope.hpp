// TaskScope: the sub-tasks a service owns (one coroutine per connection, per
// in-flight message), closed and drained within a deadline on shutdown.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <processmanager/runnable.hpp>

namespace pm {

namespace asio = boost::asio;

namespace detail {
struct TaskScopeState;  // shared with the sub-tasks, which may outlive the scope
}

/// Thrown by TaskScope::spawn once the scope is closed; the message names
/// the scope and the task refused.
class ScopeClosed : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// What a sub-task's exception does to the scope.
enum class TaskErrors {
  /// Logged (warn), counted in failed() and kept (errors()); the other
  /// sub-tasks and the service go on. For one bad connection among many.
  collect,
  /// As collect, and the first failure also closes the scope, cancels the
  /// other sub-tasks (terminal), asks `TaskScopeOptions::owner` to shut
  /// down, and makes drain() throw that failure once every sub-task has
  /// ended: the service fails with its sub-task's error, and its
  /// supervisor restarts it or stops the tree as its options say.
  fail_owner,
};

/// How a TaskScope names itself and treats failures.
struct TaskScopeOptions {
  std::string name = "tasks";                 ///< in errors and log lines: "api/connections"
  TaskErrors on_error = TaskErrors::collect;  ///< what a sub-task's exception does
  /// Told to shut down on the first failure under fail_owner (the service's
  /// own handle, RuntimeGuard::handle()); may be null.
  std::shared_ptr<ProcessControlHandler> owner{};
  std::size_t keep_errors = 16;  ///< failures kept for errors() and the drain report; later ones are only counted
};

/// One failed sub-task.
struct TaskFailure {
  std::string name;          ///< as given to spawn(), or "#<n>" (its spawn number) when none was
  std::exception_ptr error;  ///< what it threw
};

/// What drain() found.
struct DrainReport {
  /// Sub-tasks that ended without being cancelled by this drain (failed
  /// ones included), since the scope was made or the previous drain: with
  /// one drain at a time, finished + cancelled.size() is every sub-task
  /// spawned since then (an abandoned one counts in a later report again,
  /// should it end).
  std::size_t finished = 0;
  std::vector<std::string> cancelled{};  ///< still running at the grace period: sent terminal cancellation
  std::vector<std::string> abandoned{};  ///< of those, still running after the abandon period: left behind
  std::vector<TaskFailure> failures{};   ///< failures not reported before (at most keep_errors)
  std::size_t failures_dropped = 0;      ///< failures beyond keep_errors, counted only
  /// Nothing was cancelled and nothing failed.
  bool clean() const noexcept { return cancelled.empty() && failures.empty() && failures_dropped == 0; }
};

/// A set of sub-tasks owned by one service. spawn() starts a coroutine in
/// the scope; close() refuses new ones; drain() waits for the running ones
/// within a grace period, then cancels the rest with terminal cancellation
/// and reports which. Every member may be called from any thread.
///
/// Each sub-task runs serially (its handlers one at a time): on the given
/// executor when it is a strand or an io_context run by one thread, on a new
/// strand of it otherwise, because cancellation is delivered through the
/// sub-task's executor.
///
/// Destroying a scope closes it and cancels what still runs, without
/// waiting: drain() first to know how it ended.
class TaskScope {
 public:
  /// Sub-tasks spawned without an executor run on `ex` (the service's own,
  /// `co_await asio::this_coro::executor`). An empty executor throws
  /// std::invalid_argument naming the scope, as spawn(ex, ...) does.
  explicit TaskScope(asio::any_io_executor ex, TaskScopeOptions options = {});
  ~TaskScope();
  TaskScope(const TaskScope&) = delete;
  TaskScope& operator=(const TaskScope&) = delete;
  TaskScope(TaskScope&&) = delete;
  TaskScope& operator=(TaskScope&&) = delete;

  /// Starts `task` on the scope's executor. Throws ScopeClosed after
  /// close() or a drain began; the task is then destroyed unrun.
  void spawn(asio::awaitable<void> task, std::string name = {});
  /// Starts `task` on `ex` (see the class comment for how it is serialised).
  void spawn(const asio::any_io_executor& ex, asio::awaitable<void> task, std::string name = {});

  /// Refuses further spawns. Running sub-tasks go on. Idempotent.
  void close() noexcept;
  /// Sends terminal cancellation to every running sub-task now and closes
  /// the scope; does not wait.
  void cancel() noexcept;

  /// Closes the scope (at the call, before the awaitable first runs), then
  /// waits until every sub-task has ended or `grace` has
  /// passed, then cancels the rest (terminal) and waits up to `abandon` for
  /// them; a sub-task that ignores cancellation is reported as abandoned and
  /// left behind. grace and abandon may be zero or nanoseconds::max().
  /// Under TaskErrors::fail_owner, throws the first failure once the drain
  /// is over; every failure stays in errors(). Cancelling the drain itself cancels every sub-task, and
  /// throws operation_aborted.
  asio::awaitable<DrainReport> drain(std::chrono::nanoseconds grace,
                                     std::chrono::nanoseconds abandon = std::chrono::seconds(1));

  std::size_t running() const noexcept;    ///< sub-tasks started and not ended
  std::uint64_t spawned() const noexcept;  ///< sub-tasks ever started
  std::uint64_t failed() const noexcept;   ///< sub-tasks that ended by throwing
  bool closed() const noexcept;            ///< close(), cancel() or drain() was called, or fail_owner tripped
  /// The failures kept so far that no drain has reported (at most keep_errors).
  std::vector<TaskFailure> errors() const;
  /// The scope's name.
  const std::string& name() const noexcept;

 private:
  void launch(asio::any_io_executor ex, asio::awaitable<void> task, std::string name);

  std::shared_ptr<detail::TaskScopeState> state_;
};

}  // namespace pm
