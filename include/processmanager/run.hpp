// pm::run: the entry point for main().
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

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
  /// One io_context per thread instead of one shared by all (see
  /// shard_across): each thread runs its own shard, and the managers of
  /// the tree place their children across the shards. Without contention
  /// on one queue, start-up, shutdown and reload of many services scale
  /// with the threads; a message, a readiness change or an end that
  /// crosses shards costs a hop to the other thread. There is no work
  /// stealing: a coroutine that blocks its thread stalls every child of
  /// its shard, and the root manager when that is shard 0. Ignored with
  /// one thread. Opt-in: docs/design.md weighs it.
  bool sharded = false;
};

/// Makes `contexts` one set of shards. A manager that runs on one of them
/// (its process_start() spawned on it, or on a strand of it) places each
/// child it starts on one of them: ChildOptions::shard (modulo their
/// count) where given, otherwise the next in turn. A child runs wholly on
/// its shard, on a strand of it where that io_context may run on several
/// threads, and a restart brings it back on the same shard; a nested
/// manager on another shard spreads its own children across the set
/// again. While a manager runs it holds work on every shard, so no
/// shard's run() returns under it.
///
/// Call it once per set, with every context of the set, before a manager
/// starts on them; a manager run already going keeps the set it started
/// with, and a context left out of a later call keeps the set it had. One
/// context alone leaves that context unsharded. Throws
/// std::invalid_argument for none, a null pointer, a context given twice,
/// or one whose concurrency hint turns off locking (the shards post into
/// each other). Every context must outlive every manager run on any of
/// them, and every thread that may still be inside a handle's control().
/// A context destroyed with handlers still queued (a run torn down
/// unfinished) releases work on the others: shut all of them down before
/// destroying any (pm::run does; execution_context::shutdown() is
/// protected, so derive from io_context to call it), or let every one run
/// out of work first.
void shard_across(const std::vector<asio::io_context*>& contexts);

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
/// Once the tree has ended, the io threads return as their io_contexts run
/// out of work: a thread of the program's that is still inside a handle's
/// control() holds work until it lets go, so the io_contexts never go from
/// under it. What still holds work a second after the end (a service left
/// behind, a timer one left armed), or once the root's abandon_timeout
/// (5 s for a root that is not a manager) has passed if that is sooner, is
/// stopped. A thread still blocked in a service is then left behind
/// (logged): pm::run returns anyway, and the io_contexts and the tree live
/// on for as long as that thread.
int run(std::shared_ptr<Runnable> root, RunOptions options = {});

}  // namespace pm
