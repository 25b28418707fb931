// What one run of a manager knows and decides: its children's books, its
// deadlines, its restarts and its stop. Everything here runs under the
// manager's lock and calls no user code; the caller carries out the
// Actions after unlocking.
#pragma once

#include "health_books.hpp"
#include "manager.hpp"
#include "shards.hpp"

namespace pm::detail {

/// Under a restarting strategy, the siblings that stop and restart with a
/// child that restarts, newest first (the order they are told in): OTP's
/// rule for each strategy. stop_all restarts nobody with anybody (a child
/// with restart options restarts alone).
inline std::vector<ChildNode*> restart_group(Strategy strategy, const ChildNode& restarting, ChildNode* tail) {
  std::vector<ChildNode*> group;
  switch (strategy) {
    case Strategy::stop_all:
    case Strategy::one_for_one:
      break;
    case Strategy::one_for_all:  // every other child
      for (ChildNode* m = tail; m != nullptr; m = m->prev) {
        if (m != &restarting) group.push_back(m);
      }
      break;
    case Strategy::rest_for_one:  // the children started after it
      for (ChildNode* m = tail; m != nullptr && m != &restarting; m = m->prev) group.push_back(m);
      break;
  }
  return group;
}

/// What was learned about a child's end outside the lock.
struct ChildEnd {
  std::exception_ptr error;                     // what it ended with, if anything
  bool timed_out = false;                       // cancelled after its timeout: not stopped, not failed
  std::vector<Failure> failures;                // empty: it did not fail
  std::vector<std::string> nested_not_stopped;  // from a nested manager's report
};

/// One execution of process_start(). Its frame owns it; its children refer
/// to it weakly, so a child that outlives the run (abandoned) reports into
/// nothing, never into the next run, and a torn-down run frees its books.
class ManagerRun {
 public:
  ManagerRun(std::shared_ptr<ManagerCore> c, asio::any_io_executor b)
      : core(std::move(c)), base(std::move(b)), intensity(core->max_restarts, core->window) {}
  /// Reached when the run's frame is destroyed unfinished (its io_context
  /// torn down): the children it still owns are let go. No lock: nothing
  /// else can reach the run any more.
  ~ManagerRun() {
    for (ChildNode* n = head; n != nullptr;) {
      ChildNode* next = n->next;
      n->linked = false;
      auto keep = std::move(n->keep);  // may destroy n
      n = next;
    }
  }
  ManagerRun(const ManagerRun&) = delete;
  ManagerRun& operator=(const ManagerRun&) = delete;

  const std::shared_ptr<ManagerCore> core;
  const asio::any_io_executor base;
  // Set before the run is shared. In a sharded run: the set, and counted
  // work on each shard, so that no shard's run() returns while this run may
  // still place or hear from a child there; the work is let go when the
  // run's frame ends (only that frame touches it).
  std::shared_ptr<const ShardRing> shards;
  std::vector<asio::any_io_executor> shard_work;

  // Everything below is under core->mu.
  ChildNode* head = nullptr;  // insertion order, head first
  ChildNode* tail = nullptr;
  std::size_t live = 0;
  std::size_t ready_count = 0;
  std::size_t special = 0;  // live children with deadlines of their own (ChildNode::has_own_deadlines)
  std::size_t lasts = 0;    // live children told to stop only once the others have ended (stop_last)
  bool accepting = true;
  // The initial children of a concurrent start are still being started: the
  // first ones may be ready before the last ones exist, and that is not ready.
  bool launching = true;
  bool stopping = false;
  bool telling = false;  // a concurrent stop's messages are still being handed out
  bool forcing = false;
  // The stop began while a restarting group's members were stopping: their
  // timeouts run from when the group told them, so the grace is judged
  // child by child, as when some have timeouts of their own.
  bool stop_per_child = false;
  clock::time_point stop_at{};
  clock::time_point force_at{};
  std::vector<Failure> failures;
  std::vector<std::string> not_stopped;
  asio::steady_timer* timer = nullptr;
  bool wake = false;
  std::vector<std::shared_ptr<Waiter>> stopped_waiters;  // in shutdown()
  // Sequential start: the children still to start, and the one whose
  // readiness the next start waits for.
  std::deque<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>> to_start;
  ChildNode* awaiting = nullptr;  // linked, or null: unlinking clears it
  // Children taken off to_start (or a restart list) that are not linked
  // yet: the manager is not ready while one is on its way.
  std::size_t pending_starts = 0;
  std::deque<RuntimeControlMessage> initial;  // kept messages, for children started later
  // Restarting strategies.
  std::vector<ChildNode*> parked;        // ended children waiting for their restart (mark = when); linked
  std::size_t group_running = 0;         // group members told to stop and still running
  clock::time_point group_restart_at{};  // when the current group restarts
  RestartIntensity intensity;            // the manager's, under a restarting strategy
  HealthBooks books;                     // what health() looks at (health_books.hpp)
  std::size_t restarts_under_way = 0;    // taken off `parked`, their restart not begun yet
  std::size_t undelivered = 0;           // stops decided and not yet handed over (ChildNode::undelivered)

