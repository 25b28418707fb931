// Blocking services: plain functions on their own thread, under supervision.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>

#include <processmanager/process_manager.hpp>

namespace pm {

namespace detail {
class BlockingState;
}

/// What a blocking service's function gets: its stop token (requested on
/// shutdown) and waits that wake on stop or on control, so that reload and
/// custom messages reach plain threads too. Used on the service's thread.
class BlockingContext {
 public:
  using duration = std::chrono::steady_clock::duration;  ///< of the waits

  /// Requested when the service receives shutdown (or is cancelled).
  std::stop_token stop_token() const noexcept { return token_; }
  /// stop_token().stop_requested().
  bool stop_requested() const noexcept { return token_.stop_requested(); }
  /// Sleeps up to `d`; wakes early when stop is requested or a control
  /// message is waiting. Returns true if it slept the whole time.
  bool wait_for(duration d);
  /// The next control message, waiting up to `timeout`; nullopt on timeout
  /// or when stop is requested with no message waiting. A shutdown message
  /// is delivered like the others (it has already requested stop).
  std::optional<RuntimeControlMessage> next_control(duration timeout);
  /// The service's name.
  const std::string& name() const noexcept;
  /// The service is alive and making progress (see
  /// ChildOptions::heartbeat_timeout): one relaxed atomic store.
  void heartbeat() noexcept;

 private:
  friend class detail::BlockingState;
  BlockingContext(std::shared_ptr<detail::BlockingState> state, std::stop_token token)
      : state_(std::move(state)), token_(std::move(token)) {}
  std::shared_ptr<detail::BlockingState> state_;
  std::stop_token token_;
};

/// A service named `name` that runs `fn` on a thread of its own, one per
/// run. Returning is success; an exception is failure (caught on the thread
/// and reported to the manager with the service's name). Shutdown requests
/// the stop token; terminal cancellation abandons a thread that ignores it
/// (AbandonedError). Throws std::invalid_argument for an empty function.
std::shared_ptr<Runnable> make_blocking_runnable(std::string name, std::function<void(BlockingContext&)> fn);

}  // namespace pm
