// Readiness going up a tree: each change is handed to the parent's node,
// watchers and waiters, without recursion per level.
#include <deque>
#include <memory>
#include <vector>

#include "manager.hpp"

namespace pm::detail {

namespace {

/// A readiness change goes up the tree through each parent's node. Done by
/// recursion, a tree 15,000 managers deep overflows the stack; so a thread
/// that is already carrying changes up queues the next one, and the event
/// flushes they cause run once every change has reached the top, top
/// first: the order recursion gave, in which whoever reacts to an event
/// sees readiness up to date all the way up.
struct Propagation {
  std::deque<ReadyChange> changes;
  std::vector<std::shared_ptr<ManagerCore>> flushes;
};
thread_local Propagation* propagating = nullptr;

void deliver(ReadyChange& change) noexcept {
  try {
    if (change.watch) change.watch(true);
  } catch (...) {
    // A watcher that throws must not keep the change from the others.
  }
  if (change.target) {
    if (change.ready) {
      change.target->on_ready(true);
    } else {
      change.target->on_unready();
    }
  }
  for (auto& w : change.waiters) w->complete(change.ready);
}

}  // namespace

void notify_ready(ReadyNotice& who) {
  if (!who) return;
  if (propagating != nullptr) {
    propagating->changes.push_back(std::move(*who));
    who.reset();
    return;
  }
  Propagation p;
  propagating = &p;
  p.changes.push_back(std::move(*who));
  who.reset();
  while (!p.changes.empty()) {
    ReadyChange change = std::move(p.changes.front());
    p.changes.pop_front();
    deliver(change);
  }
  propagating = nullptr;
  for (auto it = p.flushes.rbegin(); it != p.flushes.rend(); ++it) (*it)->flush();
}

/// core.flush(), or after the readiness changes under way on this thread.
void flush_after(ManagerCore& core) {
  if (propagating != nullptr) {
    propagating->flushes.push_back(core.shared_from_this());
  } else {
    core.flush();
  }
}

}  // namespace pm::detail
