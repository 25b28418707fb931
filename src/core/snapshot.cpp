// status() snapshots, whole or a few children at a time: what a manager's
// lock is held for (copying its books), and what is read after it (the
// handles, which may be user code).
#include "snapshot.hpp"

#include <algorithm>
#include <typeinfo>

namespace pm::detail {

std::shared_ptr<ManagerCore> nested_core(std::shared_ptr<ProcessControlHandler> h, bool* leaf) {
  // A supervisor of a supervisor of ... ends at a plain handle; the bound
  // only guards against a handle that supervises itself.
  for (int hops = 0; h && hops < 64; ++hops) {
    ProcessControlHandler& ref = *h;
    if (typeid(ref) == typeid(ManagerHandle)) return static_cast<ManagerHandle&>(ref).core();
    const auto* sup = dynamic_cast<const Supervising*>(h.get());
    if (sup == nullptr) {
      if (leaf != nullptr) *leaf = true;
      return nullptr;
    }
    h = sup->supervised_handle();
  }
  return nullptr;
}

namespace {

/// What a snapshot copies of a child under its manager's lock; the rest
/// (heartbeat, restarts of a supervisor, a nested manager) is read from the
/// handle after the lock, since a handle is user code.
struct ChildPeek {
  std::shared_ptr<ProcessControlHandler> handle;
  std::optional<std::chrono::nanoseconds> heartbeat_timeout;
  clock::time_point run_started;
  bool watch_beat = false;  // in a state where staleness applies
};

/// The child to read first under the lock: after the cursor's last one.
ChildNode* first_unread(const ManagerRun& run, const PeekCursor& cursor) {
  if (!cursor.last) return run.head;
  if (cursor.last->linked) return cursor.last->next;
  // It has left the books since: the first child added after it. The
  // books are in insertion order, so sequence numbers grow along them.
  ChildNode* n = run.head;
  while (n != nullptr && n->seq <= cursor.after) n = n->next;
  return n;
}

}  // namespace

ChildStatus peek_self(ManagerCore& core) {
  ChildStatus out;
  std::lock_guard lock(core.mu);
  out.path = core.name;
  out.state = core.self_state;
  out.since = core.self_since;
  out.ready = core.ready;
  out.last_error = core.self_error;
  return out;
}

std::chrono::system_clock::time_point run_began(ManagerCore& core) {
  std::lock_guard lock(core.mu);
  return core.run_began;
}

Nested peek_children(ManagerCore& core, const std::string& prefix, std::vector<ChildStatus>& out, PeekCursor& cursor,
                     std::size_t max, std::vector<ChildCounters>* counters) {
  const std::size_t first = out.size();
  const std::size_t first_counted = counters != nullptr ? counters->size() : 0;
  std::vector<ChildPeek> peeks;
  std::shared_ptr<ChildNode> previous;  // the cursor's old child, let go after the lock (user code may go with it)
  {
    std::lock_guard lock(core.mu);
    auto run = core.current.lock();
    if (!cursor.started) {
      cursor.started = true;
      cursor.run = run;
    } else if (!run || run != cursor.run.lock()) {
      run = nullptr;  // the run read so far has ended: so has the reading
    }
    ChildNode* n = run ? first_unread(*run, cursor) : nullptr;
    if (run) {
      const std::size_t expected = std::min(max, run->live);
      out.reserve(first + expected);
      if (counters != nullptr) counters->reserve(first_counted + expected);
      peeks.reserve(expected);
    }
    for (std::size_t taken = 0; n != nullptr && taken < max; n = n->next, ++taken) {
      ChildStatus c;
      c.path = prefix + n->name;
      c.state = n->state;
      c.since = n->since;
      c.ready = n->ready;
      if (n->last_error) c.last_error = describe(n->last_error);
      c.restarts = n->restarts;
      out.push_back(std::move(c));
      if (counters != nullptr) {
        ChildCounters k{n->restarts, n->failures, std::nullopt};
        if (!core.retired.empty()) {
          if (const auto r = core.retired.find(n->name); r != core.retired.end()) {
            k.restarts += r->second.restarts;
            k.failures += r->second.failures;
          }
        }
        counters->push_back(k);
      }
      ChildPeek p;
      p.handle = n->handle;
      if (n->options) p.heartbeat_timeout = n->options->heartbeat_timeout;
      p.run_started = n->run_started;
      p.watch_beat = n->beat_watched();
      peeks.push_back(std::move(p));
      if (n->next == nullptr || taken + 1 == max) {
        previous = std::exchange(cursor.last, n->shared_from_this());
        cursor.after = n->seq;
      }
    }
    cursor.done = n == nullptr;
  }
  Nested nested;
  const auto now = clock::now();
  for (std::size_t i = 0; i < peeks.size(); ++i) {
    ChildPeek& p = peeks[i];
    ChildStatus& c = out[first + i];
    if (p.heartbeat_timeout && p.watch_beat) {
      auto last = p.run_started;
      if (const auto beat = p.handle->last_heartbeat(); beat && *beat > last) last = *beat;
      c.stale = now - last > *p.heartbeat_timeout;
      if (counters != nullptr) {
        (*counters)[first_counted + i].heartbeat_age = std::chrono::duration<double>(now - last).count();
      }
    }
    const ProcessControlHandler& handle = *p.handle;
    if (typeid(handle) == typeid(GuardState)) continue;  // the common case: a leaf
    if (const auto* sup = dynamic_cast<const Supervising*>(p.handle.get())) {
      const std::size_t supervised = sup->supervised_restarts();
      c.restarts += supervised;
      if (counters != nullptr) {
        (*counters)[first_counted + i].restarts += supervised;
        (*counters)[first_counted + i].failures += sup->supervised_failures();
      }
    }
    if (auto inner = nested_core(p.handle)) nested.emplace_back(first + i, std::move(inner));
  }
  return nested;
}

}  // namespace pm::detail
