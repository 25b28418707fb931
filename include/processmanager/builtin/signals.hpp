// SignalReceiver: turns POSIX signals into control messages for a tree.
#pragma once

#include <atomic>
#include <csignal>
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include <processmanager/runtime_guard.hpp>

namespace pm {

/// What a SignalReceiver watches and what it does beyond control messages.
struct SignalReceiverOptions {
  std::vector<int> stop_signals{SIGINT, SIGTERM, SIGQUIT};  ///< first one: graceful shutdown of the tree
  std::vector<int> reload_signals{SIGHUP};                  ///< each one: reload broadcast to the tree
  /// Called (on the receiver's strand) for a second SIGINT or SIGTERM while
  /// the stop is under way: the place to cancel the tree at once. Without
  /// it the second signal is only logged. (pm::run handles its signals on a
  /// thread of its own, not with a SignalReceiver.)
  std::function<void(int)> escalate;
};

/// Watches signals with asio::signal_set: the first stop signal asks the
/// tree to shut down gracefully (a requested stop is not a failure), a
/// second SIGINT/SIGTERM during the stop escalates, and a reload signal
/// broadcasts reload. Which signal stopped the tree is logged and readable.
///
/// In a tree, give it the tree's handle (a manager's handle does not keep
/// the manager alive, so there is no cycle); it ends on its own shutdown.
/// Its handling runs on its executor: a service that blocks that executor
/// blocks the signals too. Under pm::run, which handles SIGINT, SIGTERM,
/// SIGQUIT and SIGHUP itself, a receiver sees none of those four.
class SignalReceiver : public Runnable {
 public:
  /// A receiver that controls `tree`. Throws std::invalid_argument if null.
  explicit SignalReceiver(std::shared_ptr<ProcessControlHandler> tree, SignalReceiverOptions options = {});
  ~SignalReceiver() override;
  /// Installs the signal handlers now, on `ex`, so that a signal arriving
  /// before process_start() first runs is queued rather than taking its
  /// default action. Optional: process_start() installs them otherwise.
  /// What each signal's disposition was (a handler, SIG_IGN, SIG_DFL) is
  /// remembered, and put back when the watch ends (or the receiver goes).
  void listen(const asio::any_io_executor& ex);
  /// Watches until its own shutdown, then restores the signals' previous
  /// handling exactly (also SIG_IGN; the signal mask is never changed).
  /// Terminal cancellation ends it too.
  asio::awaitable<void> process_start() override;
  std::string process_name() const override { return "signal-receiver"; }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return guard_.handle(); }

  /// The signal that requested the stop, 0 while none has.
  int stop_signal() const noexcept { return stop_signal_.load(); }
  /// The second stop signal, which escalated; 0 while none has.
  int escalation_signal() const noexcept { return escalation_signal_.load(); }
  /// How many reload broadcasts it has sent.
  std::size_t reloads() const noexcept { return reloads_.load(); }

 private:
  std::shared_ptr<ProcessControlHandler> tree_;
  SignalReceiverOptions options_;
  struct Saved;  // the dispositions before listen()
  void uninstall() noexcept;
  std::unique_ptr<asio::signal_set> signals_;
  std::unique_ptr<Saved> saved_;
  RuntimeGuard guard_{"signal-receiver"};
  std::atomic<int> stop_signal_{0};
  std::atomic<int> escalation_signal_{0};
  std::atomic<std::size_t> reloads_{0};
};

/// The conventional name of a signal ("SIGTERM"), or "signal N".
std::string signal_name(int sig);

}  // namespace pm
