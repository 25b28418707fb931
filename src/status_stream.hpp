// A manager's status as JSON, written a slice at a time: what /status
// sends, built without holding the executor (or a manager's lock) for long.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "tree_walk.hpp"

namespace pm::detail {

/// Writes the document `boost::json::serialize(to_json(manager.status()))`
/// would give, in slices: each write_some() appends what it can in about
/// `budget`, reading a few hundred children per lock of their manager
/// (TreeWalk says what a child shows between slices).
class StatusStream {
 public:
  explicit StatusStream(std::shared_ptr<ManagerCore> root) : walk_(std::move(root), false) {}

  /// Appends the next part of the document to `out`; true once it is whole.
  bool write_some(std::string& out, std::chrono::steady_clock::duration budget);

 private:
  TreeWalk walk_;
  bool begun_ = false;
  bool done_ = false;
};

}  // namespace pm::detail
