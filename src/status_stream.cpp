#include "status_stream.hpp"

#include <processmanager/status_json.hpp>

#include <boost/json.hpp>

namespace pm::detail {

namespace {

/// Children read per lock of their manager: short enough that the lock is
/// held for microseconds, long enough that taking it costs little.
constexpr std::size_t chunk_size = 256;

/// `status` (without children) as to_json writes it, left open after
/// `"children":[`. The object is written by to_json itself, so that the
/// streamed document is the one to_json gives, byte for byte.
void open_object(std::string& out, const ChildStatus& status) {
  const std::string whole = boost::json::serialize(to_json(status));
  // It ends with "children":[]} (an object's last member, an empty array).
  out.append(whole, 0, whole.size() - 2);
}

}  // namespace

bool StatusStream::write_some(std::string& out, std::chrono::steady_clock::duration budget) {
  if (done_) return true;
  const auto deadline = std::chrono::steady_clock::now() + budget;
  if (!begun_) {
    begun_ = true;
    const ChildStatus self = peek_self(*root_);
    open_object(out, self);
    seen_.insert(root_.get());
    stack_.push_back(Level{root_, self.path + "/", {}, {}, {}, 0, true});
  }
  for (unsigned written = 0; !stack_.empty();) {
    Level& level = stack_.back();
    if (level.next == level.chunk.size()) {
      if (level.cursor.done) {
        out += "]}";
        stack_.pop_back();
        continue;
      }
      level.chunk.clear();
      level.next = 0;
      const Nested found = peek_children(*level.core, level.prefix, level.chunk, level.cursor, chunk_size);
      level.nested.assign(level.chunk.size(), nullptr);
      for (const auto& [index, inner] : found) level.nested[index] = inner;
      continue;
    }
    const std::size_t at = level.next++;
    ChildStatus& child = level.chunk[at];
    if (!level.first) out += ',';
    level.first = false;
    std::shared_ptr<ManagerCore> inner = std::move(level.nested[at]);
    // A manager met twice (a supervisor's loop) is listed, not entered again.
    if (inner && seen_.insert(inner.get()).second) {
      open_object(out, child);
      std::string prefix = child.path + "/";
      stack_.push_back(Level{std::move(inner), std::move(prefix), {}, {}, {}, 0, true});  // `level` is gone now
    } else {
      out += boost::json::serialize(to_json(child));
    }
    // The clock is read now and then, not per child.
    if (++written % 32 == 0 && std::chrono::steady_clock::now() >= deadline) return false;
  }
  done_ = true;
  return true;
}

}  // namespace pm::detail
