// Interval: a periodic timer in the manner of tokio::time::interval.
#pragma once

#include <chrono>
#include <stdexcept>
#include <utility>

#include <boost/asio/compose.hpp>
#include <processmanager/control.hpp>

namespace pm {

/// What an Interval does about ticks it could not deliver on time (the
/// service was busy, or the machine was suspended).
enum class MissedTickBehavior {
  burst,  ///< deliver every missed tick at once, then keep the original schedule
  delay,  ///< the next tick comes one period after the late one
  skip,   ///< drop the missed ticks; the next tick is the next one on the schedule
};

/// A periodic timer: the first tick completes at once, then one every
/// `period`. Usable on its own (`co_await interval.tick(asio::use_awaitable)`)
/// and in a ticker race (`ticker.tick(interval.tick(asio::deferred))`).
/// Not thread-safe: use it from one strand, like a steady_timer.
class Interval {
 public:
  using clock = std::chrono::steady_clock;  ///< what its deadlines are measured on

  /// Throws std::invalid_argument for a period that is not positive.
  Interval(const asio::any_io_executor& ex, clock::duration period,
           MissedTickBehavior missed = MissedTickBehavior::burst)
      : timer_(ex), period_(period), missed_(missed), next_(clock::now()) {
    if (period <= clock::duration::zero()) throw std::invalid_argument("pm::Interval: the period must be positive");
  }

  /// Waits for the next tick. Completion: void(error_code, clock::time_point),
  /// the time the tick was scheduled for. Cancellation: as the underlying
  /// steady_timer (terminal, partial, total); a cancelled wait keeps the
  /// schedule, so the next tick() waits for the same tick again.
  template <class Token>
  auto tick(Token&& token) {
    return asio::async_compose<Token, void(boost::system::error_code, clock::time_point)>(
        [this, started = false](auto& self, boost::system::error_code ec = {}) mutable {
          if (!started) {
            started = true;
            timer_.expires_at(next_);
            timer_.async_wait(std::move(self));
            return;
          }
          if (ec) {
            self.complete(ec, clock::time_point{});
            return;
          }
          const clock::time_point scheduled = next_;
          advance(clock::now());
          self.complete(ec, scheduled);
        },
        token, timer_);
  }

  /// Restarts the schedule: the next tick is one period from now.
  void reset() { next_ = clock::now() + period_; }
  /// The period.
  clock::duration period() const noexcept { return period_; }
  /// The missed-tick behaviour.
  MissedTickBehavior missed_tick_behavior() const noexcept { return missed_; }

 private:
  // A tick delivered more than 5 ms after its time counts as missed (the
  // threshold tokio uses, so that scheduling jitter is not a "miss").
  void advance(clock::time_point now) {
    const bool late = now > next_ + std::chrono::milliseconds(5);
    if (!late) {
      next_ += period_;
      return;
    }
    switch (missed_) {
      case MissedTickBehavior::burst:
        next_ += period_;
        break;
      case MissedTickBehavior::delay:
        next_ = now + period_;
        break;
      case MissedTickBehavior::skip:
        next_ = now + period_ - (now - next_) % period_;
        break;
    }
  }

  asio::steady_timer timer_;
  clock::duration period_;
  MissedTickBehavior missed_;
  clock::time_point next_;
};

}  // namespace pm
