// The text format's number spelling, shared by MetricsWriter and /metrics.
#pragma once

#include <string>

namespace pm::detail {

/// Appends `value` as the Prometheus text format spells it: NaN, +Inf,
/// -Inf, or the shortest decimal that reads back as the same double.
void append_metric_value(std::string& out, double value);

}  // namespace pm::detail