  bool sequential() const { return core->order == StartOrder::sequential; }

  void link(const std::shared_ptr<ChildNode>& node) {
    ChildNode& n = *node;
    n.keep = node;
    n.prev = tail;
    if (tail != nullptr) tail->next = &n;
    tail = &n;
    if (head == nullptr) head = &n;
    n.linked = true;
    ++live;
    books.add(n);
    if (n.has_own_deadlines()) ++special;
    if (n.stops_last()) ++lasts;
  }
  /// Takes `n` off the books; returns the run's reference to it, to be
  /// released after the lock (its destructor may run user code).
  [[nodiscard]] std::shared_ptr<ChildNode> unlink(ChildNode& n) {
    if (!n.linked) return nullptr;
    if (awaiting == &n) awaiting = nullptr;
    if (n.prev != nullptr) n.prev->next = n.next;
    if (n.next != nullptr) n.next->prev = n.prev;
    if (head == &n) head = n.next;
    if (tail == &n) tail = n.prev;
    n.prev = n.next = nullptr;
    n.linked = false;
    --live;
    if (n.restarting()) --restarts_under_way;
    books.remove(n);
    if (n.ready) --ready_count;
    if (n.has_own_deadlines()) --special;
    if (n.stops_last()) --lasts;
    if (n.restarts != 0 || n.failures != 0) {
      auto& r = core->retired[n.name];
      r.restarts += n.restarts;
      r.failures += n.failures;
    }
    return std::move(n.keep);
  }
  /// Wakes the run's loop; call with core->mu held.
  void poke() {
    wake = true;
    if (timer != nullptr) timer->cancel();
  }

  /// Records a state change and queues its event. Under core->mu.
  void set_state(ChildNode& n, ChildState to, std::exception_ptr cause = {}, std::string detail = {},
                 sys_clock::time_point when = {}) {
    if (n.state == to) return;
    const ChildState from = n.state;
    n.state = to;
    n.since = when == sys_clock::time_point{} ? now_us() : when;
    // Routine changes with nobody listening build nothing.
    const bool notable = to == ChildState::failed || to == ChildState::abandoned || to == ChildState::restarting ||
                         cause || !detail.empty();
    if (!notable && !core->observed()) return;
    Event ev;
    ev.kind = EventKind::state;
    ev.state = to;
    ev.previous = from;
    ev.cause = std::move(cause);
    ev.detail = std::move(detail);
    ev.path = core->event_path(n.name);
    ev.time = n.since;
    core->queue(std::move(ev));
  }

  /// Whether the manager counts as ready now. Under core->mu.
  bool all_ready() const {
    return accepting && !launching && !stopping && to_start.empty() && pending_starts == 0 && ready_count == live;
  }
  /// Publishes a change of readiness: fills in who to tell. Under core->mu.
  void update_ready(ReadyNotice& out) {
    const bool now_ready = all_ready();
    // Waiters also hear "false" once shutdown begins: it will not be ready.
    if (now_ready == core->ready && !(stopping && !core->ready_waiters.empty())) return;
    const bool changed = now_ready != core->ready;
    core->ready = now_ready;
    out.emplace();
    out->ready = now_ready;
    if (changed) out->target = core->ready_target.lock();
    if (now_ready) {
      core->set_self(ChildState::ready);
      out->watch = core->ready_watch;
    } else if (changed && core->self_state == ChildState::ready) {
      core->set_self(ChildState::running);
    }
    if (now_ready || stopping) out->waiters.swap(core->ready_waiters);
  }

