#include <processmanager/lifecycle.hpp>

#include <array>
#include <stdexcept>
#include <string>

#include <processmanager/process_manager.hpp>

namespace pm {

namespace {
constexpr std::array<std::string_view, 8> state_names{"starting", "running", "ready",      "stopping",
                                                      "stopped",  "failed",  "restarting", "abandoned"};
}  // namespace

std::string_view to_string(ChildState state) noexcept {
  const auto i = static_cast<std::size_t>(state);
  return i < state_names.size() ? state_names[i] : std::string_view("?");
}

ChildState child_state_from_string(std::string_view name) {
  for (std::size_t i = 0; i < state_names.size(); ++i) {
    if (state_names[i] == name) return static_cast<ChildState>(i);
  }
  throw std::invalid_argument("unknown child state '" + std::string(name) + "'");
}

std::string_view to_string(EventKind kind) noexcept {
  switch (kind) {
    case EventKind::state:
      return "state";
    case EventKind::control:
      return "control";
    case EventKind::restart:
      return "restart";
    case EventKind::give_up:
      return "give_up";
    case EventKind::abandoned:
      return "abandoned";
  }
  return "?";
}

LogLevel level_of(const Event& event) noexcept {
  switch (event.kind) {
    case EventKind::control:
      return LogLevel::debug;
    case EventKind::restart:
      return LogLevel::warn;
    case EventKind::give_up:
    case EventKind::abandoned:
      return LogLevel::error;
    case EventKind::state:
      break;
  }
  switch (event.state.value_or(ChildState::running)) {  // a state event always has one
    case ChildState::failed:
    case ChildState::abandoned:
      return LogLevel::error;
    case ChildState::restarting:
      // The restart event itself is the warning; a group member's
      // restart (which has none) says why in its detail.
      return event.detail.empty() ? LogLevel::debug : LogLevel::info;
    case ChildState::stopped:
      // A stop that needed cancellation, or a manager told to stop by a
      // significant child, is worth a line.
      if (event.cause) return LogLevel::warn;
      return event.detail.empty() ? LogLevel::debug : LogLevel::info;
    case ChildState::stopping:
      return event.detail.empty() ? LogLevel::debug : LogLevel::info;
    default:
      return LogLevel::debug;
  }
}

std::string describe(const Event& event) {
  std::string out;
  switch (event.kind) {
    case EventKind::state:
      if (event.state == ChildState::failed && event.cause) {
        out = "failed: " + describe(event.cause);
        if (!event.detail.empty()) out += " (" + event.detail + ")";
        return out;
      }
      if (!event.state) {
        out = "state unknown";
      } else if (!event.previous || event.previous == event.state) {
        out = to_string(*event.state);
      } else {
        out.append(to_string(*event.previous)).append(" -> ").append(to_string(*event.state));
      }
      break;
    case EventKind::control:
      out = "control: ";
      out.append(event.control ? to_string(*event.control) : std::string_view("unknown"));
      break;
    case EventKind::restart:
      out = "restart in " +
            std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                               event.backoff.value_or(std::chrono::nanoseconds(0)))
                               .count()) +
            " ms";
      if (event.cause) out += " after: " + describe(event.cause);
      break;
    case EventKind::give_up:
      out = "gave up";
      if (event.cause) out += "; last failure: " + describe(event.cause);
      break;
    case EventKind::abandoned:
      out = "abandoned";
      break;
  }
  if (!event.detail.empty()) out += " (" + event.detail + ")";
  return out;
}

namespace {
void collect_stale(const ChildStatus& s, std::vector<std::string>& out) {
  if (s.stale) out.push_back(s.path);
  for (const auto& c : s.children) collect_stale(c, out);
}
}  // namespace

const ChildStatus* ChildStatus::find(std::string_view relative_path) const {
  const ChildStatus* at = this;
  std::string_view rest = relative_path;
  // One level per turn of the loop, never a call per level: a 20,000-deep
  // tree is searched in constant stack. Only names are compared, not whole
  // paths, which would make a deep search quadratic in the depth.
  while (!rest.empty()) {
    const std::size_t skip = at->path.empty() ? 0 : at->path.size() + 1;
    const ChildStatus* below = nullptr;
    std::size_t below_name = 0;
    const ChildStatus* exact = nullptr;
    for (const ChildStatus& c : at->children) {
      if (c.path.size() <= skip || (skip != 0 && c.path[skip - 1] != '/')) continue;
      const std::string_view name = std::string_view(c.path).substr(skip);
      if (name == rest) {
        exact = &c;
        break;
      }
      if (below == nullptr && rest.size() > name.size() && rest[name.size()] == '/' && rest.starts_with(name)) {
        below = &c;
        below_name = name.size();
      }
    }
    if (exact != nullptr) return exact;
    if (below == nullptr) return nullptr;
    at = below;
    rest.remove_prefix(below_name + 1);
  }
  return at;
}

std::vector<std::string> stale_paths(const ChildStatus& status) {
  std::vector<std::string> out;
  collect_stale(status, out);
  return out;
}

}  // namespace pm
