// What a run keeps so that ProcessManager::health() (/livez, /readyz, the
// systemd notifier) never visits every child: the few children it must look
// at (those with a heartbeat_timeout, those that may be nested managers),
// and how long no heartbeat can go stale. Under the manager's lock, like the
// rest of a run's books.
#pragma once

#include <algorithm>
#include <cstdint>
#include <typeinfo>
#include <vector>

#include "manager.hpp"

namespace pm::detail {

/// The children health() needs, in books of their own (a swap-remove
/// vector each, the node keeping its place), and what the last look at
/// their heartbeats found. Under the manager's lock.
struct HealthBooks {
  std::vector<ChildNode*> beating;  // linked children with a heartbeat_timeout
  std::vector<ChildNode*> nesting;  // linked children whose handle may lead to a nested manager
  std::vector<ChildNode*> stale;    // of `beating`, those found stale at the last look
  // No child in `beating` can be stale before this: every deadline (last
  // beat or start, plus the timeout) seen at the last look was at or after
  // it, and a real heartbeat only moves its deadline later. A child linked
  // since brings it forward to its own first deadline.
  clock::time_point quiet_until = clock::time_point::max();
  std::uint64_t linked_so_far = 0;  // also each child's sequence number (ChildNode::seq)

  /// A child enters the run's books (ManagerRun::link).
  void add(ChildNode& n) {
    n.seq = ++linked_so_far;
    if (n.options && n.options->heartbeat_timeout) {
      n.beat_slot = static_cast<std::uint32_t>(beating.size());
      beating.push_back(&n);
      quiet_until = std::min(quiet_until, sat_add(n.run_started, *n.options->heartbeat_timeout));
    }
    // A guard's handle, the common case, is a leaf: only a manager's handle
    // or a supervisor's (which may supervise a manager) can lead further.
    const ProcessControlHandler& h = *n.handle;
    n.may_nest = typeid(h) != typeid(GuardState) &&
                 (typeid(h) == typeid(ManagerHandle) || dynamic_cast<const Supervising*>(&h) != nullptr);
    if (n.may_nest) {
      n.nest_slot = static_cast<std::uint32_t>(nesting.size());
      nesting.push_back(&n);
    }
  }

  /// A child runs again (restart_child): its heartbeat clock starts anew,
  /// and it may go stale from its new start.
  void restarted(const ChildNode& n) {
    if (n.options && n.options->heartbeat_timeout) {
      quiet_until = std::min(quiet_until, sat_add(n.run_started, *n.options->heartbeat_timeout));
    }
  }

  /// A child found to lead to no nested manager (a supervisor of a plain
  /// service) is not looked at again.
  void forget_nesting(ChildNode& n) {
    take_out(nesting, n.nest_slot, &ChildNode::nest_slot);
    n.may_nest = false;
  }

  /// A child leaves them (ManagerRun::unlink).
  void remove(ChildNode& n) {
    if (n.options && n.options->heartbeat_timeout) take_out(beating, n.beat_slot, &ChildNode::beat_slot);
    if (n.may_nest) take_out(nesting, n.nest_slot, &ChildNode::nest_slot);
    if (n.found_stale) {
      n.found_stale = false;
      stale.erase(std::find(stale.begin(), stale.end(), &n));
    }
  }

 private:
  static void take_out(std::vector<ChildNode*>& list, std::uint32_t slot, std::uint32_t ChildNode::*place) {
    ChildNode* last = list.back();
    list[slot] = last;
    last->*place = slot;
    list.pop_back();
  }
};

}  // namespace pm::detail
