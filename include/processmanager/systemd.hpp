// SystemdNotifier: systemd's notify protocol (sd_notify) for a tree.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <processmanager/process_manager.hpp>

namespace pm {

namespace detail {
class SystemdService;
}

/// Where a SystemdNotifier sends and how often. Unset fields come from the
/// environment systemd gives a Type=notify service.
struct SystemdOptions {
  /// The notify socket: an absolute path, or "@name" for an abstract one.
  /// Default: $NOTIFY_SOCKET; without either the notifier does nothing.
  std::optional<std::string> socket{};
  /// The watchdog period: WATCHDOG=1 goes out every half of it. Default:
  /// $WATCHDOG_USEC, when $WATCHDOG_PID is unset or names this process; a
  /// malformed $WATCHDOG_USEC turns the watchdog off (logged once) and
  /// nothing else. The period in use is clamped to [20 ms, 366 days]
  /// (logged): WATCHDOG=1 never goes out more often than every 10 ms, and
  /// a huge or out-of-range value saturates instead of overflowing.
  std::optional<std::chrono::microseconds> watchdog{};
  /// How often, during a stop, EXTEND_TIMEOUT_USEC (of twice this) goes out
  /// while the stop makes progress.
  std::chrono::nanoseconds extend_interval = std::chrono::seconds(5);
};

/// Tells systemd how a tree is doing, speaking the datagram protocol of
/// sd_notify(3) itself (no libsystemd): READY=1 once the tree is ready;
/// RELOADING=1 with MONOTONIC_USEC when a reload is handed out, then READY=1
/// once the tree is ready again; STOPPING=1 when its shutdown begins;
/// EXTEND_TIMEOUT_USEC every extend_interval while the stop still makes
/// progress (within the tree's grace period and abandon timeout, or a child
/// ended since the last one); WATCHDOG=1 every half watchdog period only
/// while the tree runs and no child's heartbeat is stale (the stale paths
/// are named in STATUS= and the log whenever that set changes; nothing is
/// judged before the tree has started); STATUS= lines with the tree's
/// state throughout, control characters in them (a service name with a
/// newline) replaced by '?', so no text can add a line of its own.
///
/// pm::run starts one for a ProcessManager root (RunOptions::
/// notify_systemd). Elsewhere, insert one into the tree it reports on with
/// systemd_notifier(), or co_spawn run() on a strand of the tree's
/// io_context: it then ends once the tree has run and stopped, or on stop().
class SystemdNotifier {
 public:
  /// Reads the options' defaults from the environment. Throws
  /// std::invalid_argument for a null tree, a socket that is neither an
  /// absolute path nor "@name" (or too long), a watchdog option that is not
  /// positive, or an extend_interval that is not positive. A malformed
  /// $WATCHDOG_USEC does not throw: the watchdog is off, the rest works.
  explicit SystemdNotifier(std::shared_ptr<ProcessManager> tree, SystemdOptions options = {});
  ~SystemdNotifier();
  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;

  /// True when there is a socket to send to.
  bool enabled() const noexcept;
  /// The watchdog period in use, if any.
  std::optional<std::chrono::microseconds> watchdog() const noexcept;
  /// Sends one datagram ("KEY=value" lines). Returns false (and logs a
  /// warning) when it could not be sent; never throws, never blocks.
  bool send(std::string_view message);
  /// Follows the tree until it has run and stopped. Returns at once when
  /// not enabled. Needs a strand or a one-thread executor.
  asio::awaitable<void> run();
  /// Makes run() end (after a last STOPPING=1 if none was sent); any thread.
  void stop();

 private:
  friend class detail::SystemdService;
  struct State;
  std::shared_ptr<State> state_;
};

/// A SystemdNotifier as a service of the tree it reports on, for the
/// builder chain: `.pre_insert_with(pm::systemd_notifier())`. It stops last
/// (ChildOptions::stop_last is set whatever options come with it): the
/// manager tells it to stop only once every other child has ended, so
/// STOPPING=1 goes out when the tree's stop begins, EXTEND_TIMEOUT_USEC
/// while the rest stops, and its own end is the stop's last step. It counts
/// as one of the tree's services (in STATUS= too), ready once it runs; it
/// holds no reference to the tree between runs. Without a notify socket it
/// sends nothing and idles until it is told to stop. Do not insert one into
/// a tree that pm::run already notifies for (RunOptions::notify_systemd):
/// systemd would hear everything twice. The options are checked when the
/// tree is built (as SystemdNotifier's constructor does); an empty `name`
/// throws std::invalid_argument at once.
ChildFactory systemd_notifier(SystemdOptions options = {}, std::string name = "systemd");

}  // namespace pm