  /// Starts the graceful stop. Under core->mu; the returned actions say
  /// whom to tell.
  void begin_stop(clock::time_point now, Actions& act) {
    if (stopping) return;
    stopping = true;
    stop_at = now;
    if (group_running > 0) stop_per_child = true;
    core->set_self(ChildState::stopping);
    to_start.clear();  // a sequential start ends here
    awaiting = nullptr;
    cancel_restarts(act);
    if (!sequential()) {
      // The grace period starts once every child has its message (see
      // told_all): a thread that hands them out slowly must not let the
      // grace run out on a child that was never asked.
      telling = true;
      act.stop_fanout = true;
      act.stop.reserve(act.stop.size() + live);
      // Newest first, as a sequential stop would; it also suits Asio's
      // timer heap, where the newest timers sit at the end and leave in O(1).
      const auto when = now_us();  // one timestamp for the whole fan-out
      // A child that stops last is told once it is alone with its like
      // (tell_lasts, from the loop).
      const bool alone = live == lasts;
      for (ChildNode* n = tail; n != nullptr; n = n->prev) {
        if (alone || !n->stops_last()) tell(*n, act, stop_at, when);
      }
    }
    poke();
  }
  /// The stops of one Actions were handed to their handles. Restarts held
  /// back for them may begin, the run may end, and after a concurrent
  /// stop's fan-out its grace (and each told child's own timeout) starts.
  /// The count of stops on their way drops only in on_released().
  void on_delivered(const Actions& act, clock::time_point now) {
    bool wake_loop = false;
    // Only stops told while the run was not stopping can hold a restart
    // back; a stop's fan-out (tens of thousands of children) is not walked
    // a second time.
    if (act.counted > 0) {
      for (const auto& n : act.stop) {
        if (n->undelivered == 0) continue;
        --n->undelivered;
        wake_loop = wake_loop || (n->undelivered == 0 && n->parked());
      }
    }
    if (wake_loop) poke();
    if (act.stop_fanout) on_told_all(now);
  }
  /// The thread that delivered `told` stops holds no child of this run any
  /// more: the run may end once none is on its way.
  void on_released(std::size_t told) {
    undelivered -= told;
    if (undelivered == 0 && live == 0) poke();
  }
  /// A concurrent stop's messages are all handed out: its grace (and each
  /// told child's own timeout) starts now.
  void on_told_all(clock::time_point now) {
    if (!telling) return;
    telling = false;
    // Those told by the fan-out carry its start as their mark; a member
    // told earlier by its restarting group keeps its own.
    const clock::time_point fanout_at = stop_at;
    stop_at = now;
    if (special > 0 || stop_per_child) {
      for (ChildNode* n = head; n != nullptr; n = n->next) {
        if (n->phase == Phase::told && n->mark == fanout_at) n->mark = now;
      }
    }
    poke();
  }
  void tell(ChildNode& n, Actions& act, clock::time_point now, sys_clock::time_point when = {}) {
    // A child that has ended is not told: its next run must not read a
    // stop meant for this one.
    if (n.told() || n.phase == Phase::ended || n.parked()) return;
    n.mark = now;
    set_state(n, ChildState::stopping, {}, {}, when);
    // A restart about to begin drops stale stops from the handle first:
    // this one is delivered once the new run exists (restart_child).
    if (n.phase == Phase::restarting) {
      n.enter(Phase::restarting_told);
      return;
    }
    n.enter(Phase::told);
    act.stop.push_back(n.keep);
    ++undelivered;
    if (!stopping) {
      // Told with its group: it may end and be due for its restart before
      // this stop is handed over. (Once the run stops, nothing restarts.)
      ++n.undelivered;
      ++act.counted;
    }
  }
  void force_one(ChildNode& n, clock::time_point now, Actions& act) {
    if (n.forced() || !(n.runs() || n.restarting())) return;
    n.enter(Phase::forced);
    n.mark = now;
    if (auto sp = n.weak_from_this().lock()) act.force.push_back(std::move(sp));
  }
  /// Children waiting for a restart are simply done: a stop or a
  /// cancellation ends their wait. Under core->mu.
  void cancel_restarts(Actions& act) {
    for (ChildNode* p : parked) {
      p->enter(Phase::ended);
      set_state(*p, ChildState::stopped, {}, "stopping; restart cancelled");
      act.released.push_back(unlink(*p));
    }
    parked.clear();
  }
  /// Marks every live child forced. Under core->mu.
  void begin_force(clock::time_point now, Actions& act) {
    forcing = true;
    // Cancelled without a stop first (our parent's cancellation): a child
    // waiting for its restart would otherwise wait out the abandon bound.
    if (!stopping) cancel_restarts(act);
    stopping = true;
    force_at = now;
    act.force.reserve(live);
    for (ChildNode* n = tail; n != nullptr; n = n->prev) force_one(*n, force_at, act);
  }
  void abandon(ChildNode& n, Actions& act) {
    const std::string path = core->name + "/" + n.name;
    not_stopped.push_back(path);
    Event ev;
    ev.kind = EventKind::abandoned;
    ev.path = core->event_path(n.name);
    ev.time = now_us();
    ev.detail = "ignored terminal cancellation; abandoned so that the manager can stop";
    core->queue(std::move(ev));
    set_state(n, ChildState::abandoned);
    act.abandoned.push_back(n.runnable);
    act.released.push_back(unlink(n));
  }

