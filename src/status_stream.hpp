// A manager's status as JSON, written a slice at a time: what /status
// sends, built without holding the executor (or a manager's lock) for long.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/snapshot.hpp"

namespace pm::detail {

/// Writes the document `boost::json::serialize(to_json(manager.status()))`
/// would give, in slices: each write_some() appends what it can in about
/// `budget`, reading a few hundred children per lock of their manager.
/// Between slices the tree may change; each child is shown as it was when
/// its part was read (a status() snapshot is not one instant either: each
/// manager is read under its own lock). Depth first, with a stack of its
/// own: a tree thousands of managers deep needs no stack per level.
class StatusStream {
 public:
  explicit StatusStream(std::shared_ptr<ManagerCore> root) : root_(std::move(root)) {}

  /// Appends the next part of the document to `out`; true once it is whole.
  bool write_some(std::string& out, std::chrono::steady_clock::duration budget);

 private:
  /// A manager whose children are being written.
  struct Level {
    std::shared_ptr<ManagerCore> core;
    std::string prefix;  // its children's paths begin with it: "root/db/"
    PeekCursor cursor;
    std::vector<ChildStatus> chunk;                    // children read, not all written yet
    std::vector<std::shared_ptr<ManagerCore>> nested;  // beside `chunk`: a nested manager, or null
    std::size_t next = 0;                              // the next one of `chunk` to write
    bool first = true;                                 // none of its children written yet
  };

  std::shared_ptr<ManagerCore> root_;
  std::vector<Level> stack_;
  std::unordered_set<const ManagerCore*> seen_;
  bool begun_ = false;
  bool done_ = false;
};

}  // namespace pm::detail
