// A tree's metrics in the Prometheus text format, written a slice at a
// time: what /metrics sends, built like /status (tree_walk.hpp).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tree_walk.hpp"

namespace pm::detail {

/// Keeps the counters /metrics shows from going backwards while the
/// process lives, whatever the tree does under them: a count that drops
/// (its child came back as a new object, say under a supervisor's new
/// manager) goes on from where it was. Only paths that ever counted
/// something are kept. One document at a time uses it (the server's
/// executor).
class CounterFloors {
 public:
  /// What to show for counter `family` (0: restarts, 1: failures) of
  /// `path`, given the count read now.
  std::uint64_t shown(const std::string& path, int family, std::uint64_t raw);

 private:
  struct Floor {
    std::uint64_t last = 0;    // the count read last time
    std::uint64_t offset = 0;  // what earlier lives counted
  };
  std::unordered_map<std::string, std::array<Floor, 2>> floors_;
};

/// The library's families of one tree (docs/deployment.md lists them), one
/// string per family so that each family's lines stay together while the
/// tree is read child by child. A few hundred children per lock of their
/// manager, as for /status.
class MetricsStream {
 public:
  MetricsStream(std::shared_ptr<ManagerCore> root, CounterFloors& floors);

  /// Reads on for about `budget`; true once every child is read.
  bool write_some(std::chrono::steady_clock::duration budget);
  /// The document's parts, in order, once write_some() said it is whole.
  std::vector<std::string> take() { return std::move(parts_); }
  /// The names of the families in it.
  static std::vector<std::string> family_names();

 private:
  void child(const ChildStatus& status, const ChildCounters& counters);

  std::shared_ptr<ManagerCore> root_;
  TreeWalk walk_;
  CounterFloors& floors_;
  std::vector<std::string> parts_;
  std::string path_;  // the child being written, escaped
  bool begun_ = false;
  bool done_ = false;
};

}  // namespace pm::detail
