// pm::run: the entry point for main().
#pragma once

#include <cstddef>
#include <memory>

#include <processmanager/process_manager.hpp>

namespace pm {

/// How pm::run runs a tree.
struct RunOptions {
  std::size_t threads = 1;     ///< io_context threads (0 counts as 1)
  bool handle_signals = true;  ///< SIGINT/SIGTERM: graceful shutdown; a second one forces it
  /// With a ProcessManager root and $NOTIFY_SOCKET set (a systemd
  /// Type=notify service), a SystemdNotifier follows the tree: READY=1,
  /// RELOADING=1, STOPPING=1, EXTEND_TIMEOUT_USEC, WATCHDOG=1, STATUS=.
  /// Without $NOTIFY_SOCKET it does nothing.
  bool notify_systemd = true;
};

/// Runs `root` until it ends, blocking the caller. Returns 0 on success
/// (also after a graceful stop on SIGINT/SIGTERM), 1 on failure (the error,
/// with the failing child's path, is printed to stderr), and 128+signal when
/// a second signal forced the stop. Throws std::invalid_argument for a null
/// root.
int run(std::shared_ptr<Runnable> root, RunOptions options = {});

}  // namespace pm
