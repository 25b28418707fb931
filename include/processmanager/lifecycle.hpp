// Lifecycle: child states, events, the logger, and status snapshots.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <processmanager/control.hpp>

namespace pm {

/// Where a child is in its life. Each change is timestamped and reported.
enum class ChildState {
  starting,    ///< created; its coroutine has not begun
  running,     ///< its coroutine runs; not (yet) ready
  ready,       ///< it said so, or it has its ticker (the default)
  stopping,    ///< asked to shut down
  stopped,     ///< ended normally (also after a forced stop)
  failed,      ///< ended by throwing
  restarting,  ///< waiting for its backoff before the next run
  abandoned,   ///< ignored even terminal cancellation; no longer waited for
};
/// "starting", "running", ...
std::string_view to_string(ChildState state) noexcept;
/// The state named `name`; throws std::invalid_argument for an unknown name.
ChildState child_state_from_string(std::string_view name);

/// What an Event reports.
enum class EventKind {
  state,      ///< a child changed state (`state`, `previous`)
  control,    ///< a control message was handed to a child (`control`)
  restart,    ///< a child will be restarted after `backoff` (`cause`: why)
  give_up,    ///< a restart limit was exceeded (`cause`: the last failure)
  abandoned,  ///< a child ignored terminal cancellation and was left behind
};
/// "state", "control", ...
std::string_view to_string(EventKind kind) noexcept;

/// One thing that happened to one child. A field that belongs to other
/// kinds is empty (std::nullopt), never a default that reads as a value;
/// `e.state == ChildState::ready` is simply false on a control event.
struct Event {
  EventKind kind = EventKind::state;                  ///< what happened
  std::string path;                                   ///< "root/db/writer"
  std::chrono::system_clock::time_point time{};       ///< when it happened
  std::optional<ChildState> state{};                  ///< the new state (kind state only)
  std::optional<ChildState> previous{};               ///< the old state (kind state only)
  std::exception_ptr cause{};                         ///< the failure behind it, if any
  std::optional<std::chrono::nanoseconds> backoff{};  ///< the wait before a restart (kind restart only)
  std::optional<ControlKind> control{};               ///< the message (kind control only)
  std::string detail{};                               ///< a few words more, for people
  std::optional<std::uint32_t> restart{};             ///< which restart this is, 1 for the first (kind restart only)
};

/// Severity of a log line.
enum class LogLevel { debug, info, warn, error };
/// "DEBUG", "INFO", "WARN", "ERROR".
std::string_view to_string(LogLevel level) noexcept;
/// The level an event is logged at: failures, give-ups and abandonment are
/// errors, restarts and forced stops warnings, controls and routine state
/// changes debug.
LogLevel level_of(const Event& event) noexcept;
/// An event in words, without time or path: "running -> ready", "restart in 200 ms after: boom".
std::string describe(const Event& event);

/// Receives every log line: level, the path it is about, the message. It is
/// called from any thread, never with a library lock held, and must not
/// throw (what it throws is dropped).
using LogSink = std::function<void(LogLevel, std::string_view path, std::string_view message)>;
/// Replaces the process-wide sink; an empty function restores the default,
/// which writes "<UTC time> <LEVEL> <path>: <message>" to stderr as one
/// write per line. The default prints info and above; PM_LOG=debug prints
/// everything, PM_LOG=warn|error less, PM_LOG=off nothing.
void set_log_sink(LogSink sink);
/// Overrides PM_LOG: lines below `level` are dropped; nullopt drops all.
/// Managers built while debug is off build no routine events for the log.
void set_log_level(std::optional<LogLevel> level) noexcept;
/// Writes one line through the current sink, if `level` passes PM_LOG.
void log(LogLevel level, std::string_view path, std::string_view message) noexcept;
/// True when a line at `level` would be written (lets callers skip formatting).
bool log_enabled(LogLevel level) noexcept;

/// How the default sink writes a line. A sink set with set_log_sink() is
/// called the same way in both.
enum class LogFormat {
  text,  ///< "<UTC time> <LEVEL> <path>: <message>"
  json,  ///< one JSON object per line: ts, level, path, event, message, and an event's fields
};
/// Chooses the default sink's format; overrides PM_LOG_FORMAT (`json` or
/// `text`, read once; anything else, or nothing, means text).
void set_log_format(LogFormat format) noexcept;
/// The default sink's format now.
LogFormat log_format() noexcept;

/// One log line with what it reports, for sinks that keep fields apart (a
/// structured logger, a log shipper's client). The views and `event` are
/// valid only during the sink's call: copy what is kept.
struct LogRecord {
  LogLevel level = LogLevel::info;               ///< the line's severity
  std::string_view path{};                       ///< the child it is about, "root/db"
  std::string_view message{};                    ///< the line in words, describe(*event) for an event
  std::chrono::system_clock::time_point time{};  ///< when the line was logged
  const Event* event = nullptr;                  ///< the event it reports; nullptr for a line from log()
};
/// Receives every log line as a record; called as a LogSink is (any thread,
/// no library lock held, what it throws is dropped).
using LogRecordSink = std::function<void(const LogRecord&)>;
/// Replaces the process-wide sink with one that receives records. It and
/// set_log_sink() set the same sink: the later call wins, and an empty
/// function restores the default.
void set_log_record_sink(LogRecordSink sink);
/// The line the default sink writes for `record` in `format`, without the
/// newline: a record sink that forwards to another logger can keep the
/// library's JSON fields (`ts` is `record.time`).
std::string format_log_line(const LogRecord& record, LogFormat format);

/// Receives a manager's events in the order they happened, one at a time,
/// never with a library lock held. Events of a nested manager reach its
/// parent's hook too, with the full path.
using EventHook = std::function<void(const Event&)>;

/// A snapshot of one child, or of a manager and its subtree.
struct ChildStatus {
  std::string path;                               ///< "root/db/writer"
  ChildState state = ChildState::starting;        ///< now
  std::chrono::system_clock::time_point since{};  ///< when it entered `state` (microsecond precision)
  std::size_t restarts = 0;                       ///< restarts so far
  std::string last_error{};                       ///< the latest failure in words, or empty
  bool ready = false;                             ///< counts as ready now
  bool stale = false;                             ///< its heartbeat is older than its heartbeat_timeout
  std::vector<ChildStatus> children{};            ///< a nested manager's children, in start order

  /// The status of the descendant at `relative_path` below this one
  /// ("db/writer" from the root's status finds "root/db/writer"), or nullptr
  /// when there is none; "" is this status itself. Each step matches a
  /// child's name, the part of its path after this path and a '/' (as
  /// status() builds them). A name that itself holds '/' is matched whole
  /// first. Iterative: a tree thousands of levels deep costs no stack.
  const ChildStatus* find(std::string_view relative_path) const;

  /// Field by field, children included (a JSON round trip compares equal).
  friend bool operator==(const ChildStatus&, const ChildStatus&) = default;
};

/// The paths of every stale child in `status` and below, depth first; empty
/// when every heartbeat is fresh.
std::vector<std::string> stale_paths(const ChildStatus& status);

}  // namespace pm
