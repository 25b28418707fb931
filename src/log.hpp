// Internal: one line per noteworthy event to stderr. Issue #4 makes this a
// pluggable logger with an event hook; until then it is deliberately small.
#pragma once

#include <string_view>

namespace pm::detail {

/// Writes "<time> <level> <path>: <message>" to stderr as one write, so that
/// lines from several threads never interleave. PM_LOG=off silences it.
void log_line(std::string_view level, std::string_view path, std::string_view message) noexcept;

}  // namespace pm::detail
