// A tree's metrics in the Prometheus text format, written a slice at a
// time: what /metrics sends, built like /status (tree_walk.hpp).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
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
  std::uint64_t shown(std::string_view path, int family, std::uint64_t raw);

 private:
  struct Floor {
    std::uint64_t last = 0;    // the count read last time
    std::uint64_t offset = 0;  // what earlier lives counted
  };
  std::unordered_map<std::string, std::array<Floor, 2>> floors_;
};

/// A set of paths that is made and dropped cheaply at 100,000 of them: an
/// open-addressing table of views into blocks of characters. A node-based
/// set would be freed node by node, in cache-missing order, for about 9 ms
/// of the executor at the end of a document.
class PathSet {
 public:
  /// Room for `n` paths without growing.
  void reserve(std::size_t n);
  /// Adds `path` (not empty); the view kept, and whether it was new.
  std::pair<std::string_view, bool> insert(std::string_view path);

 private:
  void grow(std::size_t slots);
  std::vector<std::string_view> slots_;  // empty: free
  std::size_t used_ = 0;
  std::vector<std::unique_ptr<char[]>> blocks_;
  char* free_ = nullptr;
  std::size_t left_ = 0;
};

/// The library's families of one tree (docs/deployment.md lists them), one
/// string per family so that each family's lines stay together while the
/// tree is read child by child. A few hundred children per lock of their
/// manager, as for /status.
class MetricsStream {
 public:
  /// `expected`: about how many services the tree has (room is made for
  /// them at once: growing a table of 100,000 paths rehashes it whole).
  MetricsStream(std::shared_ptr<ManagerCore> root, CounterFloors& floors, std::size_t expected);

  /// Reads on for about `budget`; true once every child is read.
  bool write_some(std::chrono::steady_clock::duration budget);
  /// The document's parts, in order, once write_some() said it is whole.
  std::vector<std::string> take();
  /// The names of the families in it.
  static std::vector<std::string> family_names();

 private:
  void child(const ChildStatus& status, const ChildCounters& counters);

  std::shared_ptr<ManagerCore> root_;
  TreeWalk walk_;
  CounterFloors& floors_;
  /// The block of `family` to append a line to (a line is far below 512 bytes).
  std::string& block(std::size_t family);
  static constexpr std::size_t block_size = std::size_t{256} * 1024;

  std::vector<std::vector<std::string>> blocks_;          // per family, in order
  std::string path_;                                      // the child being written, escaped
  PathSet paths_;                                         // every path shown so far
  std::unordered_map<std::string, std::size_t> repeats_;  // a repeated path: the next number to try
  bool begun_ = false;
  bool done_ = false;
};

}  // namespace pm::detail
