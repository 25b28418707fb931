#include "metrics_stream.hpp"

#include <processmanager/metrics.hpp>

#include <algorithm>
#include <array>
#include <functional>
#include <string_view>
#include <tuple>

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

std::string named(const std::string& path, std::size_t k) {
  return std::string(path).append("#").append(std::to_string(k));
}

}  // namespace

void PathSet::reserve(std::size_t n) {
  std::size_t slots = 16;
  while (slots < 2 * n) slots *= 2;
  if (slots > slots_.size()) grow(slots);
}

void PathSet::grow(std::size_t slots) {
  std::vector<std::string_view> old(slots, std::string_view{});
  old.swap(slots_);
  for (const auto& p : old) {
    if (p.empty()) continue;
    std::size_t i = std::hash<std::string_view>{}(p) & (slots_.size() - 1);
    while (!slots_[i].empty()) i = (i + 1) & (slots_.size() - 1);
    slots_[i] = p;
  }
}

std::pair<std::string_view, bool> PathSet::insert(std::string_view path) {
  if (2 * (used_ + 1) > slots_.size()) grow(std::max<std::size_t>(16, 2 * slots_.size()));
  std::size_t i = std::hash<std::string_view>{}(path) & (slots_.size() - 1);
  for (; !slots_[i].empty(); i = (i + 1) & (slots_.size() - 1)) {
    if (slots_[i] == path) return {slots_[i], false};
  }
  if (left_ < path.size()) {
    const std::size_t size = std::max<std::size_t>(std::size_t{64} * 1024, path.size());
    blocks_.push_back(std::make_unique<char[]>(size));
    free_ = blocks_.back().get();
    left_ = size;
  }
  std::copy(path.begin(), path.end(), free_);
  const std::string_view kept(free_, path.size());
  free_ += path.size();
  left_ -= path.size();
  slots_[i] = kept;
  ++used_;
  return {kept, true};
}

std::uint64_t CounterFloors::shown(std::string_view path, int family, std::uint64_t raw) {
  if (raw == 0 && floors_.empty()) return 0;  // a quiet tree: no key is even made
  const std::string key(path);
  auto it = floors_.find(key);
  if (it == floors_.end()) {
    if (raw == 0) return 0;  // a quiet child costs no entry
    it = floors_.emplace(key, std::array<Floor, 2>{}).first;
  }
  Floor& f = it->second[static_cast<std::size_t>(family)];
  if (raw < f.last) f.offset += f.last;  // a new life under the same path: go on from the old one's count
  f.last = raw;
  return f.offset + raw;
}

MetricsStream::MetricsStream(std::shared_ptr<ManagerCore> root, CounterFloors& floors, std::size_t expected)
    : root_(root), walk_(std::move(root), true), floors_(floors) {
  paths_.reserve(expected + expected / 8);
}

std::vector<std::string> MetricsStream::family_names() {
  std::vector<std::string> out;
  out.reserve(families.size());
  for (const auto& f : families) out.emplace_back(f.name);
  return out;
}

void MetricsStream::child(const ChildStatus& status, const ChildCounters& counters) {
  // Siblings may share a name, and a series must not repeat (a scraper
  // refuses the whole document): the second is shown as "path#2", and so on.
  auto [path, fresh] = paths_.insert(status.path);
  if (!fresh) {
    // Where the search for this path's next free number goes on: a name
    // shared by thousands of siblings costs one try each, not a count from 2.
    std::size_t& k = repeats_.try_emplace(status.path, 2).first->second;
    while (!fresh) std::tie(path, fresh) = paths_.insert(named(status.path, k++));
  }
  path_.assign("{path=\"").append(escape_label_value(path)).append("\"");
  auto line = [&](Part part, std::string_view extra, std::string_view value) {
    std::string& out = block(part);
    out.append(families[part].name).append(path_).append(extra).append("} ").append(value).append("\n");
  };
  line(child_ready, {}, status.ready ? "1" : "0");
  for (const ChildState st : states) {
    std::string extra(",state=\"");
    extra.append(to_string(st)).append("\"");
    line(child_state, extra, st == status.state ? "1" : "0");
  }
  line(restarts, {}, std::to_string(floors_.shown(path, 0, counters.restarts)));
  line(failures, {}, std::to_string(floors_.shown(path, 1, counters.failures)));
  if (counters.heartbeat_age) {
    std::string seconds;
    append_metric_value(seconds, *counters.heartbeat_age);
    line(heartbeat_age, {}, seconds);
  }
}

std::string& MetricsStream::block(std::size_t family) {
  auto& list = blocks_[family];
  // Blocks of a fixed size, never grown: a string of megabytes grown by
  // doubling would copy itself whole, in one slice of the executor.
  if (list.empty() || list.back().size() > block_size - 512) {
    list.emplace_back().reserve(block_size);
  }
  return list.back();
}

std::vector<std::string> MetricsStream::take() {
  std::vector<std::string> out;
  for (auto& list : blocks_) {
    for (auto& b : list) out.push_back(std::move(b));
  }
  blocks_.clear();
  return out;
}

bool MetricsStream::write_some(std::chrono::steady_clock::duration budget) {
  if (done_) return true;
  const auto deadline = std::chrono::steady_clock::now() + budget;
  if (!begun_) {
    begun_ = true;
    blocks_.resize(families.size());
    for (std::size_t i = 0; i < families.size(); ++i) {
      std::string& out = block(i);
      out.append("# HELP ").append(families[i].name).append(" ").append(families[i].help);
      out.append("\n# TYPE ").append(families[i].name).append(" ").append(families[i].type).append("\n");
    }
    const ChildStatus& self = walk_.root();
    block(tree_ready).append(families[tree_ready].name).append(self.ready ? " 1\n" : " 0\n");
    const auto began = run_began(*root_);
    const double unix_seconds = std::chrono::duration<double>(began.time_since_epoch()).count();
    std::string& out = block(start_time);
    out.append(families[start_time].name).append(" ");
    append_metric_value(out, unix_seconds);
    out.append("\n");
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
