#include <processmanager/process_manager.hpp>

#include <processmanager/builtin/restart.hpp>

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <typeinfo>
#include <utility>

#include "log.hpp"

namespace pm {

namespace {

using clock = std::chrono::steady_clock;
constexpr std::chrono::nanoseconds default_grace = std::chrono::seconds(30);
constexpr std::chrono::nanoseconds default_abandon = std::chrono::seconds(5);

std::string default_name() {
  static std::atomic<unsigned long long> next_id{1};
  return "process-manager-" + std::to_string(next_id.fetch_add(1, std::memory_order_relaxed));
}

std::string one_failure(const Failure& f) { return describe(f); }

std::string summary(const std::vector<Failure>& failures) {
  std::string what = "process '" + failures.front().process_name + "' " + one_failure(failures.front());
  if (failures.size() > 1) {
    what += " (and " + std::to_string(failures.size() - 1) + " more:";
    for (std::size_t i = 1; i < failures.size(); ++i) {
      what += (i == 1 ? " '" : ", '") + failures[i].process_name + "' " + one_failure(failures[i]);
    }
    what += ")";
  }
  return what;
}

std::vector<Failure> first_of(std::string process_name, std::exception_ptr cause, std::vector<Failure> failures,
                              std::string reason) {
  if (failures.empty()) failures.push_back(Failure{std::move(process_name), std::move(cause), std::move(reason)});
  return failures;
}

// A child's strand comes from the executor under the manager's own strand:
// a strand of a strand would serialise every child of a nested manager.
asio::any_io_executor base_of(const asio::any_io_executor& ex) {
  if (const auto* s = ex.target<asio::strand<asio::io_context::executor_type>>()) return s->get_inner_executor();
  if (const auto* s = ex.target<asio::strand<asio::thread_pool::executor_type>>()) return s->get_inner_executor();
  if (const auto* s = ex.target<asio::strand<asio::any_io_executor>>()) return s->get_inner_executor();
  return ex;
}

/// True when the io_context was promised a single thread (concurrency hint
/// 1, or a hint without scheduler locking): its handlers never run
/// concurrently, so it serialises each child as a strand would.
bool single_threaded(asio::io_context& ctx) {
  const int hint = asio::use_service<asio::detail::io_context_impl>(ctx).concurrency_hint();
  return hint == 1 ||
         (BOOST_ASIO_CONCURRENCY_HINT_IS_SPECIAL(hint) && !BOOST_ASIO_CONCURRENCY_HINT_IS_LOCKING(SCHEDULER, hint));
}

// A strand per child, except on an io_context that runs on one thread: there
// a strand only costs (two extra scheduler hops per wake-up, an allocation
// per child), as Asio's own documentation of implicit strands says.
std::unique_ptr<asio::any_io_executor> strand_of(const asio::any_io_executor& base) {
  if (const auto* io = base.target<asio::io_context::executor_type>()) {
    if (single_threaded(io->context())) return nullptr;
    return std::make_unique<asio::any_io_executor>(asio::make_strand(*io));
  }
  if (const auto* tp = base.target<asio::thread_pool::executor_type>()) {
    return std::make_unique<asio::any_io_executor>(asio::make_strand(*tp));
  }
  return std::make_unique<asio::any_io_executor>(asio::make_strand(base));
}

}  // namespace

std::string describe(const std::exception_ptr& e) {
  if (!e) return "no exception";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}

std::string describe(const Failure& f) {
  if (f.reason.empty()) return "failed: " + describe(f.cause);
  return f.reason + "; last failure: " + describe(f.cause);
}

ProcessError::ProcessError(std::string process_name, std::exception_ptr cause, std::vector<Failure> failures,
                           std::string reason, std::vector<std::string> not_stopped)
    : std::runtime_error(summary(first_of(process_name, cause, failures, reason))),
      failures_(first_of(std::move(process_name), std::move(cause), std::move(failures), std::move(reason))),
      not_stopped_(std::move(not_stopped)) {}

std::vector<Failure> ProcessError::collateral() const {
  std::vector<Failure> out;
  for (std::size_t i = 1; i < failures_.size(); ++i) {
    if (failures_[i].collateral) out.push_back(failures_[i]);
  }
  return out;
}

namespace detail {

class ManagerRun;
class ManagerCore;

using sys_clock = std::chrono::system_clock;

sys_clock::time_point now_us() {
  // Microseconds: what status JSON carries, so that a snapshot round-trips.
  return std::chrono::time_point_cast<std::chrono::microseconds>(sys_clock::now());
}

/// One started child. Owned by its completion handler (and briefly by
/// whoever posts to its strand); the run's list holds plain pointers to the
/// live ones, unlinked under the manager's lock before the node can die.
struct ChildNode final : ReadinessTarget, std::enable_shared_from_this<ChildNode> {
  ChildNode(std::shared_ptr<Runnable> r, std::shared_ptr<ProcessControlHandler> h,
            std::unique_ptr<asio::any_io_executor> s, std::shared_ptr<ManagerRun> run_,
            std::shared_ptr<const ChildOptions> o)
      : runnable(std::move(r)),
        handle(std::move(h)),
        strand(std::move(s)),
        run(std::move(run_)),
        options(std::move(o)) {}
  void on_ready(bool declared) override;
  void on_unready() override;
  /// Where its coroutine runs: its strand, or the manager's base executor
  /// when that runs on one thread.
  const asio::any_io_executor& executor() const;
  ~ChildNode();
  ChildNode(const ChildNode&) = delete;
  ChildNode& operator=(const ChildNode&) = delete;

  std::shared_ptr<Runnable> runnable;
  std::shared_ptr<ProcessControlHandler> handle;
  std::unique_ptr<asio::any_io_executor> strand;  // null: the run's base serialises already
  asio::cancellation_signal cancel;               // the child coroutine's parent slot
  std::shared_ptr<ManagerRun> run;
  std::shared_ptr<const ChildOptions> options;  // null: the defaults

  bool done = false;  // strand-local

  // Under the manager's lock.
  ChildNode* prev = nullptr;
  ChildNode* next = nullptr;
  bool linked = false;
  bool forced = false;
  bool ready = false;
  bool told = false;
  bool watches = false;           // its handle reports readiness
  bool parked = false;            // ended; waits in the run's parked list to be restarted
  bool group = false;             // told to stop so that its group can restart together
  std::uint32_t restarts = 0;     // for status
  std::uint32_t consecutive = 0;  // restarts since it last ran reset_after without ending
  clock::time_point run_started{};
  ChildState state = ChildState::starting;
  sys_clock::time_point since{};
  // When it started, until told to stop; then when told, until forced; then
  // when forced. One field: each deadline only needs the latest.
  clock::time_point mark{};
  std::exception_ptr last_error{};

  /// Whether it runs with a heartbeat older than its heartbeat_timeout (the
  /// clock starting at its start). Under the manager's lock.
  bool stale(clock::time_point now) const {
    if (!options || !options->heartbeat_timeout || parked) return false;
    if (state != ChildState::running && state != ChildState::ready && state != ChildState::starting) return false;
    auto last = run_started;
    if (const auto beat = handle->last_heartbeat(); beat && *beat > last) last = *beat;
    return now - last > *options->heartbeat_timeout;
  }
  std::chrono::nanoseconds timeout_or(std::chrono::nanoseconds grace) const {
    return options && options->shutdown_timeout ? *options->shutdown_timeout : grace;
  }
  std::string name() const {
    try {
      return runnable->process_name();
    } catch (...) {
      return "<unnamed>";
    }
  }
};

/// Someone waiting in wait_ready().
struct ReadyWaiter {
  explicit ReadyWaiter(const asio::any_io_executor& ex) : timer(ex) {}
  asio::steady_timer timer;
  bool done = false;  // under the core's lock
  bool result = false;
};

/// The manager's shared state: its children, its current run, the messages
/// sent while it is not running.
class ManagerCore final : public std::enable_shared_from_this<ManagerCore> {
 public:
  struct Config {
    std::string name;
    std::chrono::nanoseconds grace = default_grace;
    std::chrono::nanoseconds abandon = default_abandon;
    bool auto_cleanup = true;
    StartOrder order = StartOrder::concurrent;
    Strategy strategy = Strategy::stop_all;
    std::size_t max_restarts = 3;
    std::chrono::nanoseconds window = std::chrono::seconds(5);
    EventHook hook{};
  };
  explicit ManagerCore(Config c)
      : name(std::move(c.name)),
        grace(c.grace),
        abandon(c.abandon),
        auto_cleanup(c.auto_cleanup),
        order(c.order),
        strategy(c.strategy),
        max_restarts(c.max_restarts),
        window(c.window),
        hook(std::move(c.hook)) {}

