// Internal logging helpers over the public sink (lifecycle.hpp).
#pragma once

#include <string_view>

#include <processmanager/lifecycle.hpp>

namespace pm::detail {

/// pm::log under the name the library's sources use.
inline void log_line(LogLevel level, std::string_view path, std::string_view message) noexcept {
  pm::log(level, path, message);
}

/// Logs `ev` at level_of(ev) as describe(ev). In JSON format the default
/// sink also writes the event's fields; a record sink gets `&ev` as
/// LogRecord::event. Costs one relaxed load when the level is off.
void log_event(const Event& ev) noexcept;
/// Logs `message` about `ev` at `level`, with the event's fields in JSON
/// format; otherwise exactly log(level, ev.path, message).
void log_event(const Event& ev, LogLevel level, std::string_view message) noexcept;

/// PM_LOG_FORMAT's value (null when unset) as a format: "json" or "text";
/// anything else is text.
LogFormat log_format_from(const char* value) noexcept;

}  // namespace pm::detail