  /// The next moment the loop must look, given the state. Under core->mu.
  clock::time_point next_deadline() const {
    clock::time_point d = clock::time_point::max();
    if (forcing) {
      d = sat_add(force_at, core->abandon);
    } else if (stopping && !sequential() && special == 0 && !stop_per_child && !telling) {
      d = sat_add(stop_at, core->grace);
    }
    if (!stopping && !parked.empty() && group_running == 0) {
      for (const auto& p : parked) {
        if (p->undelivered == 0) d = std::min(d, p->mark);  // else on_delivered wakes the loop
      }
    }
    if (special > 0 || sequential() || stop_per_child || (group_running > 0 && !stopping)) {
      for (const ChildNode* n = head; n != nullptr; n = n->next) {
        if (n->forced()) {
          d = std::min(d, sat_add(n->mark, core->abandon));
        } else if (!n->runs()) {
          continue;  // parked, or its restart under way
        } else if (n->phase == Phase::told && !telling) {
          d = std::min(d, sat_add(n->mark, n->timeout_or(core->grace)));
        } else if (!stopping && !n->ready && n->options && n->options->start_timeout) {
          d = std::min(d, sat_add(n->mark, *n->options->start_timeout));
        }
      }
    }
    return d;
  }

  /// Looks at the clock and the children; decides what to do. Under core->mu.
  void plan(clock::time_point now, bool parent_cancelled, Actions& act) {
    if (parent_cancelled && !forcing) {
      // A fan-out still in flight finishes first (told_all pokes us): every
      // child is asked to stop before it is cancelled, even when our parent
      // ran out of patience while another thread was handing messages out.
      if (telling) return;
      begin_force(now, act);
      return;
    }
    if (!stopping && (special > 0 || sequential())) check_start_timeouts(now, act);
    if (!stopping && group_running > 0) plan_group_stop(now, act);
    if (!stopping && !parked.empty() && group_running == 0) plan_restarts(now, act);
    if (!stopping && sequential()) {
      const bool gate_open = !awaiting || awaiting->ready || !awaiting->linked;
      if (gate_open && !to_start.empty()) {
        act.start.push_back(std::move(to_start.front()));
        to_start.pop_front();
        ++pending_starts;  // not ready until it is on the books
      }
      return;
    }
    if (!stopping) return;
    if (forcing) {
      if (now >= sat_add(force_at, core->abandon)) {
        give_up(act);
      }
      return;
    }
    if (telling) return;  // the grace starts once every child has its message
    if (sequential()) {
      plan_sequential_stop(now, act);
    } else if (special == 0 && !stop_per_child) {
      if (now >= sat_add(stop_at, core->grace)) begin_force(now, act);
    } else {
      // Some children have timeouts of their own: each is forced at its
      // own deadline, and abandoned at its own bound after that.
      for (ChildNode* n = head; n != nullptr;) {
        ChildNode* next = n->next;
        if (n->forced()) {
          if (now >= sat_add(n->mark, core->abandon)) abandon(*n, act);
        } else if (n->phase == Phase::told && now >= sat_add(n->mark, n->timeout_or(core->grace))) {
          force_one(*n, now, act);
        }
        n = next;
      }
      // Every other child ended, or was abandoned just now.
      if (lasts > 0 && live == lasts) tell_lasts(now, act);
    }
  }