  void control(RuntimeControlMessage msg);
  asio::awaitable<void> shutdown();

  /// Whether state-change events need building: someone listens, or debug
  /// logging is on. Warnings and errors are always built (they are logged).
  bool observed() const { return hook || debug_log || forward.load(std::memory_order_relaxed); }
  /// Queues an event; call with `mu` held, then flush() after unlocking.
  void queue(Event ev, bool forwarded = false) {
    events.emplace_back(std::move(ev), forwarded ? Origin::forwarded : Origin::own);
    has_events.store(true, std::memory_order_release);
  }
  /// Queues an event about the manager itself, for observe() only; under `mu`.
  void queue_self(Event ev) {
    if (!observers || observers->empty()) return;
    ev.path = prefix + name;
    events.emplace_back(std::move(ev), Origin::self);
    has_events.store(true, std::memory_order_release);
  }
  /// Delivers queued events in order, from one thread at a time, unlocked.
  /// Whoever queued an event calls it after unlocking, so a stale "none"
  /// here only means another thread's flush delivers it.
  void flush() {
    if (has_events.load(std::memory_order_acquire)) flush_queued();
  }
  void flush_queued();
  /// The full path of a child, for events and logs. Under `mu`.
  std::string event_path(const std::string& child) const { return prefix + name + "/" + child; }
  /// Sets the manager's own state; under `mu`.
  void set_self(ChildState s) {
    const ChildState previous = self_state;
    self_state = s;
    self_since = now_us();
    if (observers && previous != s) {
      Event ev;
      ev.kind = EventKind::state;
      ev.state = s;
      ev.previous = previous;
      ev.time = self_since;
      queue_self(std::move(ev));
    }
  }

  const std::string name;
  const std::chrono::nanoseconds grace;
  const std::chrono::nanoseconds abandon;
  const bool auto_cleanup;
  const StartOrder order;
  const Strategy strategy;
  const std::size_t max_restarts;
  const std::chrono::nanoseconds window;
  const EventHook hook;
  const bool debug_log = log_enabled(LogLevel::debug);  // PM_LOG is read once per process

  mutable std::mutex mu;
  std::vector<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>> inserted;
  std::weak_ptr<ManagerRun> current;
  std::deque<RuntimeControlMessage> pending;  // sent while not running
  std::size_t finished_kept = 0;              // finished children kept (auto_cleanup off)
  bool ready = false;                         // every child ready, not stopping
  bool finished = false;                      // a run ended and no other began
  ChildState self_state = ChildState::stopped;
  sys_clock::time_point self_since{};
  std::string self_error;
  std::function<void(bool)> ready_watch;        // watch_readiness() on our handle
  std::weak_ptr<ReadinessTarget> ready_target;  // our node in a parent manager
  std::string prefix;                           // "app/" when we run as a child of "app"
  std::vector<std::shared_ptr<ReadyWaiter>> ready_waiters;
  std::weak_ptr<ManagerCore> parent;  // set while we run as a child of another manager
  std::atomic<bool> forward{false};   // the parent observes: pass our events up

  // Who an event is for: ours (log, hook, parent), a nested manager's
  // (logged already), or about the manager itself (observers only).
  enum class Origin : std::uint8_t { own, forwarded, self };
  std::vector<std::pair<Event, Origin>> events;
  using Observers = std::vector<std::pair<std::uint64_t, EventHook>>;
  std::shared_ptr<const Observers> observers;  // copy on write: flush reads it unlocked
  std::uint64_t next_observer = 1;
  std::atomic<bool> watched{false};     // observers is not empty: spares control() a lock
  std::atomic<bool> has_events{false};  // lets flush() skip the lock when idle
  bool dispatching = false;
};

void ManagerCore::flush_queued() {
  for (;;) {
    std::vector<std::pair<Event, Origin>> batch;
    std::shared_ptr<ManagerCore> up;
    std::shared_ptr<const Observers> watchers;
    {
      std::lock_guard lock(mu);
      if (dispatching || events.empty()) return;
      dispatching = true;
      batch.swap(events);
      has_events.store(false, std::memory_order_relaxed);
      if (forward.load(std::memory_order_relaxed)) up = parent.lock();
      watchers = observers;
    }
    for (auto& [ev, origin] : batch) {
      if (origin == Origin::self) {
        if (!watchers) continue;
        for (const auto& [id, fn] : *watchers) {
          try {
            fn(ev);
          } catch (...) {
            // As for the hook: one observer's exception stops nothing.
          }
        }
        continue;
      }
      // A nested manager logged its own events already.
      if (origin == Origin::own) {
        const LogLevel level = level_of(ev);
        if (log_enabled(level)) log(level, ev.path, describe(ev));
      }
      if (hook) {
        try {
          hook(ev);
        } catch (...) {
          // A hook that throws must not stop the story for the others.
        }
      }
      if (up) {
        std::lock_guard lock(up->mu);
        up->queue(ev, true);  // its path is full already
      }
    }
    if (up) up->flush();
    {
      std::lock_guard lock(mu);
      dispatching = false;
      if (events.empty()) return;
    }
  }
}

/// Tells a nested manager (our child) its place in the tree: the path
/// prefix of its events, our node that watches its readiness, and whether
/// its events go up to us.
void attach_parent(ManagerCore& nested, const std::shared_ptr<ManagerCore>& parent,
                   std::weak_ptr<ReadinessTarget> target);

/// The manager's handle. It refers to the core weakly: a child that keeps
/// its own manager's handle (to stop the tree, say) must not keep the
/// manager, and so itself, alive forever. Once the manager is gone the
/// handle does nothing.
class ManagerHandle final : public ProcessControlHandler {
 public:
  explicit ManagerHandle(const std::shared_ptr<ManagerCore>& core) : core_(core) {}
  void control(RuntimeControlMessage msg) override {
    if (auto core = core_.lock()) core->control(std::move(msg));
  }
  asio::awaitable<void> shutdown() override {
    auto core = core_.lock();
    if (core) co_await core->shutdown();
  }
  asio::awaitable<void> reload() override {
    // control() reaches every running service of the subtree synchronously
    // (each child's inbox, recursively), so the broadcast is complete here.
    control(RuntimeControlMessage::reload());
    co_return;
  }
  std::shared_ptr<ManagerCore> core() const { return core_.lock(); }
  bool watch_readiness(std::function<void(bool)> on_ready) override {
    auto core = core_.lock();
    if (!core) return false;
    std::lock_guard lock(core->mu);
    core->ready_watch = std::move(on_ready);
    return true;
  }

 private:
  std::weak_ptr<ManagerCore> core_;
};

/// Whom to tell that the manager's readiness changed (rarely set).
struct ReadyChange {
  bool ready = false;
  std::function<void(bool)> watch;          // told only when it becomes ready
  std::shared_ptr<ReadinessTarget> target;  // our node in a parent: told both ways
  std::vector<std::shared_ptr<ReadyWaiter>> waiters;
};
using ReadyNotice = std::optional<ReadyChange>;

/// What the run loop decided under the lock, carried out after it.
struct Actions {
  std::vector<std::shared_ptr<ProcessControlHandler>> tell;  // shutdown
  std::vector<std::shared_ptr<ChildNode>> force;
  std::vector<std::shared_ptr<Runnable>> abandoned;
  std::vector<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>> start;
  std::vector<std::shared_ptr<ChildNode>> restart;
  std::vector<std::shared_ptr<ChildNode>> released;  // dropped after the lock: their destructors run user code
  bool give_up = false;
  bool stop_fanout = false;  // `tell` is a concurrent stop's fan-out: its grace starts once it is delivered
};

/// One execution of process_start(). Shared by its frame and its children,
/// so that a child that outlives the run (abandoned) reports into a run that
/// is still there, not into the next one.
class ManagerRun {
 public:
  ManagerRun(std::shared_ptr<ManagerCore> c, asio::any_io_executor b) : core(std::move(c)), base(std::move(b)) {}

