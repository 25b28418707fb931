#include "metrics_stream.hpp"

#include <processmanager/metrics.hpp>

#include <array>
#include <string_view>

#include "metrics_text.hpp"

namespace pm::detail {

namespace {

/// The families, in the document's order, with their type and help.
struct Family {
  std::string_view name;
  std::string_view type;
  std::string_view help;
};
constexpr std::array<Family, 7> families{{
    {"processmanager_ready", "gauge", "1 while every service of the tree is ready, else 0."},
    {"processmanager_start_time_seconds", "gauge", "Unix time at which the tree's current run began."},
    {"processmanager_child_ready", "gauge", "1 while the service counts as ready, else 0."},
    {"processmanager_child_state", "gauge", "1 for the service's current state, 0 for the others."},
    {"processmanager_child_restarts_total", "counter", "Restarts of the service since the process began."},
    {"processmanager_child_failures_total", "counter",
     "Runs of the service that failed (threw, or missed a start timeout) since the process began."},
    {"processmanager_child_heartbeat_age_seconds", "gauge",
     "Seconds since the service's last heartbeat (or its start), for services with a heartbeat_timeout."},
}};
enum Part : std::size_t { tree_ready, start_time, child_ready, child_state, restarts, failures, heartbeat_age };

constexpr std::array<ChildState, 8> states{ChildState::starting,   ChildState::running,  ChildState::ready,
                                           ChildState::stopping,   ChildState::stopped,  ChildState::failed,
                                           ChildState::restarting, ChildState::abandoned};

}  // namespace

std::uint64_t CounterFloors::shown(const std::string& path, int family, std::uint64_t raw) {
  auto it = floors_.find(path);
  if (it == floors_.end()) {
    if (raw == 0) return 0;  // a quiet child costs no entry
    it = floors_.emplace(path, std::array<Floor, 2>{}).first;
  }
  Floor& f = it->second[static_cast<std::size_t>(family)];
  if (raw < f.last) f.offset += f.last;  // a new life under the same path: go on from the old one's count
  f.last = raw;
  return f.offset + raw;
}

MetricsStream::MetricsStream(std::shared_ptr<ManagerCore> root, CounterFloors& floors)
    : root_(root), walk_(std::move(root), true), floors_(floors) {}

std::vector<std::string> MetricsStream::family_names() {
  std::vector<std::string> out;
  for (const auto& f : families) out.emplace_back(f.name);
  return out;
}

void MetricsStream::child(const ChildStatus& status, const ChildCounters& counters) {
  path_.assign("{path=\"").append(escape_label_value(status.path)).append("\"");
  auto line = [&](Part part, std::string_view extra, std::string_view value) {
    parts_[part].append(families[part].name).append(path_).append(extra).append("} ").append(value).append("\n");
  };
  line(child_ready, {}, status.ready ? "1" : "0");
  for (const ChildState st : states) {
    std::string extra(",state=\"");
    extra.append(to_string(st)).append("\"");
    line(child_state, extra, st == status.state ? "1" : "0");
  }
  line(restarts, {}, std::to_string(floors_.shown(status.path, 0, counters.restarts)));
  line(failures, {}, std::to_string(floors_.shown(status.path, 1, counters.failures)));
  if (counters.heartbeat_age) {
    std::string seconds;
    append_metric_value(seconds, *counters.heartbeat_age);
    line(heartbeat_age, {}, seconds);
  }
}

bool MetricsStream::write_some(std::chrono::steady_clock::duration budget) {
  if (done_) return true;
  const auto deadline = std::chrono::steady_clock::now() + budget;
  if (!begun_) {
    begun_ = true;
    parts_.resize(families.size());
    for (std::size_t i = 0; i < families.size(); ++i) {
      parts_[i].append("# HELP ").append(families[i].name).append(" ").append(families[i].help);
      parts_[i].append("\n# TYPE ").append(families[i].name).append(" ").append(families[i].type).append("\n");
    }
    const ChildStatus& self = walk_.root();
    parts_[tree_ready].append(families[tree_ready].name).append(self.ready ? " 1\n" : " 0\n");
    const auto began = run_began(*root_);
    const double unix_seconds = std::chrono::duration<double>(began.time_since_epoch()).count();
    parts_[start_time].append(families[start_time].name).append(" ");
    append_metric_value(parts_[start_time], unix_seconds);
    parts_[start_time].append("\n");
  }
  TreeWalk::Step step;
  for (unsigned written = 0; walk_.next(step);) {
    if (step.kind == TreeWalk::Step::Kind::close) continue;
    child(*step.status, *step.counters);
    if (++written % 32 == 0 && std::chrono::steady_clock::now() >= deadline) return false;
  }
  done_ = true;
  return true;
}

}  // namespace pm::detail
