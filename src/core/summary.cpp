// ProcessManager::health(): a tree's state, counts and stale heartbeats from
// each manager's books (health_books.hpp), without copying its children.
// /livez, /readyz and the systemd notifier ask it often, on trees of any
// size: what it costs grows with the number of managers, not of services.
#include <algorithm>
#include <unordered_set>

#include "snapshot.hpp"

namespace pm::detail {

namespace {

/// A child of a manager that may be a nested manager, as copied under the lock.
struct NestingPeek {
  std::shared_ptr<ChildNode> node;
  std::shared_ptr<ProcessControlHandler> handle;
  std::string name;
  bool parked = false;
  bool ready = false;
};

/// What one look at one manager found.
struct Look {
  std::shared_ptr<ManagerRun> run;  // null: it has no run, and no children to count
  std::size_t services = 0;
  std::size_t running = 0;
  std::size_t ready = 0;
  std::size_t restarting = 0;
  std::vector<NestingPeek> nesting;
  std::vector<std::string> stale;  // the names of its stale children
};

/// The run's counts into `out`. Under core->mu.
void count(const ManagerRun& run, Look& out) {
  out.services = run.live;
  // Waiting out a backoff, or on the way to its new start: restarting
  // either way, as status() shows it until the new run has begun.
  out.restarting = run.parked.size() + run.restarts_under_way;
  out.running = run.live - out.restarting;
  out.ready = run.ready_count;
}

/// Reads the heartbeats of `nodes` (after the lock: a handle is user code),
/// books what they say under the lock again, and returns the names of the
/// manager's stale children into `out.stale`, with its counts taken anew
/// under the same lock, so that the two agree. `full`: every child with a
/// heartbeat_timeout was read, so the quiet time is set anew.
void judge(ManagerCore& core, const std::shared_ptr<ManagerRun>& run,
           const std::vector<std::shared_ptr<ChildNode>>& nodes, bool full, std::uint64_t linked_before,
           clock::time_point now, Look& out) {
  std::vector<std::optional<clock::time_point>> beats;
  beats.reserve(nodes.size());
  for (const auto& n : nodes) beats.push_back(n->handle->last_heartbeat());
  std::vector<std::string>& names = out.stale;
  std::lock_guard lock(core.mu);
  if (core.current.lock() != run) return;  // the run ended meanwhile: the counts taken before stand
  count(*run, out);
  HealthBooks& books = run->books;
  clock::time_point quiet = clock::time_point::max();
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    ChildNode& n = *nodes[i];
    if (!n.linked) continue;
    auto beat = beats[i];
    // A heartbeat from the future (a handle that makes its own up) counts
    // as now: it must not buy quiet time that a real one never could.
    if (beat && *beat > now) beat = now;
    const bool stale = n.stale(now, beat);
    if (stale != n.found_stale) {
      n.found_stale = stale;
      if (stale) {
        books.stale.push_back(&n);
      } else {
        books.stale.erase(std::find(books.stale.begin(), books.stale.end(), &n));
      }
    }
    // A child whose heartbeat is not judged now (stopping, waiting for a
    // restart) is judged again only after a restart, which brings its new
    // deadline forward itself (HealthBooks::restarted).
    if (!stale && n.beat_watched()) {
      auto last = n.run_started;
      if (beat && *beat > last) last = *beat;
      quiet = std::min(quiet, sat_add(last, *n.options->heartbeat_timeout));
    }
  }
  if (!full) {
    books.quiet_until = std::min(books.quiet_until, quiet);  // the recovered ones
  } else if (books.linked_so_far == linked_before) {
    books.quiet_until = quiet;
  } else {
    // Children linked while the heartbeats were read were not among them,
    // nor are their deadlines in `quiet`: look at all of them next time.
    books.quiet_until = std::min(quiet, now);
  }
  // The list may hold children another call found stale since this one
  // read its heartbeats; one that has since stopped being watched (told to
  // stop, ended, waiting for a restart) is not stale now, whoever found it.
  names.reserve(books.stale.size());
  for (const ChildNode* n : books.stale) {
    if (n->beat_watched()) names.push_back(n->name);
  }
}

Look look_at(ManagerCore& core) {
  Look out;
  std::shared_ptr<ManagerRun> run;
  std::vector<std::shared_ptr<ChildNode>> to_judge;  // released after the lock: user code may go with a node
  bool full = false;
  std::uint64_t linked_before = 0;
  clock::time_point now;
  {
    std::lock_guard lock(core.mu);
    run = core.current.lock();
    if (!run) return out;
    out.run = run;
    count(*run, out);
    HealthBooks& books = run->books;
    out.nesting.reserve(books.nesting.size());
    for (ChildNode* n : books.nesting)
      out.nesting.push_back({n->shared_from_this(), n->handle, n->name, n->parked(), n->ready});
    // Quiet, the usual case: nothing to read. Else the stale ones are read
    // again, and all the watched ones once the quiet time is over.
    now = clock::now();
    full = now >= books.quiet_until;
    const auto& which = full ? books.beating : books.stale;
    if (which.empty()) {
      if (full) books.quiet_until = clock::time_point::max();  // nobody's heartbeat is watched
      return out;
    }
    to_judge.reserve(which.size());
    for (ChildNode* n : which) to_judge.push_back(n->shared_from_this());
    linked_before = books.linked_so_far;
  }
  judge(core, run, to_judge, full, linked_before, now, out);
  return out;
}

/// A supervisor found to supervise a plain service leaves the list of
/// children that may be nested managers: a tree of thousands of supervised
/// services would otherwise cost health() a look at each, every time. (A
/// supervisor's child is one runnable for good, and a service's handle
/// does not turn into a manager's.)
void forget_leaves(ManagerCore& core, const std::shared_ptr<ManagerRun>& run, const std::vector<ChildNode*>& leaves) {
  std::lock_guard lock(core.mu);
  if (core.current.lock() != run) return;
  for (ChildNode* n : leaves) {
    if (n->linked && n->may_nest) run->books.forget_nesting(*n);
  }
}

}  // namespace

