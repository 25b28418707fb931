// Backoff, option checks and restart intensity: what every restart engine shares.
#include <processmanager/restart_options.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>

namespace pm {

std::chrono::nanoseconds backoff_delay(const Backoff& backoff, std::uint32_t attempt) {
  const auto initial = std::max<std::int64_t>(backoff.initial.count(), 0);
  const auto cap = std::max<std::int64_t>(backoff.max.count(), 0);
  std::int64_t wait = std::min(initial, cap);
  // A floor above the cap (refused by validate) is held to the cap here.
  const std::int64_t floor = std::clamp<std::int64_t>(backoff.min.count(), 0, cap);
  // Nothing grows from zero: 0 * factor^k is 0 even where factor^k
  // overflows to infinity, whose product with 0 would be NaN, and so the cap.
  if (attempt > 1 && initial > 0) {
    // pow overflows to infinity for a long run of failures, and a NaN factor
    // stays NaN: neither compares below the cap, so both give the cap. The
    // comparison happens in double, before any conversion back to integers,
    // because a double at or above 2^63 has no int64 value.
    const double scaled = static_cast<double>(initial) * std::pow(backoff.factor, static_cast<double>(attempt - 1));
    if (scaled < static_cast<double>(cap)) {
      wait = std::max<std::int64_t>(static_cast<std::int64_t>(scaled), 0);
    } else {
      wait = cap;
    }
  }
  wait = std::max(wait, floor);
  if (!backoff.jitter || wait <= floor) return std::chrono::nanoseconds(wait);
  thread_local std::minstd_rand rng{std::random_device{}()};
  return std::chrono::nanoseconds(std::uniform_int_distribution<std::int64_t>(floor, wait)(rng));
}

void validate(const RestartOptions& o, const std::string& who) {
  auto fail = [&](const char* what) { throw std::invalid_argument(who + ": restart options: " + what); };
  if (std::isnan(o.backoff.factor) || o.backoff.factor < 1.0) fail("backoff factor must be >= 1 (and not NaN)");
  if (o.backoff.initial.count() < 0) fail("negative initial backoff");
  if (o.backoff.max < o.backoff.initial) fail("backoff max below its initial wait");
  if (o.backoff.min.count() < 0) fail("negative backoff min");
  if (o.backoff.min > o.backoff.max) fail("backoff min above its max");
  if (o.reset_after.count() < 0) fail("negative reset_after");
  if (o.window.count() <= 0) fail("the intensity window must be positive");
}

RestartIntensity::RestartIntensity(std::size_t max_restarts, std::chrono::nanoseconds window)
    : max_(max_restarts), window_(window) {
  if (window.count() <= 0) throw std::invalid_argument("RestartIntensity: the window must be positive");
}

bool RestartIntensity::record(std::chrono::steady_clock::time_point now) {
  // Keeping the times would only grow the books of a child that retries
  // forever, fast.
  if (max_ == RestartOptions::unlimited) return true;
  // now - t never overflows for times taken from one steady clock, whereas
  // t + window does when the window is "forever".
  while (!recent_.empty() && now - recent_.front() > window_) recent_.pop_front();
  recent_.push_back(now);
  // Only what can still matter is kept: max_ + 1 entries decide the answer.
  if (recent_.size() - 1 > max_) recent_.pop_front();
  return recent_.size() <= max_;
}

std::string RestartIntensity::exceeded() const {
  return "restart intensity exceeded (more than " + std::to_string(max_) + " restart" + (max_ == 1 ? "" : "s") +
         " within " + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(window_).count()) + " ms)";
}

}  // namespace pm
