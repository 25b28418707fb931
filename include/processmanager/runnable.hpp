// Runnable and ProcessControlHandler: what a service is, and how it is told things.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <processmanager/control.hpp>

namespace pm {

/// Sends control messages to one service (or, for a manager, to its whole
/// subtree). Held as std::shared_ptr; every member is thread-safe and may be
/// called from any thread, also one that runs no io_context. A handle whose
/// service has ended, or whose io_context is gone, does nothing harmful:
/// messages are kept for a later run or dropped with the service.
class ProcessControlHandler {
 public:
  virtual ~ProcessControlHandler() = default;
  /// Hands `msg` to the service. Never blocks on the service, never loses a
  /// message: one sent while no ticker exists is delivered to the next tick.
  virtual void control(RuntimeControlMessage msg) = 0;
  /// control(RuntimeControlMessage::shutdown()).
  void request_shutdown() { control(RuntimeControlMessage::shutdown()); }
  /// control(RuntimeControlMessage::reload()).
  void request_reload() { control(RuntimeControlMessage::reload()); }
  /// Sends shutdown. For a plain service it completes once the message is
  /// delivered; a manager overrides it to complete once its subtree stopped
  /// (a wait that terminal cancellation ends with operation_aborted).
  /// Completes on the caller's executor.
  virtual asio::awaitable<void> shutdown();
  /// Sends reload. Completes once the message reached every service it is
  /// meant for (for a manager: every service of its subtree).
  virtual asio::awaitable<void> reload();
  /// For supervisors: `on_ready(declared)` is to be called, from any thread,
  /// whenever the service becomes ready; `declared` is false when it merely
  /// got its ticker, true when it said so. Replaces an earlier watcher.
  /// Returns false when this handle cannot tell, and the supervisor then
  /// counts the service ready once it runs. The default returns false.
  virtual bool watch_readiness(std::function<void(bool declared)> on_ready);
  /// When the service last said it is alive (RuntimeGuard::heartbeat()),
  /// for supervisors that watch heartbeats (ChildOptions::heartbeat_timeout,
  /// the systemd watchdog, /livez). nullopt: it has not beaten since it was
  /// created, or this handle cannot tell (the default).
  virtual std::optional<std::chrono::steady_clock::time_point> last_heartbeat() const;
};

/// A service: a long-lived unit of work the library starts and supervises.
/// Held as std::shared_ptr.
class Runnable {
 public:
  virtual ~Runnable() = default;
  /// Runs the service. Returning is success; throwing is failure. Must
  /// honour shutdown control messages (through its RuntimeTicker) and
  /// terminal cancellation.
  virtual asio::awaitable<void> process_start() = 0;
  /// The service's name in paths, logs and errors. Default: the readable
  /// dynamic type name.
  virtual std::string process_name() const;
  /// The handle through which the service is controlled.
  virtual std::shared_ptr<ProcessControlHandler> process_handle() = 0;
};

/// The readable (demangled) name of a type, as process_name() uses it.
std::string demangle(const char* mangled);

}  // namespace pm