  /// Every other child has ended: those that stop last are told now.
  void tell_lasts(clock::time_point now, Actions& act) {
    for (ChildNode* n = tail; n != nullptr; n = n->prev) {
      if (!n->told()) tell(*n, act, now);
    }
  }
  /// The child a sequential stop deals with next: the newest, leaving
  /// those that stop last until they are alone.
  ChildNode* next_to_stop() const {
    if (lasts == 0 || live == lasts) return tail;
    for (ChildNode* n = tail; n != nullptr; n = n->prev) {
      if (!n->stops_last()) return n;
    }
    return tail;
  }
  /// Reverse insertion order: the last live child is told, waited for (its
  /// own timeout), forced, and abandoned after the bound, before the one
  /// before it is told.
  void plan_sequential_stop(clock::time_point now, Actions& act) {
    while (ChildNode* next = next_to_stop()) {
      ChildNode& n = *next;
      if (!n.told()) {
        tell(n, act, now);
        return;
      }
      if (!n.forced()) {
        if (now >= sat_add(n.mark, n.timeout_or(core->grace))) force_one(n, now, act);
        return;
      }
      if (now < sat_add(n.mark, core->abandon)) return;
      abandon(n, act);
    }
  }

  /// Group members that outstay their shutdown timeout are cancelled, and
  /// abandoned after the bound (they are then not restarted).
  void plan_group_stop(clock::time_point now, Actions& act) {
    for (ChildNode* n = head; n != nullptr;) {
      ChildNode* next = n->next;
      if (n->group && n->runs()) {
        if (n->forced()) {
          if (now >= sat_add(n->mark, core->abandon)) {
            n->group = false;
            --group_running;
            abandon(*n, act);
          }
        } else if (n->phase == Phase::told && now >= sat_add(n->mark, n->timeout_or(core->grace))) {
          force_one(*n, now, act);
        }
      }
      n = next;
    }
  }

  /// Restarts the parked children whose time has come, in insertion order
  /// (one at a time, each once the previous is ready, when sequential).
  void plan_restarts(clock::time_point now, Actions& act) {
    if (sequential() && awaiting && awaiting->linked && !awaiting->ready && !awaiting->parked()) return;
    for (ChildNode* n = head; n != nullptr; n = n->next) {
      // A stop meant for its last run and still on its way holds it back.
      if (!n->parked() || n->mark > now || n->undelivered > 0) continue;
      parked.erase(std::find(parked.begin(), parked.end(), n));
      n->enter(Phase::restarting);
      ++restarts_under_way;
      act.restart.push_back(n->keep);
      if (sequential()) break;
    }
  }

