// Restart policies and backoff: shared by RestartSupervisor and ChildOptions.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <string>

namespace pm {

/// When a child is restarted (Erlang's restart types).
enum class RestartPolicy {
  permanent,  ///< after any end, normal or failed
  transient,  ///< after a failure only (the default)
  temporary,  ///< never
};

/// How long to wait before a restart: initial * factor^(n-1), capped at
/// max; with jitter, a uniformly random time in [min, that] ("full jitter").
/// With jitter and the default `min` of zero, any restart may come almost
/// at once, however many came before: a `min` keeps a floor under every
/// wait, jittered or not.
struct Backoff {
  std::chrono::nanoseconds initial = std::chrono::milliseconds(100);  ///< the first wait
  double factor = 2.0;                                                ///< growth per restart, >= 1
  std::chrono::nanoseconds max = std::chrono::seconds(30);            ///< the cap
  bool jitter = false;                                                ///< full jitter: uniform in [min, wait]
  /// The floor: no wait is shorter, with or without jitter. At most `max`.
  std::chrono::nanoseconds min = std::chrono::nanoseconds(0);
};

/// A RestartSupervisor's (or a child's) restart configuration. The fields
/// go what first, then when, the order designated initialisers must
/// follow: `{.policy = RestartPolicy::permanent, .max_restarts = 5,
/// .window = 10s, .backoff = {.initial = 50ms}}`.
struct RestartOptions {
  /// `max_restarts` that never gives up: the intensity limit is off, and
  /// only the backoff paces restarts.
  static constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();
  /// Retry forever, in one line: `.restart = pm::RestartOptions::forever()`.
  /// Restarts after a failure (or, with `policy`, after any end) for as
  /// long as the program runs, never giving up, each after `backoff`.
  static RestartOptions forever(Backoff backoff = {}, RestartPolicy policy = RestartPolicy::transient) {
    RestartOptions o;
    o.policy = policy;
    o.max_restarts = unlimited;
    o.backoff = backoff;
    return o;
  }

  RestartPolicy policy = RestartPolicy::transient;  ///< which ends are restarted
  /// More than this many restarts within `window` gives up (Erlang's
  /// intensity and period). `unlimited` never gives up; 0 gives up at the
  /// first failure.
  std::size_t max_restarts = 3;
  std::chrono::nanoseconds window = std::chrono::seconds(5);  ///< the period max_restarts counts over
  Backoff backoff{};                                          ///< the wait before each restart
  /// A child that ran this long without failing starts its backoff afresh.
  std::chrono::nanoseconds reset_after = std::chrono::seconds(30);
};

/// The wait before restart number `attempt` (1 for the first since the
/// child last ran `reset_after`): initial * factor^(attempt-1), capped at
/// max, raised to `min`; with jitter, a uniformly random time in [min, that]. What both
/// RestartSupervisor and a restarting manager wait. Saturates: a growth
/// that overflows, or a NaN, gives `max`; never a negative wait.
std::chrono::nanoseconds backoff_delay(const Backoff& backoff, std::uint32_t attempt);

/// Throws std::invalid_argument, naming `who`, for options that make no
/// sense: a factor below 1 or NaN, a negative initial wait, a cap below the
/// initial wait, a negative floor or one above the cap, a negative reset_after, a window that is not positive.
/// Every engine that restarts (RestartSupervisor, every strategy of a
/// manager) checks options with it when they are given.
void validate(const RestartOptions& options, const std::string& who);

/// Erlang's restart intensity: more than `max_restarts` restarts within
/// `window` means giving up. One value type serves RestartSupervisor and the
/// restarting managers, so that both count and word a give-up alike.
class RestartIntensity {
 public:
  /// Throws std::invalid_argument for a window that is not positive.
  RestartIntensity(std::size_t max_restarts, std::chrono::nanoseconds window);
  /// Records a restart at `now`. Returns false when it is one too many: the
  /// caller gives up. Restarts older than the window are forgotten; under
  /// RestartOptions::unlimited none is kept and none is too many.
  bool record(std::chrono::steady_clock::time_point now);
  /// "restart intensity exceeded (more than 3 restarts within 5000 ms)".
  std::string exceeded() const;
  /// The limit.
  std::size_t max_restarts() const noexcept { return max_; }
  /// The period the limit counts over.
  std::chrono::nanoseconds window() const noexcept { return window_; }

 private:
  std::size_t max_;
  std::chrono::nanoseconds window_;
  std::deque<std::chrono::steady_clock::time_point> recent_;
};

}  // namespace pm
