// pm::run: the entry point for main().
#pragma once

#include <cstddef>
#include <memory>

#include <processmanager/process_manager.hpp>

namespace pm {

/// How pm::run runs a tree.
struct RunOptions {
  std::size_t threads = 1;  ///< io_context threads (0 counts as 1)
  /// SIGINT/SIGTERM/SIGQUIT: graceful shutdown; a second SIGINT/SIGTERM
  /// ends the process at once (128+signal); SIGHUP: reload. Handled on a
  /// thread of its own, never on the tree's executor.
  bool handle_signals = true;
  /// With a ProcessManager root and $NOTIFY_SOCKET set (a systemd
  /// Type=notify service), a SystemdNotifier follows the tree: READY=1,
  /// RELOADING=1, STOPPING=1, EXTEND_TIMEOUT_USEC, WATCHDOG=1, STATUS=.
  /// Without $NOTIFY_SOCKET it does nothing.
  bool notify_systemd = true;
};

/// Runs `root` until it ends, blocking the caller, on `threads` io threads
/// of its own. Throws std::invalid_argument for a null root. Returns:
///
/// - 0 when the tree ended by itself or stopped as asked (a SIGINT,
///   SIGTERM or SIGQUIT included), also when the stop had to cancel or
///   abandon a service, coroutine or blocking thread alike (logged where it
///   happens; a manager counts it as not stopped, not as a failure);
/// - 1 when a service failed (the error, with the failing child's path, is
///   logged), or when the signal handling, the systemd notifier or a
///   handler on an io thread failed (logged; the tree is stopped), or the
///   signal handling could not start (the tree is then not run).
///
/// A second SIGINT or SIGTERM during the stop does not return: one line
/// names the services not stopped and the process ends at once with
/// 128+signal (std::_Exit), even when a service blocks every io thread.
///
/// With handle_signals, SIGINT, SIGTERM, SIGQUIT and SIGHUP are blocked in
/// the calling thread for the run (every thread pm::run starts inherits
/// that) and read on a dedicated thread; the caller's signal mask and every
/// disposition are as before when it returns, and such a signal still
/// pending then is dropped. Threads the program started before pm::run
/// should block those signals too.
///
/// Once the tree has ended, the io_context is stopped and its threads get
/// the root's abandon_timeout (5 s for a root that is not a manager) to
/// return. One still blocked in a service is then left behind (logged):
/// pm::run returns anyway, and the io_context and the tree live on for as
/// long as that thread.
int run(std::shared_ptr<Runnable> root, RunOptions options = {});

}  // namespace pm