  /// Under a restarting strategy, or for a child with restart options under
  /// stop_all, decides what a child's end means. Returns true when it is
  /// handled here: kept for a restart, let go without failing the manager
  /// (temporary), or the manager gave up. One engine for every strategy:
  /// under stop_all the child's own RestartOptions limit it (its
  /// max_restarts within its window), under the others the manager's
  /// intensity does. Under core->mu.
  bool supervise_end(const std::shared_ptr<ChildNode>& node, const std::exception_ptr& e, bool failed,
                     clock::time_point now, Actions& act) {
    ChildNode& n = *node;
    const bool own_limit = core->strategy == Strategy::stop_all;
    if (own_limit && !(n.options && n.options->restart)) return false;
    if (stopping) {
      // No restarts now; but a temporary child's failure stays its own.
      const bool temporary = n.options && n.options->restart && n.options->restart->policy == RestartPolicy::temporary;
      if (!failed || !temporary) return false;
      n.last_error = e;
      set_state(n, ChildState::failed, e, "temporary child; not restarted");
      return true;
    }
    if (n.group) {
      // Stopped so that its group restarts together: wait with the others.
      n.group = false;
      --group_running;
      if (failed) n.last_error = e;
      if (n.options && n.options->restart && n.options->restart->policy == RestartPolicy::temporary) {
        // As in OTP, a temporary child is never restarted, not even with
        // its group: it leaves the books.
        set_state(n, failed ? ChildState::failed : ChildState::stopped, e,
                  "temporary child; not restarted with its group");
        return true;
      }
      ++n.restarts;
      park(node, std::max(now, group_restart_at));
      set_state(n, ChildState::restarting, {}, "restarting with its group");
      return true;
    }
    const RestartOptions ro = n.options && n.options->restart ? *n.options->restart : RestartOptions{};
    const bool again = failed ? ro.policy != RestartPolicy::temporary : ro.policy == RestartPolicy::permanent;
    if (!again) {
      if (!failed) return false;
      n.last_error = e;
      set_state(n, ChildState::failed, e, "temporary child; not restarted");
      return true;
    }
    const std::string path = core->name + "/" + n.name;
    if (own_limit && !n.intensity) n.intensity = std::make_unique<RestartIntensity>(ro.max_restarts, ro.window);
    RestartIntensity& limit = own_limit ? *n.intensity : intensity;
    if (!limit.record(now)) {
      std::string reason = limit.exceeded();
      std::exception_ptr cause = e;
      if (!cause) cause = std::make_exception_ptr(std::runtime_error("'" + path + "' ended and is permanent"));
      Event ev;
      ev.kind = EventKind::give_up;
      ev.path = core->event_path(n.name);
      ev.time = now_us();
      ev.cause = cause;
      ev.detail = reason;
      core->queue(std::move(ev));
      n.last_error = cause;
      set_state(n, ChildState::failed, cause, reason);
      failures.push_back(Failure{path, cause, std::move(reason), false});
      begin_stop(now, act);
      return true;
    }
    // Backoff: initial * factor^(k-1), capped, k counting the restarts since
    // the child last ran reset_after without ending.
    if (now - n.run_started >= ro.reset_after) n.consecutive = 0;
    ++n.consecutive;
    const auto backoff = backoff_delay(ro.backoff, n.consecutive);
    ++n.restarts;
    if (failed) n.last_error = e;
    Event ev;
    ev.kind = EventKind::restart;
    ev.path = core->event_path(n.name);
    ev.time = now_us();
    ev.cause = e;
    ev.backoff = backoff;
    ev.restart = n.restarts;
    ev.detail = failed ? "failed" : "ended; permanent";
    core->queue(std::move(ev));
    park(node, sat_add(now, backoff));
    set_state(n, ChildState::restarting, e);
    // The rest of its group stops (newest first) and restarts with it.
    group_restart_at = sat_add(now, backoff);
    for (ChildNode* m : restart_group(core->strategy, n, tail)) {
      if (!m->runs() || m->group) continue;  // waiting for a restart already, or told already
      m->group = true;
      ++group_running;
      tell(*m, act, now);
    }
    return true;
  }

