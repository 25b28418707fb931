// A walk over a tree's children, a few hundred per lock of their manager:
// what /status and /metrics are built from without holding the executor
// (or a manager's lock) for long.
#pragma once

#include <memory>
#include <unordered_set>
#include <vector>

#include "core/snapshot.hpp"

namespace pm::detail {

/// Visits every child below `root`, depth first, in start order, as
/// status() shows them. Between steps the tree may change; each child is
/// shown as it was when its part was read (a status() snapshot is not one
/// instant either: each manager is read under its own lock). Its stack is
/// its own: a tree thousands of managers deep needs no stack per level. A
/// manager met twice (a supervisor's loop) is shown as a child, not
/// entered again.
class TreeWalk {
 public:
  /// With `counted`, each step carries the child's ChildCounters too.
  TreeWalk(std::shared_ptr<ManagerCore> root, bool counted);

  struct Step {
    enum class Kind { child, open, close };
    /// child: a child without children shown; open: a nested manager, whose
    /// children come next, then its close.
    Kind kind = Kind::child;
    ChildStatus* status = nullptr;            ///< child and open; valid until the next step
    const ChildCounters* counters = nullptr;  ///< child and open, when counted
    bool first = false;                       ///< child and open: the first of its manager's children
  };

  /// The root's own status, without children (read at the first call).
  const ChildStatus& root();
  /// Moves to the next step; false once the walk is whole (after the
  /// root's own close).
  bool next(Step& step);

 private:
  /// A manager whose children are being visited.
  struct Level {
    std::shared_ptr<ManagerCore> core;
    std::string prefix;  // its children's paths begin with it: "root/db/"
    PeekCursor cursor;
    std::vector<ChildStatus> chunk;                    // children read, not all visited yet
    std::vector<ChildCounters> counters;               // beside `chunk`, when counted
    std::vector<std::shared_ptr<ManagerCore>> nested;  // beside `chunk`: a nested manager, or null
    std::size_t next = 0;                              // the next one of `chunk` to visit
    bool first = true;                                 // none of its children visited yet
  };

  std::shared_ptr<ManagerCore> root_;
  bool counted_;
  ChildStatus root_status_;
  std::vector<Level> stack_;
  std::unordered_set<const ManagerCore*> seen_;
  bool begun_ = false;
};

}  // namespace pm::detail