  const std::shared_ptr<ManagerCore> core;
  const asio::any_io_executor base;

  // Everything below is under core->mu.
  ChildNode* head = nullptr;  // insertion order, head first
  ChildNode* tail = nullptr;
  std::size_t live = 0;
  std::size_t ready_count = 0;
  std::size_t special = 0;  // live children with a shutdown or start timeout of their own
  bool accepting = true;
  // The initial children of a concurrent start are still being started: the
  // first ones may be ready before the last ones exist, and that is not ready.
  bool launching = true;
  bool stopping = false;
  bool telling = false;  // a concurrent stop's messages are still being handed out
  bool forcing = false;
  clock::time_point stop_at{};
  clock::time_point force_at{};
  std::vector<Failure> failures;
  std::vector<std::string> not_stopped;
  asio::steady_timer* timer = nullptr;
  bool wake = false;
  std::vector<std::pair<asio::any_io_executor, asio::any_completion_handler<void()>>> stopped_waiters;
  // Sequential start: the children still to start, and the one whose
  // readiness the next start waits for.
  std::deque<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>> to_start;
  std::shared_ptr<ChildNode> awaiting;
  std::deque<RuntimeControlMessage> initial;  // kept messages, for children started later
  // Restarting strategies.
  std::vector<std::shared_ptr<ChildNode>> parked;  // ended children waiting for their restart (mark = when)
  std::size_t group_running = 0;                   // group members told to stop and still running
  clock::time_point group_restart_at{};            // when the current group restarts
  std::deque<clock::time_point> restart_times;     // within the intensity window

  bool sequential() const { return core->order == StartOrder::sequential; }

  void link(ChildNode& n) {
    n.prev = tail;
    if (tail != nullptr) tail->next = &n;
    tail = &n;
    if (head == nullptr) head = &n;
    n.linked = true;
    ++live;
    if (n.options && (n.options->shutdown_timeout || n.options->start_timeout)) ++special;
  }
  void unlink(ChildNode& n) {
    if (!n.linked) return;
    if (n.prev != nullptr) n.prev->next = n.next;
    if (n.next != nullptr) n.next->prev = n.prev;
    if (head == &n) head = n.next;
    if (tail == &n) tail = n.prev;
    n.prev = n.next = nullptr;
    n.linked = false;
    --live;
    if (n.ready) --ready_count;
    if (n.options && (n.options->shutdown_timeout || n.options->start_timeout)) --special;
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
    ev.path = core->event_path(n.name());
    ev.time = n.since;
    core->queue(std::move(ev));
  }

  /// Whether the manager counts as ready now. Under core->mu.
  bool all_ready() const { return accepting && !launching && !stopping && to_start.empty() && ready_count == live; }
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
    if (now_ready || stopping) {
      for (auto& w : core->ready_waiters) {
        w->done = true;
        w->result = now_ready;
      }
      out->waiters.swap(core->ready_waiters);
    }
  }

  /// Starts the graceful stop. Under core->mu; the returned actions say
  /// whom to tell.
  void begin_stop(Actions& act) {
    if (stopping) return;
    stopping = true;
    stop_at = clock::now();
    core->set_self(ChildState::stopping);
    to_start.clear();  // a sequential start ends here
    if (awaiting) act.released.push_back(std::move(awaiting));
    awaiting.reset();
    // Children waiting for a restart are simply done.
    for (auto& p : parked) {
      p->parked = false;
      set_state(*p, ChildState::stopped, {}, "stopping; restart cancelled");
      unlink(*p);
      act.released.push_back(std::move(p));
    }
    parked.clear();
    if (!sequential()) {
      // The grace period starts once every child has its message (see
      // told_all): a thread that hands them out slowly must not let the
      // grace run out on a child that was never asked.
      telling = true;
      act.stop_fanout = true;
      act.tell.reserve(act.tell.size() + live);
      // Newest first, as a sequential stop would; it also suits Asio's
      // timer heap, where the newest timers sit at the end and leave in O(1).
      const auto when = now_us();  // one timestamp for the whole fan-out
      for (ChildNode* n = tail; n != nullptr; n = n->prev) tell(*n, act, stop_at, when);
    }
    poke();
  }
  void tell(ChildNode& n, Actions& act, clock::time_point now, sys_clock::time_point when = {}) {
    if (n.told) return;
    n.told = true;
    n.mark = now;
    if (n.state != ChildState::stopped && n.state != ChildState::failed)
      set_state(n, ChildState::stopping, {}, {}, when);
    act.tell.push_back(n.handle);
  }
  void force_one(ChildNode& n, clock::time_point now, Actions& act) {
    if (n.forced) return;
    n.forced = true;
    n.mark = now;
    if (auto sp = n.weak_from_this().lock()) act.force.push_back(std::move(sp));
  }
  /// Marks every live child forced. Under core->mu.
  void begin_force(Actions& act) {
    forcing = true;
    stopping = true;
    force_at = clock::now();
    act.force.reserve(live);
    for (ChildNode* n = tail; n != nullptr; n = n->prev) force_one(*n, force_at, act);
  }
  void abandon(ChildNode& n, Actions& act) {
    const std::string path = core->name + "/" + n.name();
    not_stopped.push_back(path);
    Event ev;
    ev.kind = EventKind::abandoned;
    ev.path = core->prefix + path;
    ev.time = now_us();
    ev.detail = "ignored terminal cancellation; abandoned so that the manager can stop";
    core->queue(std::move(ev));
    set_state(n, ChildState::abandoned);
    act.abandoned.push_back(n.runnable);
    unlink(n);
  }