  /// What a child's end does, decided from what was learned about it
  /// outside the lock. Returns the run's reference to it when it leaves the
  /// books (released by the caller after unlocking); fills in whom to tell
  /// and what readiness became. Under core->mu.
  [[nodiscard]] std::shared_ptr<ChildNode> on_end(const std::shared_ptr<ChildNode>& node, ChildEnd end,
                                                  clock::time_point now, Actions& act, ReadyNotice& readiness) {
    // Abandoned (taken off the books) before it ended: it is no longer
    // this manager's, and its end is not reported. The run it belonged to
    // may have completed, and completion means every event was delivered.
    if (!node->linked) return nullptr;
    node->enter(Phase::ended);
    const bool late = !accepting;
    const bool was_awaited = awaiting == node.get();
    const bool failed = !end.failures.empty();
    if (failed) ++node->failures;
    if (!late && supervise_end(node, end.error, failed, now, act)) {
      // Kept for a restart, or let go: nothing more to do here.
    } else if (end.timed_out) {
      not_stopped.push_back(core->name + "/" + node->name);
      set_state(*node, ChildState::stopped, end.error, "did not stop within its timeout; cancelled");
    } else if (failed) {
      node->last_error = end.error;
      failures.insert(failures.end(), end.failures.begin(), end.failures.end());
      not_stopped.insert(not_stopped.end(), end.nested_not_stopped.begin(), end.nested_not_stopped.end());
      set_state(*node, ChildState::failed, end.error);
      begin_stop(now, act);
    } else {
      not_stopped.insert(not_stopped.end(), end.nested_not_stopped.begin(), end.nested_not_stopped.end());
      set_state(*node, ChildState::stopped, {}, late ? "ended after its manager had abandoned it" : std::string());
      if (!core->auto_cleanup) ++core->finished_kept;
      if (node->options && node->options->significant && !stopping) {
        Event ev;
        ev.kind = EventKind::state;
        ev.path = core->own_path();
        ev.time = now_us();
        ev.state = ChildState::stopping;
        ev.previous = core->self_state;
        ev.detail = "significant child '" + node->name + "' ended; stopping";
        core->queue(std::move(ev));
        begin_stop(now, act);
      }
    }
    std::shared_ptr<ChildNode> released;
    if (!node->parked()) released = unlink(*node);
    // The loop waits for the last child; in sequential order it also moves
    // on at each end (the next start, or the next stop in reverse order);
    // a restart or a group's end needs it too.
    if (live == 0 || was_awaited || (sequential() && stopping) || special > 0 || node->parked() || group_running > 0 ||
        !parked.empty()) {
      poke();
    }
    update_ready(readiness);
    return released;
  }

  /// A restart has begun: the child runs again from `now`. Returns whether
  /// it must be told to stop at once (the manager's stop or its group's
  /// reached it while the restart was on its way). Under core->mu.
  Phase on_restarted(ChildNode& n, clock::time_point now) {
    if (!n.linked) return Phase::forced;  // abandoned (the manager gave up) while on its way
    if (n.restarting()) --restarts_under_way;
    switch (n.phase) {
      case Phase::restarting:
        n.enter(Phase::running);
        n.mark = now;
        set_state(n, ChildState::starting);
        break;
      case Phase::restarting_told:
        n.enter(Phase::told);  // its stop timeout runs from when it was told
        break;
      default:
        break;  // forced while on its way: cancelled once it runs
    }
    n.run_started = now;
    books.restarted(n);
    if (sequential()) awaiting = &n;
    poke();  // its start timeout, or the next sequential restart
    return n.phase;
  }

  void park(const std::shared_ptr<ChildNode>& node, clock::time_point at) {
    ChildNode& n = *node;
    n.enter(Phase::parked);
    n.mark = at;
    if (n.ready) {
      n.ready = false;
      --ready_count;
    }
    parked.push_back(&n);
  }

  void check_start_timeouts(clock::time_point now, Actions& act) {
    for (ChildNode* n = head; n != nullptr; n = n->next) {
      if (n->ready || n->phase != Phase::running || !n->options || !n->options->start_timeout) continue;
      if (now < sat_add(n->mark, *n->options->start_timeout)) continue;
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*n->options->start_timeout).count();
      const std::string path = core->name + "/" + n->name;
      auto cause = std::make_exception_ptr(
          std::runtime_error("'" + path + "' did not become ready within " + std::to_string(ms) + " ms"));
      failures.push_back(Failure{path, cause, "start timeout", false});
      n->last_error = cause;
      ++n->failures;
      set_state(*n, ChildState::failed, cause, "start timeout");
      begin_stop(now, act);
      return;
    }
  }

  void give_up(Actions& act) {
    act.give_up = true;
    accepting = false;
    while (head != nullptr) abandon(*head, act);
  }
};

}  // namespace pm::detail
