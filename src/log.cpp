#include "log.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

namespace pm::detail {

namespace {
bool silenced() noexcept {
  static const bool off = [] {
    const char* v = std::getenv("PM_LOG");
    return v != nullptr && std::string_view(v) == "off";
  }();
  return off;
}
}  // namespace

void log_line(std::string_view level, std::string_view path, std::string_view message) noexcept {
  if (silenced()) return;
  try {
    const auto now = std::chrono::system_clock::now();
    const std::time_t secs = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[40];
    const auto n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    std::string line(stamp, n);
    char frac[8];
    std::snprintf(frac, sizeof frac, ".%03dZ ", static_cast<int>(ms));
    line += frac;
    line += level;
    line += ' ';
    line += path;
    line += ": ";
    line += message;
    line += '\n';
    // One write(2) per line: atomic for lines below PIPE_BUF, and no stdio lock.
    const ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
    (void)ignored;
  } catch (...) {
    // Logging must never be the reason a stop path throws.
  }
}

}  // namespace pm::detail
