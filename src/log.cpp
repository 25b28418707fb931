#include "log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>

namespace pm {

namespace {

/// The least severe level written, from PM_LOG until set_log_level();
/// above error means off.
std::atomic<int>& threshold_var() noexcept {
  static std::atomic<int> level = [] {
    const char* v = std::getenv("PM_LOG");
    const std::string_view s = v != nullptr ? std::string_view(v) : std::string_view("info");
    if (s == "off") return 4;
    if (s == "debug") return 0;
    if (s == "warn") return 2;
    if (s == "error") return 3;
    return 1;
  }();
  return level;
}

int threshold() noexcept { return threshold_var().load(std::memory_order_relaxed); }

void write_stderr(LogLevel level, std::string_view path, std::string_view message) {
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
  line += to_string(level);
  line += ' ';
  line += path;
  line += ": ";
  line += message;
  line += '\n';
  // One write(2) per line: atomic for lines below PIPE_BUF, and no stdio lock.
  const ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

// The sink is swapped rarely and read on every line: readers copy the
// shared_ptr under a short lock and call it unlocked.
std::mutex sink_mu;
std::shared_ptr<const LogSink> current_sink;

}  // namespace

std::string_view to_string(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::debug:
      return "DEBUG";
    case LogLevel::info:
      return "INFO";
    case LogLevel::warn:
      return "WARN";
    case LogLevel::error:
      return "ERROR";
  }
  return "?";
}

void set_log_sink(LogSink sink) {
  auto next = sink ? std::make_shared<const LogSink>(std::move(sink)) : nullptr;
  std::lock_guard lock(sink_mu);
  current_sink = std::move(next);
}

void set_log_level(std::optional<LogLevel> level) noexcept {
  threshold_var().store(level ? static_cast<int>(*level) : 4, std::memory_order_relaxed);
}

bool log_enabled(LogLevel level) noexcept { return static_cast<int>(level) >= threshold(); }

void log(LogLevel level, std::string_view path, std::string_view message) noexcept {
  if (!log_enabled(level)) return;
  try {
    std::shared_ptr<const LogSink> sink;
    {
      std::lock_guard lock(sink_mu);
      sink = current_sink;
    }
    if (sink) {
      (*sink)(level, path, message);
    } else {
      write_stderr(level, path, message);
    }
  } catch (...) {
    // Logging must never be the reason a stop path throws.
  }
}

}  // namespace pm
