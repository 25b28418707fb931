#include "log.hpp"

#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>

#include <processmanager/process_manager.hpp>

#include "utf8.hpp"

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

/// The default sink's format, from PM_LOG_FORMAT until set_log_format().
std::atomic<LogFormat>& format_var() noexcept {
  static std::atomic<LogFormat> format{detail::log_format_from(std::getenv("PM_LOG_FORMAT"))};
  return format;
}

/// Appends "2026-12-02T01:42:56.123Z" for `now`.
void append_stamp(std::string& line, std::chrono::system_clock::time_point now) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[40];
  const auto n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  line.append(stamp, n);
  char frac[8];
  std::snprintf(frac, sizeof frac, ".%03dZ", static_cast<int>(ms));
  line += frac;
}

/// Held while a line is written: one write(2) is atomic on a pipe only
/// below PIPE_BUF (4 KiB), and a longer line (a JSON event with a long
/// cause) from two threads at once would interleave.
std::mutex write_mu;

void write_line(const std::string& line) noexcept {
  std::lock_guard lock(write_mu);
  // All of it, whatever write(2) takes at a time: a short write (a signal,
  // a full non-blocking pipe) must not cut a line and glue the next to it.
  std::size_t done = 0;
  for (int stalls = 0; done < line.size() && stalls < 500;) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // A non-blocking stderr that is full: wait until it drains, for up to
      // 5 s; a reader gone for longer loses the rest of the line.
      pollfd p{STDERR_FILENO, POLLOUT, 0};
      (void)::poll(&p, 1, 10);
      ++stalls;
    } else {
      return;  // closed, or an error: the line is lost, the program goes on
    }
  }
}

/// "<stamp> <LEVEL> <path>: <message>"
void append_text(std::string& line, const LogRecord& r) {
  line.reserve(32 + r.path.size() + r.message.size());
  append_stamp(line, r.time);
  line += ' ';
  line += to_string(r.level);
  line += ' ';
  line += r.path;
  line += ": ";
  line += r.message;
}

/// Appends `s` as a JSON string. Paths and messages come from users and
/// from what() of any exception: a byte that is not UTF-8 becomes U+FFFD so
/// that a collector never drops the line as invalid JSON.
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const std::size_t n = detail::utf8_length(s, i);
      if (n == 0) {
        out += "\xEF\xBF\xBD";
        ++i;
      } else {
        out.append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char esc[8];
          std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
          out += esc;
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

void append_field(std::string& out, std::string_view key, std::string_view value) {
  out += ",\"";
  out += key;
  out += "\":";
  append_json_string(out, value);
}

void append_number(std::string& out, std::string_view key, long long value) {
  out += ",\"";
  out += key;
  out += "\":";
  out += std::to_string(value);
}

std::string_view json_level(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::debug:
      return "debug";
    case LogLevel::info:
      return "info";
    case LogLevel::warn:
      return "warn";
    case LogLevel::error:
      return "error";
  }
  return "?";
}

/// One JSON object: ts, level, path, event, message, and the fields of the
/// event the record reports, if any.
void append_json(std::string& line, const LogRecord& r) {
  line.reserve(112 + r.path.size() + r.message.size());
  line += "{\"ts\":\"";
  append_stamp(line, r.time);
  line += "\",\"level\":\"";
  line += json_level(r.level);
  line += '"';
  append_field(line, "path", r.path);
  const Event* ev = r.event;
  append_field(line, "event", ev != nullptr ? to_string(ev->kind) : std::string_view("log"));
  append_field(line, "message", r.message);
  if (ev != nullptr) {
    if (ev->state) append_field(line, "state", to_string(*ev->state));
    if (ev->previous) append_field(line, "previous", to_string(*ev->previous));
    if (ev->backoff) {
      append_number(line, "backoff_ms", std::chrono::duration_cast<std::chrono::milliseconds>(*ev->backoff).count());
    }
    if (ev->cause) append_field(line, "cause", describe(ev->cause));
    if (ev->restart) append_number(line, "restart", *ev->restart);
    if (ev->control) append_field(line, "control", to_string(*ev->control));
    if (!ev->detail.empty()) append_field(line, "detail", ev->detail);
  }
  line += '}';
}

// The sink is swapped rarely and read on every line: readers copy the
// shared_ptr under a short lock and call it unlocked. A LogSink is held
// wrapped as a record sink, so that one pointer says which sink is current.
std::mutex sink_mu;
std::shared_ptr<const LogRecordSink> current_sink;

void install(LogRecordSink sink) {
  auto next = sink ? std::make_shared<const LogRecordSink>(std::move(sink)) : nullptr;
  std::lock_guard lock(sink_mu);
  current_sink = std::move(next);
}

void emit(LogLevel level, std::string_view path, std::string_view message, const Event* ev) {
  std::shared_ptr<const LogRecordSink> sink;
  {
    std::lock_guard lock(sink_mu);
    sink = current_sink;
  }
  const LogRecord record{
      .level = level, .path = path, .message = message, .time = std::chrono::system_clock::now(), .event = ev};
  // A sink that logs (its own trouble, say) would call itself until the
  // stack ran out: what it logs goes to the default sink instead.
  thread_local bool in_sink = false;
  if (sink && !in_sink) {
    in_sink = true;
    try {
      (*sink)(record);
    } catch (...) {
      in_sink = false;
      throw;
    }
    in_sink = false;
    return;
  }
  std::string line = format_log_line(record, format_var().load(std::memory_order_relaxed));
  line += '\n';
  write_line(line);
}

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
  if (!sink) {
    install(nullptr);
    return;
  }
  install([sink = std::move(sink)](const LogRecord& r) { sink(r.level, r.path, r.message); });
}

void set_log_record_sink(LogRecordSink sink) { install(std::move(sink)); }

std::string format_log_line(const LogRecord& record, LogFormat format) {
  std::string line;
  if (format == LogFormat::json) {
    append_json(line, record);
  } else {
    append_text(line, record);
  }
  return line;
}

void set_log_level(std::optional<LogLevel> level) noexcept {
  threshold_var().store(level ? static_cast<int>(*level) : 4, std::memory_order_relaxed);
}

bool log_enabled(LogLevel level) noexcept { return static_cast<int>(level) >= threshold(); }

void log(LogLevel level, std::string_view path, std::string_view message) noexcept {
  if (!log_enabled(level)) return;
  try {
    emit(level, path, message, nullptr);
  } catch (...) {
    // Logging must never be the reason a stop path throws.
  }
}

void set_log_format(LogFormat format) noexcept { format_var().store(format, std::memory_order_relaxed); }

LogFormat log_format() noexcept { return format_var().load(std::memory_order_relaxed); }

namespace detail {

void log_event(const Event& ev) noexcept {
  const LogLevel level = level_of(ev);
  if (!log_enabled(level)) return;
  try {
    emit(level, ev.path, describe(ev), &ev);
  } catch (...) {
    // As log(): a manager's event delivery goes on whatever the sink does.
  }
}

void log_event(const Event& ev, LogLevel level, std::string_view message) noexcept {
  if (!log_enabled(level)) return;
  try {
    emit(level, ev.path, message, &ev);
  } catch (...) {
    // As log().
  }
}

LogFormat log_format_from(const char* value) noexcept {
  return value != nullptr && std::string_view(value) == "json" ? LogFormat::json : LogFormat::text;
}

}  // namespace detail

}  // namespace pm
