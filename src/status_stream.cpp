#include "status_stream.hpp"

#include <processmanager/status_json.hpp>

#include <boost/json.hpp>

namespace pm::detail {

namespace {

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
    open_object(out, walk_.root());
  }
  TreeWalk::Step step;
  for (unsigned written = 0; walk_.next(step);) {
    if (step.kind == TreeWalk::Step::Kind::close) {
      out += "]}";
      continue;
    }
    if (!step.first) out += ',';
    if (step.kind == TreeWalk::Step::Kind::open) {
      open_object(out, *step.status);
    } else {
      out += boost::json::serialize(to_json(*step.status));
    }
    // The clock is read now and then, not per child.
    if (++written % 32 == 0 && std::chrono::steady_clock::now() >= deadline) return false;
  }
  done_ = true;
  return true;
}

}  // namespace pm::detail