  /// The next moment the loop must look, given the state. Under core->mu.
  clock::time_point next_deadline() const {
    clock::time_point d = clock::time_point::max();
    if (forcing) {
      d = force_at + core->abandon;
    } else if (stopping && !sequential() && special == 0 && !telling) {
      d = stop_at + core->grace;
    }
    if (!stopping && !parked.empty() && group_running == 0) {
      for (const auto& p : parked) d = std::min(d, p->mark);
    }
    if (special > 0 || sequential() || (group_running > 0 && !stopping)) {
      for (const ChildNode* n = head; n != nullptr; n = n->next) {
        if (n->parked) continue;
        if (n->forced) {
          d = std::min(d, n->mark + core->abandon);
        } else if (n->told && !telling) {
          d = std::min(d, n->mark + n->timeout_or(core->grace));
        } else if (!stopping && !n->ready && n->options && n->options->start_timeout) {
          d = std::min(d, n->mark + *n->options->start_timeout);
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
      begin_force(act);
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
      }
      return;
    }
    if (!stopping) return;
    if (forcing) {
      if (now >= force_at + core->abandon) {
        give_up(act);
      }
      return;
    }
    if (telling) return;  // the grace starts once every child has its message
    if (sequential()) {
      plan_sequential_stop(now, act);
    } else if (special == 0) {
      if (now >= stop_at + core->grace) begin_force(act);
    } else {
      // Some children have timeouts of their own: each is forced at its
      // own deadline, and abandoned at its own bound after that.
      for (ChildNode* n = head; n != nullptr;) {
        ChildNode* next = n->next;
        if (n->forced) {
          if (now >= n->mark + core->abandon) abandon(*n, act);
        } else if (n->told && now >= n->mark + n->timeout_or(core->grace)) {
          force_one(*n, now, act);
        }
        n = next;
      }
    }
  }

  /// Reverse insertion order: the last live child is told, waited for (its
  /// own timeout), forced, and abandoned after the bound, before the one
  /// before it is told.
  void plan_sequential_stop(clock::time_point now, Actions& act) {
    while (tail != nullptr) {
      ChildNode& n = *tail;
      if (!n.told) {
        tell(n, act, now);
        return;
      }
      if (!n.forced) {
        if (now >= n.mark + n.timeout_or(core->grace)) force_one(n, now, act);
        return;
      }
      if (now < n.mark + core->abandon) return;
      abandon(n, act);
    }
  }

  /// Group members that outstay their shutdown timeout are cancelled, and
  /// abandoned after the bound (they are then not restarted).
  void plan_group_stop(clock::time_point now, Actions& act) {
    for (ChildNode* n = head; n != nullptr;) {
      ChildNode* next = n->next;
      if (n->group && !n->parked) {
        if (n->forced) {
          if (now >= n->mark + core->abandon) {
            n->group = false;
            --group_running;
            abandon(*n, act);
          }
        } else if (n->told && now >= n->mark + n->timeout_or(core->grace)) {
          force_one(*n, now, act);
        }
      }
      n = next;
    }
  }

  /// Restarts the parked children whose time has come, in insertion order
  /// (one at a time, each once the previous is ready, when sequential).
  void plan_restarts(clock::time_point now, Actions& act) {
    if (sequential() && awaiting && awaiting->linked && !awaiting->ready && !awaiting->parked) return;
    for (ChildNode* n = head; n != nullptr; n = n->next) {
      if (!n->parked || n->mark > now) continue;
      auto it = std::find_if(parked.begin(), parked.end(), [n](const auto& p) { return p.get() == n; });
      n->parked = false;
      act.restart.push_back(std::move(*it));
      parked.erase(it);
      if (sequential()) break;
    }
  }

  /// Under a restarting strategy, decides what a child's end means. Returns
  /// true when it is handled here: kept for a restart, let go without
  /// failing the manager (temporary), or the manager gave up. Under core->mu.
  bool supervise_end(const std::shared_ptr<ChildNode>& node, const std::exception_ptr& e, bool failed, Actions& act) {
    if (core->strategy == Strategy::stop_all) return false;
    ChildNode& n = *node;
    if (stopping) {
      // No restarts now; but a temporary child's failure stays its own.
      const bool temporary = n.options && n.options->restart && n.options->restart->policy == RestartPolicy::temporary;
      if (!failed || !temporary) return false;
      n.last_error = e;
      set_state(n, ChildState::failed, e, "temporary child; not restarted");
      return true;
    }
    const clock::time_point now = clock::now();
    if (n.group) {
      // Stopped so that its group restarts together: wait with the others.
      n.group = false;
      --group_running;
      ++n.restarts;
      if (failed) n.last_error = e;
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
    const std::string path = core->name + "/" + n.name();
    restart_times.push_back(now);
    while (!restart_times.empty() && restart_times.front() + core->window < now) restart_times.pop_front();
    if (restart_times.size() > core->max_restarts) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(core->window).count();
      std::string reason = "restart intensity exceeded (" + std::to_string(restart_times.size()) + " restarts within " +
                           std::to_string(ms) + " ms)";
      std::exception_ptr cause = e;
      if (!cause) cause = std::make_exception_ptr(std::runtime_error("'" + path + "' ended and is permanent"));
      Event ev;
      ev.kind = EventKind::give_up;
      ev.path = core->prefix + path;
      ev.time = now_us();
      ev.cause = cause;
      ev.detail = reason;
      core->queue(std::move(ev));
      n.last_error = cause;
      set_state(n, ChildState::failed, cause, reason);
      failures.push_back(Failure{path, cause, std::move(reason), false});
      begin_stop(act);
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
    ev.path = core->prefix + path;
    ev.time = now_us();
    ev.cause = e;
    ev.backoff = backoff;
    ev.detail = failed ? "failed" : "ended; permanent";
    core->queue(std::move(ev));
    park(node, now + backoff);
    set_state(n, ChildState::restarting, e);
    // The rest of its group stops (newest first) and restarts with it.
    if (core->strategy != Strategy::one_for_one) {
      group_restart_at = now + backoff;
      ChildNode* first = core->strategy == Strategy::one_for_all ? head : n.next;
      for (ChildNode* m = tail; m != nullptr && first != nullptr; m = m->prev) {
        if (m != &n && !m->parked && !m->group) {
          m->group = true;
          ++group_running;
          tell(*m, act, now);
        }
        if (m == first) break;
      }
    }
    return true;
  }

  void park(const std::shared_ptr<ChildNode>& node, clock::time_point at) {
    ChildNode& n = *node;
    n.parked = true;
    n.mark = at;
    n.told = false;
    n.forced = false;
    if (n.ready) {
      n.ready = false;
      --ready_count;
    }
    parked.push_back(node);
  }

  void check_start_timeouts(clock::time_point now, Actions& act) {
    for (ChildNode* n = head; n != nullptr; n = n->next) {
      if (n->ready || n->parked || n->told || !n->options || !n->options->start_timeout) continue;
      if (now < n->mark + *n->options->start_timeout) continue;
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*n->options->start_timeout).count();
      const std::string path = core->name + "/" + n->name();
      auto cause = std::make_exception_ptr(
          std::runtime_error("'" + path + "' did not become ready within " + std::to_string(ms) + " ms"));
      failures.push_back(Failure{path, cause, "start timeout", false});
      n->last_error = cause;
      set_state(*n, ChildState::failed, cause, "start timeout");
      begin_stop(act);
      return;
    }
  }

  void give_up(Actions& act) {
    act.give_up = true;
    accepting = false;
    while (head != nullptr) abandon(*head, act);
  }
};

ChildNode::~ChildNode() {
  // Still linked only when the completion handler never ran (the io_context
  // was torn down mid-run): keep the run's list honest. Reading `linked`
  // unlocked is safe: only child_ended unlinks, and it happens-before the
  // release of the last reference.
  if (run && linked) {
    std::lock_guard lock(run->core->mu);
    run->unlink(*this);
  }
}

namespace {

void tell_all(const std::vector<std::shared_ptr<ProcessControlHandler>>& handles, const RuntimeControlMessage& msg) {
  for (const auto& h : handles) {
    try {
      h->control(msg);
    } catch (...) {
      // control() is specified not to throw; a user handle that does must
      // not keep the message from the others.
    }
  }
}

/// A concurrent stop's messages are all handed out: its grace starts now.
void told_all(ManagerRun& run) {
  std::lock_guard lock(run.core->mu);
  if (!run.telling) return;
  run.telling = false;
  run.stop_at = clock::now();
  if (run.special > 0) {
    for (ChildNode* n = run.head; n != nullptr; n = n->next) {
      if (n->told && !n->forced) n->mark = run.stop_at;
    }
  }
  run.poke();
}

/// Hands out the stop messages of `act`, then starts the grace.
void deliver_stop(ManagerRun& run, const Actions& act) {
  tell_all(act.tell, RuntimeControlMessage::shutdown());
  if (act.stop_fanout) told_all(run);
}

void force(const std::vector<std::shared_ptr<ChildNode>>& nodes) {
  for (const auto& n : nodes) {
    // Emitted on the child's strand, where its coroutine runs.
    asio::post(n->executor(), [n] {
      if (!n->done) n->cancel.emit(asio::cancellation_type::terminal);
    });
  }
}

void notify_ready(ReadyNotice& who) {
  if (!who) return;
  if (who->watch) who->watch(true);
  if (who->target) {
    if (who->ready) {
      who->target->on_ready(true);
    } else {
      who->target->on_unready();
    }
  }
  for (auto& w : who->waiters) {
    // The timer belongs to the waiter's executor; its wait was set up
    // before the waiter was listed, so this cancel finds it.
    asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
  }
}

/// Carries out what plan() decided, outside the lock.
void execute(ManagerRun& run, Actions& act);

/// The path of a failed child and what it threw, flattening a nested
/// ProcessError so that the root names the leaf ("root/db/writer").
std::vector<Failure> failures_of(const std::string& manager, const std::string& child, const std::exception_ptr& e,
                                 bool collateral, std::vector<std::string>* not_stopped = nullptr) {
  try {
    std::rethrow_exception(e);
  } catch (const ProcessError& pe) {
    std::vector<Failure> out;
    out.reserve(pe.failures().size());
    for (const auto& f : pe.failures()) {
      out.push_back(Failure{manager + "/" + f.process_name, f.cause, f.reason, collateral || f.collateral});
    }
    if (not_stopped != nullptr) {
      for (const auto& p : pe.not_stopped()) {
        std::string path = manager;
        path += '/';
        path += p;
        not_stopped->push_back(std::move(path));
      }
    }
    return out;
  } catch (...) {
    return {Failure{manager + "/" + child, e, {}, collateral}};
  }
}

void child_ended(const std::shared_ptr<ChildNode>& node, const std::exception_ptr& e) {
  ManagerRun& run = *node->run;
  ManagerCore& core = *run.core;
  Actions act;
  bool timed_out = false;
  bool late = false;
  std::vector<std::string> nested_not_stopped;
  std::vector<Failure> new_failures;
  if (e) {
    bool forced = false;
    bool collateral = false;
    {
      std::lock_guard lock(core.mu);
      forced = node->forced;
      collateral = run.stopping;
    }
    if (forced && is_operation_aborted(e)) {
      timed_out = true;
    } else {
      new_failures = failures_of(core.name, node->name(), e, collateral, &nested_not_stopped);
    }
  }
  ReadyNotice readiness;
  {
    std::lock_guard lock(core.mu);
    late = !run.accepting;
    const bool was_awaited = run.awaiting == node;
    const bool failed = !new_failures.empty();
    if (!late && run.supervise_end(node, e, failed, act)) {
      // Kept for a restart, or let go: nothing more to do here.
    } else if (timed_out) {
      const std::string path = core.name + "/" + node->name();
      run.not_stopped.push_back(path);
      run.set_state(*node, ChildState::stopped, e, "did not stop within its timeout; cancelled");
    } else if (!new_failures.empty()) {
      node->last_error = e;
      run.failures.insert(run.failures.end(), new_failures.begin(), new_failures.end());
      run.not_stopped.insert(run.not_stopped.end(), nested_not_stopped.begin(), nested_not_stopped.end());
      run.set_state(*node, ChildState::failed, e);
      run.begin_stop(act);
    } else {
      if (late) {
        run.set_state(*node, ChildState::stopped, {}, "ended after its manager had abandoned it");
      } else {
        run.set_state(*node, ChildState::stopped);
      }
      if (!core.auto_cleanup) ++core.finished_kept;
      if (node->options && node->options->significant && !run.stopping) {
        Event ev;
        ev.kind = EventKind::state;
        ev.path = core.prefix + core.name;
        ev.time = now_us();
        ev.state = ChildState::stopping;
        ev.previous = core.self_state;
        ev.detail = "significant child '" + node->name() + "' ended; stopping";
        core.queue(std::move(ev));
        run.begin_stop(act);
      }
    }
    if (!node->parked) run.unlink(*node);
    // The loop waits for the last child; in sequential order it also moves
    // on at each end (the next start, or the next stop in reverse order);
    // a restart or a group's end needs it too.
    if (run.live == 0 || was_awaited || (run.sequential() && run.stopping) || run.special > 0 || node->parked ||
        run.group_running > 0 || !run.parked.empty()) {
      run.poke();
    }
    run.update_ready(readiness);
  }
  notify_ready(readiness);  // before the events: whoever reacts to one sees readiness up to date
  core.flush();
  deliver_stop(run, act);
  force(act.force);
}

/// The completion handler of a child's coroutine: owns the node until the
/// coroutine is gone, and gives it the node's signal as parent slot.
struct ChildDone {
  std::shared_ptr<ChildNode> node;

