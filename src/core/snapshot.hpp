// Reading a tree from outside its runs: status() snapshots (whole, or a few
// children at a time for /status), and health() summaries.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "run_state.hpp"

namespace pm::detail {

/// The library's access to a ProcessManager's core (ProcessManager befriends it).
struct CoreAccess {
  static const std::shared_ptr<ManagerCore>& core(const ProcessManager& m) { return m.core_; }
};

/// The nested manager behind a handle, looking through supervisors; null
/// for any other handle. `leaf`, when given, is set when the handle leads
/// to a plain service's handle (not to a supervisor between runs).
std::shared_ptr<ManagerCore> nested_core(std::shared_ptr<ProcessControlHandler> h, bool* leaf = nullptr);

/// How far a reading of one manager's children has got, so that it can go
/// on later, after the lock was let go: a child added meanwhile is read in
/// its turn, one that ended meanwhile is not, none is read twice.
struct PeekCursor {
  std::weak_ptr<ManagerRun> run;    // the run being read; once it ends, so does the reading
  std::shared_ptr<ChildNode> last;  // the last child read (null: none yet)
  std::uint64_t after = 0;          // its sequence number, for when it has left the books
  bool started = false;
  bool done = false;  // every child has been read
};

/// A nested manager found among the children read: its index in `out`.
using Nested = std::vector<std::pair<std::size_t, std::shared_ptr<ManagerCore>>>;

/// What /metrics counts of a child beside its status: totals that survive
/// its restarts, and those of its manager.
struct ChildCounters {
  /// Its restarts and failures, those of its earlier lives under the same
  /// name in this manager included (ManagerCore::retired), and a
  /// supervisor's restarts of its service.
  std::uint64_t restarts = 0;
  std::uint64_t failures = 0;
  /// Seconds since its last heartbeat (or its start), for a running child
  /// with a heartbeat_timeout.
  std::optional<double> heartbeat_age;
};

/// Appends the next children of `core` (at most `max`, in insertion order),
/// as status() shows them, with their paths under `prefix` ("root/db/"),
/// and returns the nested managers among them. One lock of the manager's;
/// handles (heartbeats, supervisors) are read after it. Sets
/// `cursor.done` once every child has been read.
/// With `counters`, appends theirs there too, one per child.
Nested peek_children(ManagerCore& core, const std::string& prefix, std::vector<ChildStatus>& out, PeekCursor& cursor,
                     std::size_t max = std::numeric_limits<std::size_t>::max(),
                     std::vector<ChildCounters>* counters = nullptr);

/// When the manager's current (or last) run began; the epoch if none has.
std::chrono::system_clock::time_point run_began(ManagerCore& core);

/// The manager itself as status() shows it, without its children.
ChildStatus peek_self(ManagerCore& core);

/// ProcessManager::health() of the manager with this core.
HealthSummary summarize(const std::shared_ptr<ManagerCore>& root);

}  // namespace pm::detail
