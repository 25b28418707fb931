// Internal logging helpers over the public sink (lifecycle.hpp).
#pragma once

#include <string_view>

#include <processmanager/lifecycle.hpp>

namespace pm::detail {

/// pm::log under the name the library's sources use.
inline void log_line(LogLevel level, std::string_view path, std::string_view message) noexcept {
  pm::log(level, path, message);
}

}  // namespace pm::detail
