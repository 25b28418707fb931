// Saturating deadline arithmetic: "forever" (nanoseconds::max()) must stay
// forever, never wrap into the past.
#pragma once

#include <chrono>

namespace pm::detail {

using steady = std::chrono::steady_clock;

/// `from + d`, saturated at the ends of the clock's range; d may be max().
inline steady::time_point sat_add(steady::time_point from, std::chrono::nanoseconds d) noexcept {
  using dur = steady::duration;
  const auto dd = std::chrono::duration_cast<dur>(d);
  const auto since = from.time_since_epoch();
  if (dd.count() > 0 && since.count() > dur::max().count() - dd.count()) return steady::time_point::max();
  if (dd.count() < 0 && since.count() < dur::min().count() - dd.count()) return steady::time_point::min();
  return from + dd;
}

}  // namespace pm::detail