HealthSummary summarize(const std::shared_ptr<ManagerCore>& root) {
  HealthSummary out;
  {
    std::lock_guard lock(root->mu);
    out.state = root->self_state;
    out.ready = root->ready;
  }
  // Breadth first with an explicit list, as status(): a chain of managers
  // thousands deep costs no stack. Paths are built only for stale children,
  // from each manager's place in the list.
  struct Visit {
    std::shared_ptr<ManagerCore> core;
    std::size_t parent;   // index of the manager it was found in; npos for the root
    std::string name;     // the name it goes by in its parent's books
    bool parked = false;  // its child node in the parent: waiting for a restart
    bool ready = false;   // its child node in the parent: ready
  };
  constexpr std::size_t npos = static_cast<std::size_t>(-1);
  std::vector<Visit> visits{{root, npos, root->name}};
  std::unordered_set<const ManagerCore*> seen;  // only once a nested manager is met
  std::vector<std::pair<std::size_t, std::string>> stale;
  for (std::size_t i = 0; i < visits.size(); ++i) {
    Look look = look_at(*visits[i].core);
    out.services += look.services;
    out.running += look.running;
    out.ready_services += look.ready;
    out.restarting += look.restarting;
    if (i > 0 && look.run) {
      // A running manager is not a service: its children are counted in its
      // stead. One between runs (restarting, say) counts as one service, as
      // it has none to show.
      --out.services;
      if (visits[i].parked) {
        --out.restarting;
      } else {
        --out.running;
      }
      if (visits[i].ready) --out.ready_services;
    }
    for (auto& name : look.stale) stale.emplace_back(i, std::move(name));
    std::vector<ChildNode*> leaves;
    for (auto& peek : look.nesting) {
      bool leaf = false;
      auto inner = nested_core(peek.handle, &leaf);
      if (leaf) leaves.push_back(peek.node.get());
      if (!inner) continue;  // a supervisor between runs, or of a plain service: a service itself
      if (seen.empty()) seen.insert(root.get());
      // A manager met twice (a supervisor's loop) is entered once.
      if (seen.insert(inner.get()).second) {
        visits.push_back({std::move(inner), i, std::move(peek.name), peek.parked, peek.ready});
      }
    }
    if (!leaves.empty()) forget_leaves(*visits[i].core, look.run, leaves);
  }
  out.stale = stale.size();
  if (stale.empty()) return out;
  out.stale_paths.reserve(stale.size());
  for (auto& [at, name] : stale) {
    std::vector<const std::string*> names{&name};
    for (std::size_t v = at; v != npos; v = visits[v].parent) names.push_back(&visits[v].name);
    std::string path;
    for (auto it = names.rbegin(); it != names.rend(); ++it) {
      if (!path.empty()) path += '/';
      path += **it;
    }
    out.stale_paths.push_back(std::move(path));
  }
  std::sort(out.stale_paths.begin(), out.stale_paths.end());
  return out;
}

}  // namespace pm::detail
