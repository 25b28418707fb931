#include "tree_walk.hpp"

namespace pm::detail {

namespace {

/// Children read per lock of their manager: short enough that the lock is
/// held for microseconds, long enough that taking it costs little.
constexpr std::size_t chunk_size = 256;

}  // namespace

TreeWalk::TreeWalk(std::shared_ptr<ManagerCore> root, bool counted) : root_(std::move(root)), counted_(counted) {}

const ChildStatus& TreeWalk::root() {
  if (!begun_) {
    begun_ = true;
    root_status_ = peek_self(*root_);
    seen_.insert(root_.get());
    stack_.push_back(Level{root_, root_status_.path + "/", {}, {}, {}, {}, 0, true});
  }
  return root_status_;
}

bool TreeWalk::next(Step& step) {
  (void)root();
  while (!stack_.empty()) {
    Level& level = stack_.back();
    if (level.next == level.chunk.size()) {
      if (level.cursor.done) {
        stack_.pop_back();
        step = Step{Step::Kind::close, nullptr, nullptr, false};
        return true;
      }
      level.chunk.clear();
      level.counters.clear();
      level.next = 0;
      const Nested found = peek_children(*level.core, level.prefix, level.chunk, level.cursor, chunk_size,
                                         counted_ ? &level.counters : nullptr);
      level.nested.assign(level.chunk.size(), nullptr);
      for (const auto& [index, inner] : found) level.nested[index] = inner;
      continue;
    }
    const std::size_t at = level.next++;
    step.status = &level.chunk[at];
    step.counters = counted_ ? &level.counters[at] : nullptr;
    step.first = std::exchange(level.first, false);
    std::shared_ptr<ManagerCore> inner = std::move(level.nested[at]);
    if (inner && seen_.insert(inner.get()).second) {
      step.kind = Step::Kind::open;
      std::string prefix = step.status->path + "/";
      stack_.push_back(Level{std::move(inner), std::move(prefix), {}, {}, {}, {}, 0, true});  // `level` is gone now
    } else {
      step.kind = Step::Kind::child;
    }
    return true;
  }
  return false;
}

}  // namespace pm::detail