  using cancellation_slot_type = asio::cancellation_slot;
  cancellation_slot_type get_cancellation_slot() const noexcept { return node->cancel.slot(); }

  void operator()(const std::exception_ptr& e) {
    node->done = true;
    child_ended(node, e);
  }
};

}  // namespace

const asio::any_io_executor& ChildNode::executor() const { return strand ? *strand : run->base; }

/// The child's handle reported readiness.
void ChildNode::on_ready(bool declared) {
  auto node = shared_from_this();
  ManagerRun& run = *node->run;
  ManagerCore& core = *run.core;
  ReadyNotice readiness;
  {
    std::lock_guard lock(core.mu);
    if (!node->linked || node->ready) return;
    if (node->state != ChildState::starting && node->state != ChildState::running) return;
    const auto t = now_us();
    // A guard's first report (its ticker) is also when it counts as
    // running: one critical section instead of two per child.
    run.set_state(*node, ChildState::running, {}, {}, t);
    if (!declared && node->options && node->options->explicit_ready) return;
    node->ready = true;
    ++run.ready_count;
    run.set_state(*node, ChildState::ready, {}, {}, t);
    if (run.awaiting == node) run.poke();
    run.update_ready(readiness);
  }
  notify_ready(readiness);  // before the events: whoever reacts to one sees readiness up to date
  core.flush();
}

void ChildNode::on_unready() {
  auto node = shared_from_this();
  ManagerRun& r = *node->run;
  ManagerCore& core = *r.core;
  ReadyNotice readiness;
  {
    std::lock_guard lock(core.mu);
    if (!node->linked || !node->ready) return;
    node->ready = false;
    --r.ready_count;
    if (node->state == ChildState::ready) r.set_state(*node, ChildState::running);
    r.update_ready(readiness);
  }
  notify_ready(readiness);  // before the events: whoever reacts to one sees readiness up to date
  core.flush();
}

namespace {

std::shared_ptr<ChildNode> start_child(const std::shared_ptr<ManagerRun>& run, std::shared_ptr<Runnable> child,
                                       std::shared_ptr<const ChildOptions> options,
                                       const std::deque<RuntimeControlMessage>& initial) {
  ManagerCore& core = *run->core;
  std::shared_ptr<ProcessControlHandler> handle = child->process_handle();
  if (!handle) {
    throw std::invalid_argument("ProcessManager '" + core.name + "': child '" + child->process_name() +
                                "' returned a null process_handle()");
  }
  auto node = std::make_shared<ChildNode>(std::move(child), handle, strand_of(run->base), run, std::move(options));
  // A nested manager learns its place: its paths, its readiness, and
  // whether to pass its events up.
  ProcessControlHandler& h = *handle;
  if (typeid(h) == typeid(ManagerHandle)) {
    if (auto nested = static_cast<ManagerHandle&>(*handle).core()) {
      attach_parent(*nested, run->core, std::weak_ptr<ReadinessTarget>(node));
      node->watches = true;
    }
  }
  // A guard's handle takes the node itself as its watcher (no function
  // object to allocate per child); any other handle gets a function.
  if (node->watches) {
    // A nested manager: watched through its core above.
  } else if (typeid(h) == typeid(GuardState)) {
    static_cast<GuardState&>(*handle).watch_target(std::weak_ptr<ReadinessTarget>(node));
    node->watches = true;
  } else {
    node->watches = handle->watch_readiness([weak = std::weak_ptr<ChildNode>(node)](bool declared) {
      if (auto n = weak.lock()) n->on_ready(declared);
    });
  }
  bool stop_now = false;
  ReadyNotice readiness;
  {
    std::lock_guard lock(core.mu);
    if (!run->accepting) {
      node->run.reset();
      throw std::logic_error("ProcessManager '" + core.name + "': add() after the manager finished");
    }
    node->since = now_us();
    if (node->options && node->options->start_timeout) node->mark = clock::now();
    if (core.strategy != Strategy::stop_all || (node->options && node->options->heartbeat_timeout)) {
      node->run_started = clock::now();
    }
    run->link(*node);
    if (core.observed()) {
      Event ev;
      ev.kind = EventKind::state;
      ev.path = core.event_path(node->name());
      ev.time = node->since;
      ev.state = ChildState::starting;
      ev.previous = ChildState::starting;
      core.queue(std::move(ev));
    }
    stop_now = run->stopping;
    if (stop_now) {
      node->told = true;
      node->mark = clock::now();
      node->state = ChildState::stopping;
    }
    if (run->special > 0) run->poke();  // its start timeout joins the deadlines
    run->update_ready(readiness);       // a new child makes the manager not ready
  }
  notify_ready(readiness);  // before the events: whoever reacts to one sees readiness up to date
  core.flush();
  // Kept in the child's inbox and delivered to its first tick. A shutdown
  // among them is the one this child gets: it must not get a second.
  bool told_to_stop = false;
  for (const auto& msg : initial) {
    told_to_stop = told_to_stop || msg.is_shutdown();
    handle->control(msg);
  }
  if (stop_now && !told_to_stop) handle->request_shutdown();

  asio::awaitable<void> body;
  try {
    body = node->runnable->process_start();
  } catch (...) {
    // A process_start() that throws before returning its coroutine fails
    // like one that throws inside it.
    node->done = true;
    child_ended(node, std::current_exception());
    return node;
  }
  // Spawned from a plain post rather than directly: co_spawn's own hop to
  // the strand counts as a continuation, which Asio keeps on the current
  // thread's private queue, so every child of a manager would start on the
  // manager's thread and a busy child could hold the others back. A post
  // goes to the shared queue and wakes an idle thread.
  asio::post(node->executor(), [node, body = std::move(body)]() mutable {
    // A handle that cannot report readiness: running is ready. A guard's
    // handle reports both when the service takes its ticker (on_ready).
    if (!node->watches) node->on_ready(true);
    asio::co_spawn(node->executor(), std::move(body), ChildDone{node});
  });
  return node;
}

/// Runs a parked child again (same node, same handle, a fresh coroutine).
void restart_child(const std::shared_ptr<ManagerRun>& run, const std::shared_ptr<ChildNode>& node) {
  ManagerCore& core = *run->core;
  asio::awaitable<void> body;
  std::exception_ptr error;
  try {
    body = node->runnable->process_start();
  } catch (...) {
    error = std::current_exception();
  }
  std::shared_ptr<ChildNode> previous;  // released after the lock
  {
    std::lock_guard lock(core.mu);
    node->run_started = clock::now();
    node->mark = node->run_started;
    run->set_state(*node, ChildState::starting);
    if (run->sequential()) {
      previous = std::move(run->awaiting);
      run->awaiting = node;
    }
    run->poke();  // its start timeout, or the next sequential restart
  }
  core.flush();
  if (error) {
    child_ended(node, error);
    return;
  }
  asio::post(node->executor(), [node, body = std::move(body)]() mutable {
    node->done = false;  // strand-local, like the coroutine it belongs to
    if (!node->watches) node->on_ready(true);
    asio::co_spawn(node->executor(), std::move(body), ChildDone{node});
  });
}

void execute(ManagerRun& run, Actions& act) {
  run.core->flush();
  deliver_stop(run, act);
  force(act.force);
}

/// Waits on the run's timer until its deadline or a poke. The wait is set
/// up under the lock, so a poke cannot fall between check and wait.
template <class Token>
auto wait_for_event(ManagerRun& run, asio::steady_timer& timer, Token&& token) {
  return asio::async_initiate<Token, void(boost::system::error_code)>(
      [&run, &timer](auto handler) {
        std::lock_guard lock(run.core->mu);
        clock::time_point deadline = run.next_deadline();
        if (run.wake) {
          run.wake = false;
          deadline = clock::time_point::min();
        }
        timer.expires_at(deadline);
        timer.async_wait(std::move(handler));
      },
      token);
}

/// Starts one child from the run loop; a child that cannot start fails the
/// manager (and so stops the others).
void start_or_fail(const std::shared_ptr<ManagerRun>& run, const std::shared_ptr<Runnable>& child,
                   std::shared_ptr<const ChildOptions> options) {
  ManagerCore& core = *run->core;
  try {
    auto node = start_child(run, child, std::move(options), run->initial);
    if (run->sequential()) {
      std::lock_guard lock(core.mu);
      if (!run->stopping) run->awaiting = node;
      run->poke();
    }
  } catch (...) {
    Actions act;
    auto failures = failures_of(core.name, child->process_name(), std::current_exception(), false);
    {
      std::lock_guard lock(core.mu);
      run->failures.insert(run->failures.end(), failures.begin(), failures.end());
      run->begin_stop(act);
    }
    for (const auto& f : failures) log_line(LogLevel::error, f.process_name, "failed to start: " + describe(f.cause));
    execute(*run, act);
  }
}

// GCC 12 at -O1 (the sanitizer builds) warns that this coroutine frame's
// operator delete does not match its operator new: both are Asio's
// awaitable_frame_base members, so the warning is a GCC false positive on
// coroutine frames (it appears and disappears with unrelated edits of the
// body), and it is silenced for this function alone.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
asio::awaitable<void> run_manager(std::shared_ptr<ManagerCore> core) {
  co_await asio::this_coro::throw_if_cancelled(false);
  auto ex = co_await asio::this_coro::executor;
  auto run = std::make_shared<ManagerRun>(core, base_of(ex));
  asio::steady_timer timer(ex);
  std::vector<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>> children;
  {
    std::lock_guard lock(core->mu);
    if (!core->current.expired()) {
      throw std::logic_error("ProcessManager '" + core->name + "': process_start() called while it is already running");
    }
    core->current = run;
    core->finished = false;
    core->set_self(ChildState::running);
    core->self_error.clear();
    core->ready = false;
    run->timer = &timer;
    if (run->sequential()) {
      run->to_start.assign(core->inserted.begin(), core->inserted.end());
    } else {
      children = core->inserted;
    }
    core->finished_kept = 0;
    // Kept messages go to every child before it starts; only the first
    // shutdown among them, as when running.
    for (auto& msg : core->pending) {
      if (msg.is_shutdown()) {
        if (run->stopping) continue;
        run->stopping = true;
        run->stop_at = clock::now();
        run->to_start.clear();
        core->set_self(ChildState::stopping);
      }
      run->initial.push_back(std::move(msg));
    }
    core->pending.clear();
  }
  // Whatever way the frame ends (return, throw, teardown), the loop's timer
  // is no longer reachable through the run.
  struct Detach {
    ManagerRun& run;
    ~Detach() {
      std::lock_guard lock(run.core->mu);
      run.timer = nullptr;
      run.accepting = false;
      run.awaiting.reset();
    }
  } detach{*run};

  for (auto& [child, options] : children) start_or_fail(run, child, options);
  {
    ReadyNotice readiness;
    {
      std::lock_guard lock(core->mu);
      run->launching = false;
      run->update_ready(readiness);  // no children, or all ready at once
      run->poke();                   // a sequential start begins in the loop
    }
    notify_ready(readiness);
    core->flush();  // the manager's own state, for observers
  }

  std::vector<std::shared_ptr<Runnable>> abandoned_runnables;
  for (;;) {
    {
      std::lock_guard lock(core->mu);
      // Seen together with closing the door, so no add() can slip in after.
      if (run->live == 0 && run->to_start.empty()) {
        run->accepting = false;
        break;
      }
    }
    boost::system::error_code ec;
    auto token = asio::redirect_error(asio::use_awaitable, ec);
    co_await wait_for_event(*run, timer, token);
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    const bool parent_cancelled = cs.cancelled() != asio::cancellation_type::none;
    Actions act;
    ReadyNotice readiness;
    {
      std::lock_guard lock(core->mu);
      run->plan(clock::now(), parent_cancelled, act);
      run->update_ready(readiness);
    }
    notify_ready(readiness);
    execute(*run, act);
    abandoned_runnables.insert(abandoned_runnables.end(), act.abandoned.begin(), act.abandoned.end());
    for (auto& [child, options] : act.start) start_or_fail(run, child, options);
    for (auto& node : act.restart) restart_child(run, node);
    if (act.give_up) break;
  }

  std::vector<std::pair<asio::any_io_executor, asio::any_completion_handler<void()>>> waiters;
  std::vector<Failure> failures;
  std::vector<std::string> not_stopped;
  ReadyNotice readiness;
  {
    std::lock_guard lock(core->mu);
    run->accepting = false;
    run->timer = nullptr;
    run->stopping = true;
    run->update_ready(readiness);
    waiters.swap(run->stopped_waiters);
    failures = run->failures;
    not_stopped = run->not_stopped;
    core->set_self(failures.empty() ? ChildState::stopped : ChildState::failed);
    core->finished = true;
    if (!failures.empty()) core->self_error = describe(failures.front());
    if (core->current.lock() == run) core->current.reset();
  }
  notify_ready(readiness);
  core->flush();
  for (auto& [wex, w] : waiters) asio::post(wex, std::move(w));
  if (!failures.empty()) {
    Failure first = failures.front();
    throw ProcessError(std::move(first.process_name), std::move(first.cause), std::move(failures),
                       std::move(first.reason), std::move(not_stopped));
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace

void attach_parent(ManagerCore& nested, const std::shared_ptr<ManagerCore>& parent,
                   std::weak_ptr<ReadinessTarget> target) {
  std::string prefix;
  {
    std::lock_guard lock(parent->mu);
    prefix = parent->prefix + parent->name + "/";
  }
  const bool observed = parent->observed();
  std::lock_guard lock(nested.mu);
  nested.parent = parent;
  nested.prefix = std::move(prefix);
  nested.ready_target = std::move(target);
  nested.forward.store(observed, std::memory_order_relaxed);
}

void ManagerCore::control(RuntimeControlMessage msg) {
  std::shared_ptr<ManagerRun> run;  // released after the lock
  Actions act;
  {
    std::lock_guard lock(mu);
    run = current.lock();
    if (!run || !run->accepting) {
      pending.push_back(std::move(msg));
      return;
    }
    if (msg.is_shutdown()) {
      // A manager asks each child to stop once: a second shutdown (a second
      // signal, a parent's stop after a failure here) changes nothing.
      run->begin_stop(act);
    } else {
      act.tell.reserve(run->live);
      for (ChildNode* n = run->head; n != nullptr; n = n->next) act.tell.push_back(n->handle);
      if (observed()) {
        for (ChildNode* n = run->head; n != nullptr; n = n->next) {
          Event ev;
          ev.kind = EventKind::control;
          ev.path = event_path(n->name());
          ev.time = now_us();
          ev.control = msg.kind();
          queue(std::move(ev));
        }
      }
    }
  }
  ReadyNotice readiness;
  if (msg.is_shutdown()) {
    std::lock_guard lock(mu);
    run->update_ready(readiness);
  }
  notify_ready(readiness);
  flush();
  tell_all(act.tell, msg);
  if (act.stop_fanout) told_all(*run);
  // Observers hear of a message once every child has it: a reload
  // observed is a reload handed out. A shutdown they hear as the state
  // "stopping", in order; a notice here could come after "stopped".
  if (!msg.is_shutdown() && watched.load(std::memory_order_acquire)) {
    {
      std::lock_guard lock(mu);
      Event ev;
      ev.kind = EventKind::control;
      ev.control = msg.kind();
      ev.time = now_us();
      queue_self(std::move(ev));
    }
    flush();
  }
}

asio::awaitable<void> ManagerCore::shutdown() {
  auto self = shared_from_this();
  control(RuntimeControlMessage::shutdown());
  // Named, not a temporary of the co_await expression: GCC 12 destroys such
  // temporaries twice when they span the suspension (STYLE.md).
  auto wait_stopped = [self](auto handler) {
    std::shared_ptr<ManagerRun> run;
    {
      std::lock_guard lock(self->mu);
      run = self->current.lock();
      if (run && run->accepting) {
        asio::any_io_executor hex = asio::get_associated_executor(handler);
        run->stopped_waiters.emplace_back(std::move(hex), std::move(handler));
        return;
      }
    }
    asio::any_io_executor hex = asio::get_associated_executor(handler);
    asio::post(hex, std::move(handler));
  };
  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(std::move(wait_stopped), asio::use_awaitable);
}

}  // namespace detail

namespace {

std::shared_ptr<const ChildOptions> checked(const std::string& manager, const Runnable& child,
                                            const ChildOptions& options) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("ProcessManager '" + manager + "': child '" + child.process_name() + "': " + what);
  };
  if (options.shutdown_timeout && options.shutdown_timeout->count() < 0) fail("negative shutdown_timeout");
  if (options.start_timeout && options.start_timeout->count() < 0) fail("negative start_timeout");
  if (options.heartbeat_timeout && options.heartbeat_timeout->count() <= 0) fail("heartbeat_timeout must be positive");
  return std::make_shared<const ChildOptions>(options);
}

/// A child with restart options runs under a RestartSupervisor.
/// Under Strategy::stop_all a child with restart options runs under a
/// RestartSupervisor; the other strategies restart it themselves.
std::shared_ptr<Runnable> wrapped(std::shared_ptr<Runnable> child, const ChildOptions& options, Strategy strategy) {
  if (!options.restart || strategy != Strategy::stop_all) return child;
  return std::make_shared<RestartSupervisor>(std::move(child), *options.restart);
}

}  // namespace

ProcessManager::ProcessManager()
    : ProcessManager(std::make_shared<detail::ManagerCore>([] {
        detail::ManagerCore::Config c;
        c.name = default_name();
        return c;
      }())) {}

ProcessManager::ProcessManager(std::shared_ptr<detail::ManagerCore> core)
    : core_(std::move(core)), handle_(std::make_shared<detail::ManagerHandle>(core_)) {}

ProcessManager::~ProcessManager() = default;

void ProcessManager::insert(std::shared_ptr<Runnable> child) {
  if (!child) throw std::invalid_argument("ProcessManager '" + core_->name + "': insert() of a null runnable");
  std::lock_guard lock(core_->mu);
  if (!core_->current.expired()) {
    throw std::logic_error("ProcessManager '" + core_->name +
                           "': insert() while the manager runs; use add() to start a child now");
  }
  core_->inserted.emplace_back(std::move(child), nullptr);
}

void ProcessManager::insert(std::shared_ptr<Runnable> child, ChildOptions options) {
  if (!child) throw std::invalid_argument("ProcessManager '" + core_->name + "': insert() of a null runnable");
  auto opts = checked(core_->name, *child, options);
  auto runnable = wrapped(std::move(child), *opts, core_->strategy);
  std::lock_guard lock(core_->mu);
  if (!core_->current.expired()) {
    throw std::logic_error("ProcessManager '" + core_->name +
                           "': insert() while the manager runs; use add() to start a child now");
  }
  core_->inserted.emplace_back(std::move(runnable), std::move(opts));
}

void ProcessManager::add(std::shared_ptr<Runnable> child) { add_with(std::move(child), nullptr); }

void ProcessManager::add(std::shared_ptr<Runnable> child, ChildOptions options) {
  if (!child) throw std::invalid_argument("ProcessManager '" + core_->name + "': add() of a null runnable");
  auto opts = checked(core_->name, *child, options);
  auto runnable = wrapped(std::move(child), *opts, core_->strategy);
  add_with(std::move(runnable), std::move(opts));
}

void ProcessManager::add_with(std::shared_ptr<Runnable> child, std::shared_ptr<const ChildOptions> options) {
  if (!child) throw std::invalid_argument("ProcessManager '" + core_->name + "': add() of a null runnable");
  std::shared_ptr<detail::ManagerRun> run;
  {
    std::lock_guard lock(core_->mu);
    run = core_->current.lock();
    if (!run || !run->accepting) {
      throw std::logic_error("ProcessManager '" + core_->name +
                             "': add() while the manager is not running; use insert() before start");
    }
  }
  // add() may come from a thread that runs no io_context: counted work keeps
  // the io_context from running out of work, and being destroyed, while
  // this thread is still inside the post that starts the child.
  const auto work = asio::prefer(run->base, asio::execution::outstanding_work.tracked);
  detail::start_child(run, std::move(child), std::move(options), {});
}

asio::awaitable<bool> ProcessManager::wait_ready(std::chrono::nanoseconds timeout) {
  auto core = core_;
  auto ex = co_await asio::this_coro::executor;
  auto w = std::make_shared<detail::ReadyWaiter>(ex);
  bool settled = false;
  bool answer = false;
  // Checked and listed under the lock that readiness changes under; the
  // timer's wait starts there too, so a notification cannot miss it.
  auto start_wait = [&](auto handler) {
    std::lock_guard lock(core->mu);
    auto run = core->current.lock();
    if (core->ready) {
      settled = true;
      answer = true;
    } else if ((run && run->stopping) || (!run && core->finished)) {
      settled = true;  // stopping or stopped: it will not become ready
    }
    if (settled) {
      auto hex = asio::get_associated_executor(handler);
      asio::post(hex, [h = std::move(handler)]() mutable { std::move(h)(boost::system::error_code()); });
      return;
    }
    w->timer.expires_after(timeout);
    w->timer.async_wait(std::move(handler));
    core->ready_waiters.push_back(w);
  };
  boost::system::error_code ec;
  auto token = asio::redirect_error(asio::use_awaitable, ec);
  co_await asio::async_initiate<decltype(token), void(boost::system::error_code)>(start_wait, token);
  if (settled) co_return answer;
  std::lock_guard lock(core->mu);
  if (w->done) co_return w->result;
  auto& list = core->ready_waiters;
  list.erase(std::remove(list.begin(), list.end(), w), list.end());
  co_return false;
}

bool ProcessManager::is_ready() const {
  std::lock_guard lock(core_->mu);
  return core_->ready;
}

ChildStatus ProcessManager::status() const {
  ChildStatus out;
  std::vector<std::pair<std::size_t, std::shared_ptr<Runnable>>> nested;
  {
    std::lock_guard lock(core_->mu);
    out.path = core_->name;
    out.state = core_->self_state;
    out.since = core_->self_since;
    out.ready = core_->ready;
    out.last_error = core_->self_error;
    const auto now = std::chrono::steady_clock::now();
    if (auto run = core_->current.lock()) {
      out.children.reserve(run->live);
      for (detail::ChildNode* n = run->head; n != nullptr; n = n->next) {
        ChildStatus c;
        c.path = core_->name + "/" + n->name();
        c.state = n->state;
        c.since = n->since;
        c.ready = n->ready;
        c.stale = n->stale(now);
        if (n->last_error) c.last_error = describe(n->last_error);
        c.restarts = n->restarts;
        if (const auto* sup = dynamic_cast<const RestartSupervisor*>(n->runnable.get())) {
          c.restarts += sup->restarts();
        }
        if (dynamic_cast<const ProcessManager*>(n->runnable.get()) != nullptr) {
          nested.emplace_back(out.children.size(), n->runnable);
        }
        out.children.push_back(std::move(c));
      }
    }
  }
  // Outside our lock: a nested manager takes its own.
  for (auto& [index, runnable] : nested) {
    const auto sub = static_cast<const ProcessManager&>(*runnable).status();
    std::function<void(std::vector<ChildStatus>&, const std::string&)> prefix = [&](std::vector<ChildStatus>& v,
                                                                                    const std::string& p) {
      for (auto& c : v) {
        c.path = p + c.path;
        prefix(c.children, p);
      }
    };
    auto kids = sub.children;
    prefix(kids, core_->name + "/");
    out.children[index].children = std::move(kids);
  }
  return out;
}

asio::awaitable<void> ProcessManager::process_start() { return detail::run_manager(core_); }

std::string ProcessManager::process_name() const { return core_->name; }

std::shared_ptr<ProcessControlHandler> ProcessManager::process_handle() { return handle_; }

std::chrono::nanoseconds ProcessManager::shutdown_grace_period() const { return core_->grace; }

std::chrono::nanoseconds ProcessManager::abandon_timeout() const { return core_->abandon; }

bool ProcessManager::auto_cleanup() const { return core_->auto_cleanup; }

ProcessManager::Observation ProcessManager::observe(EventHook fn) {
  if (!fn) throw std::invalid_argument("ProcessManager '" + core_->name + "': observe() needs a function");
  std::uint64_t id = 0;
  {
    std::lock_guard lock(core_->mu);
    id = core_->next_observer++;
    auto next = core_->observers ? std::make_shared<detail::ManagerCore::Observers>(*core_->observers)
                                 : std::make_shared<detail::ManagerCore::Observers>();
    next->emplace_back(id, std::move(fn));
    core_->observers = std::move(next);
    core_->watched.store(true, std::memory_order_release);
  }
  // The token's deleter takes the observer out; it holds the core weakly,
  // so a token outliving its manager is harmless.
  return Observation(static_cast<void*>(nullptr), [weak = std::weak_ptr<detail::ManagerCore>(core_), id](void*) {
    auto core = weak.lock();
    if (!core) return;
    std::shared_ptr<const detail::ManagerCore::Observers> old;  // released after the lock
    std::lock_guard lock(core->mu);
    if (!core->observers) return;
    auto next = std::make_shared<detail::ManagerCore::Observers>();
    for (const auto& entry : *core->observers) {
      if (entry.first != id) next->push_back(entry);
    }
    core->watched.store(!next->empty(), std::memory_order_release);
    old = std::move(core->observers);
    core->observers = std::move(next);
  });
}

bool ProcessManager::is_running() const {
  std::lock_guard lock(core_->mu);
  auto run = core_->current.lock();
  return run && run->accepting;
}

std::size_t ProcessManager::child_count() const {
  std::shared_ptr<detail::ManagerRun> run;
  std::lock_guard lock(core_->mu);
  run = core_->current.lock();
  return (run ? run->live : 0) + core_->finished_kept;
}

std::size_t ProcessManager::running_count() const {
  std::shared_ptr<detail::ManagerRun> run;
  std::lock_guard lock(core_->mu);
  run = core_->current.lock();
  // A child waiting for its restart is in the books, not running.
  return run ? run->live - run->parked.size() : 0;
}

ProcessManagerBuilder::ProcessManagerBuilder() : grace_(default_grace), abandon_(default_abandon) {}

ProcessManagerBuilder& ProcessManagerBuilder::name(std::string name) {
  name_ = std::move(name);
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::shutdown_grace_period(std::chrono::nanoseconds grace) {
  if (grace.count() < 0) throw std::invalid_argument("ProcessManagerBuilder: negative shutdown grace period");
  grace_ = grace;
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::abandon_timeout(std::chrono::nanoseconds timeout) {
  if (timeout.count() < 0) throw std::invalid_argument("ProcessManagerBuilder: negative abandon timeout");
  abandon_ = timeout;
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::auto_cleanup(bool on) {
  auto_cleanup_ = on;
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::pre_insert(std::shared_ptr<Runnable> child) {
  if (!child) throw std::invalid_argument("ProcessManagerBuilder '" + name_ + "': pre_insert() of a null runnable");
  children_.emplace_back(std::move(child), nullptr);
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::pre_insert(std::shared_ptr<Runnable> child, ChildOptions options) {
  if (!child) throw std::invalid_argument("ProcessManagerBuilder '" + name_ + "': pre_insert() of a null runnable");
  auto opts = checked(name_, *child, options);
  children_.emplace_back(std::move(child), std::move(opts));
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::start_order(StartOrder order) {
  order_ = order;
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::strategy(Strategy strategy) {
  strategy_ = strategy;
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::intensity(std::size_t max_restarts, std::chrono::nanoseconds window) {
  if (window.count() <= 0) {
    throw std::invalid_argument("ProcessManagerBuilder '" + name_ + "': intensity window must be positive");
  }
  max_restarts_ = max_restarts;
  window_ = window;
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::on_event(EventHook hook) {
  hook_ = std::move(hook);
  return *this;
}

std::shared_ptr<ProcessManager> ProcessManagerBuilder::build() {
  auto core = std::make_shared<detail::ManagerCore>(detail::ManagerCore::Config{
      .name = name_.empty() ? default_name() : name_,
      .grace = grace_,
      .abandon = abandon_,
      .auto_cleanup = auto_cleanup_,
      .order = order_,
      .strategy = strategy_,
      .max_restarts = max_restarts_,
      .window = window_,
      .hook = hook_,
  });
  core->inserted.reserve(children_.size());
  for (const auto& [child, options] : children_) {
    core->inserted.emplace_back(options ? wrapped(child, *options, strategy_) : child, options);
  }
  return std::shared_ptr<ProcessManager>(new ProcessManager(std::move(core)));
}

}  // namespace pm
