// RestartSupervisor: restarts one child with backoff, within an intensity limit.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include <processmanager/process_manager.hpp>
#include <processmanager/restart_options.hpp>

namespace pm {

/// Wraps one child and restarts it per its policy, waiting a backoff between
/// runs. Gives up, failing with a ProcessError that names the child, says
/// "restart intensity exceeded" and carries the last cause, when restarts
/// come faster than the limit. Shutdown stops a running child or a pending
/// backoff at once; reload and custom messages go to the child. Restarts
/// and the give-up are counted and logged. Its name is its child's.
class RestartSupervisor : public Runnable {
 public:
  /// Throws std::invalid_argument for a null child or nonsensical options.
  explicit RestartSupervisor(std::shared_ptr<Runnable> child, RestartOptions options = {});
  ~RestartSupervisor() override;

  /// Runs the child until the policy says stop. Returns when the child ended
  /// and is not to be restarted, or on shutdown; throws the child's failure
  /// (temporary policy), or ProcessError when the intensity is exceeded.
  asio::awaitable<void> process_start() override;
  std::string process_name() const override;
  std::shared_ptr<ProcessControlHandler> process_handle() override;

  /// How many times the child has been restarted.
  std::size_t restarts() const noexcept;
  /// The backoff chosen before the latest restart.
  std::chrono::nanoseconds last_backoff() const noexcept;
  /// Hears this supervisor's restarts and its give-up as a manager's
  /// on_event() hook would: an EventKind::restart event (path: its name;
  /// `cause`: the failure, null after a normal end; `backoff`; `restart`:
  /// its number, from 1; `detail`:
  /// "failed" or "ended; permanent") before each backoff wait (restarts()
  /// already counts it), and an EventKind::give_up
  /// event (`cause`, `detail`: the reason) before process_start() throws.
  /// Called on the supervisor's executor, never under a lock, before
  /// process_start() goes on: every event of a run is delivered before
  /// the run completes. What it throws is dropped. Any thread; a run
  /// that is under way reads the new hook at its next event.
  void on_event(EventHook hook);

  /// The class's state, shared with its handle.
  struct State;

 private:
  std::shared_ptr<Runnable> child_;
  RestartOptions options_;
  std::shared_ptr<State> state_;
};

}  // namespace pm
