// Restart policies and backoff: shared by RestartSupervisor and ChildOptions.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace pm {

/// When a child is restarted (Erlang's restart types).
enum class RestartPolicy {
  permanent,  ///< after any end, normal or failed
  transient,  ///< after a failure only (the default)
  temporary,  ///< never
};

/// How long to wait before a restart: initial * factor^(n-1), capped at
/// max; with jitter, a uniformly random time in [0, that] ("full jitter").
struct Backoff {
  std::chrono::nanoseconds initial = std::chrono::milliseconds(100);  ///< the first wait
  double factor = 2.0;                                                ///< growth per restart, >= 1
  std::chrono::nanoseconds max = std::chrono::seconds(30);            ///< the cap
  bool jitter = false;                                                ///< full jitter: uniform in [0, wait]
};

/// A RestartSupervisor's configuration.
struct RestartOptions {
  RestartPolicy policy = RestartPolicy::transient;  ///< which ends are restarted
  Backoff backoff{};                                ///< the wait before each restart
  /// A child that ran this long without failing starts its backoff afresh.
  std::chrono::nanoseconds reset_after = std::chrono::seconds(30);
  /// More than this many restarts within `window` gives up (Erlang's
  /// intensity and period).
  std::size_t max_restarts = 3;
  std::chrono::nanoseconds window = std::chrono::seconds(5);  ///< the period max_restarts counts over
};

/// The wait before restart number `attempt` (1 for the first since the
/// child last ran `reset_after`): initial * factor^(attempt-1), capped at
/// max; with jitter, a uniformly random time in [0, that]. What both
/// RestartSupervisor and a restarting manager wait.
std::chrono::nanoseconds backoff_delay(const Backoff& backoff, std::uint32_t attempt);

}  // namespace pm
