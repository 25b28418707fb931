#include <processmanager/process_manager.hpp>

#include <processmanager/detail/guard_state.hpp>

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <typeinfo>
#include <unordered_set>
#include <utility>

#include "core/deadline.hpp"
#include "core/waiter.hpp"
#include "log.hpp"

namespace pm {

namespace {

using clock = std::chrono::steady_clock;
using detail::sat_add;
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

/// One started child. The run owns the linked ones (`keep`, a reference
/// to itself that unlinking hands back to be released after the lock); its
/// completion handler owns it while its coroutine lives, so that the
/// cancellation signal outlives the coroutine. It refers to its run weakly:
/// nothing a child holds keeps a run (and so its other children) alive,
/// and its destructor takes no lock.
struct ChildNode final : ReadinessTarget, std::enable_shared_from_this<ChildNode> {
  ChildNode(std::shared_ptr<Runnable> r, std::shared_ptr<ProcessControlHandler> h, std::string n,
            std::unique_ptr<asio::any_io_executor> s, const std::shared_ptr<ManagerRun>& run_, asio::any_io_executor b,
            std::shared_ptr<const ChildOptions> o)
      : runnable(std::move(r)),
        handle(std::move(h)),
        name(std::move(n)),
        strand(std::move(s)),
        run(run_),
        base(std::move(b)),
        options(std::move(o)) {}
  void on_ready(bool declared) override;
  void on_unready() override;
  void on_running() override;
  /// Where its coroutine runs: its strand, or the manager's base executor
  /// when that runs on one thread.
  const asio::any_io_executor& executor() const { return strand ? *strand : base; }
  ~ChildNode() = default;
  ChildNode(const ChildNode&) = delete;
  ChildNode& operator=(const ChildNode&) = delete;

  std::shared_ptr<Runnable> runnable;
  std::shared_ptr<ProcessControlHandler> handle;
  const std::string name;                         // taken once, before it was linked: no user code under the lock
  std::unique_ptr<asio::any_io_executor> strand;  // null: the run's base serialises already
  asio::cancellation_signal cancel;               // the child coroutine's parent slot
  std::weak_ptr<ManagerRun> run;
  asio::any_io_executor base;
  std::shared_ptr<const ChildOptions> options;  // null: the defaults
  std::shared_ptr<ChildNode> keep;              // under the lock: the run's ownership while linked
  std::optional<RestartIntensity> intensity;    // its own limit when restarted under stop_all

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
  /// clock starting at its start), given its handle's last beat, read
  /// outside the lock. Under the manager's lock.
  bool stale(clock::time_point now, std::optional<clock::time_point> beat) const {
    if (!options || !options->heartbeat_timeout || parked) return false;
    if (state != ChildState::running && state != ChildState::ready && state != ChildState::starting) return false;
    auto last = run_started;
    if (beat && *beat > last) last = *beat;
    return now - last > *options->heartbeat_timeout;
  }
  std::chrono::nanoseconds timeout_or(std::chrono::nanoseconds grace) const {
    return options && options->shutdown_timeout ? *options->shutdown_timeout : grace;
  }
  /// Its coroutine has ended (and it is not running again yet). A child
  /// can be `failed` while it still runs (a start timeout): that one is
  /// told to stop like any other.
  bool exited = false;
};

/// A runnable's name; user code, so never called under a library lock.
std::string name_of(const Runnable& r) {
  try {
    return r.process_name();
  } catch (...) {
    return "<unnamed>";
  }
}

/// Where a manager sits in its tree: its name and its parent's link. Shared
/// and immutable, so that a tree thousands of levels deep stores each name
/// once (not a prefix string per level) and a full path is built only when
/// an event or a log line needs it.
struct PathLink {
  std::shared_ptr<const PathLink> up;
  std::string name;
};

/// "root/db/writer" for a link and the names below it.
std::string join_path(const PathLink* link, std::string_view tail = {}) {
  std::vector<const std::string*> names;
  std::size_t size = tail.empty() ? 0 : tail.size() + 1;
  for (; link != nullptr; link = link->up.get()) {
    names.push_back(&link->name);
    size += link->name.size() + 1;
  }
  std::string out;
  out.reserve(size);
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    if (!out.empty()) out += '/';
    out += **it;
  }
  if (!tail.empty()) {
    out += '/';
    out += tail;
  }
  return out;
}

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
        hook(std::move(c.hook)),
        where(std::make_shared<const PathLink>(PathLink{nullptr, name})) {}
  ~ManagerCore();
  ManagerCore(const ManagerCore&) = delete;
  ManagerCore& operator=(const ManagerCore&) = delete;

  /// Hands `msg` to every child (or keeps it for the next run). With
  /// `awaited`, a reload goes by control() only to guards' handles; the
  /// other handles (nested managers, user handles that may override
  /// reload()) are listed there for the caller to await their reload().
  void control(RuntimeControlMessage msg, std::vector<std::shared_ptr<ProcessControlHandler>>* awaited = nullptr);
  asio::awaitable<void> shutdown();
  /// Completes once every child's handle has reloaded, all awaited at once.
  asio::awaitable<void> reload();

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
    ev.path = join_path(where.get());
    events.emplace_back(std::move(ev), Origin::self);
    has_events.store(true, std::memory_order_release);
  }
  /// Delivers queued events in order, from one thread at a time, unlocked.
  /// Whoever queued an event calls it after unlocking, so a stale "none"
  /// here only means another thread's flush delivers it.
  void flush() {
    if (!has_events.load(std::memory_order_acquire)) return;
    // Up the tree with a loop, not recursion: a nested manager's flush
    // hands its events to its parent, whose flush is next.
    for (auto up = flush_queued(); up;) up = up->flush_queued();
  }
  /// Delivers what is queued; returns the parent to flush next when events
  /// were passed up to it.
  std::shared_ptr<ManagerCore> flush_queued();
  /// The full path of a child, for events and logs. Under `mu`.
  std::string event_path(const std::string& child) const { return join_path(where.get(), child); }
  /// The manager's own full path. Under `mu`.
  std::string own_path() const { return join_path(where.get()); }
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
  std::uint64_t runs = 0;                     // process_start() calls so far
  bool ready = false;                         // every child ready, not stopping
  bool finished = false;                      // a run ended and no other began
  ChildState self_state = ChildState::stopped;
  sys_clock::time_point self_since{};
  std::string self_error;
  std::function<void(bool)> ready_watch;               // watch_readiness() on our handle
  std::weak_ptr<ReadinessTarget> ready_target;         // our node in a parent manager
  std::shared_ptr<const PathLink> where;               // our place: "app/<name>" when we run as a child of "app"
  std::vector<std::shared_ptr<Waiter>> ready_waiters;  // in wait_ready()
  std::weak_ptr<ManagerCore> parent;                   // set while we run as a child of another manager
  std::weak_ptr<ManagerCore> owner;                    // the manager we were inserted into (one tree only)
  std::atomic<bool> forward{false};                    // the parent observes: pass our events up

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
  std::vector<std::shared_ptr<Waiter>> drained;  // told once nothing is queued or being delivered
};

std::shared_ptr<ManagerCore> ManagerCore::flush_queued() {
  std::shared_ptr<ManagerCore> passed_up;
  for (;;) {
    std::vector<std::pair<Event, Origin>> batch;
    std::shared_ptr<ManagerCore> up;
    std::shared_ptr<const Observers> watchers;
    {
      std::lock_guard lock(mu);
      if (dispatching || events.empty()) return passed_up;
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
    if (up) passed_up = std::move(up);
    std::vector<std::shared_ptr<Waiter>> done;
    {
      std::lock_guard lock(mu);
      dispatching = false;
      if (events.empty()) {
        done.swap(drained);
      }
    }
    // A run that ended while we delivered completes now: its caller sees
    // every event of it delivered.
    for (auto& w : done) w->complete(true);
    if (done.empty() && !has_events.load(std::memory_order_acquire)) return passed_up;
  }
}

ManagerCore::~ManagerCore() {
  // A chain of nested managers thousands deep would destroy itself by
  // recursion (core, its children, their cores, ...): the children are
  // let go here one level at a time instead.
  using Children = std::vector<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>>;
  thread_local std::vector<Children>* graveyard = nullptr;
  if (graveyard != nullptr) {
    graveyard->push_back(std::move(inserted));
    return;
  }
  std::vector<Children> pending_graves;
  pending_graves.push_back(std::move(inserted));
  graveyard = &pending_graves;
  while (!pending_graves.empty()) {
    Children last = std::move(pending_graves.back());
    pending_graves.pop_back();
    last.clear();  // may push more
  }
  graveyard = nullptr;
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
class ManagerHandle final : public ProcessControlHandler, public RunScoped {
 public:
  explicit ManagerHandle(const std::shared_ptr<ManagerCore>& core) : core_(core) {}
  void control(RuntimeControlMessage msg) override {
    auto core = core_.lock();
    if (!core) return;
    // A message goes down a tree through each nested manager's handle. On
    // a tree thousands of levels deep that recursion would exhaust the
    // stack: past a modest depth, this thread queues the rest, and the
    // outermost call hands them on one by one (in order, each to its
    // manager, which passes it on in turn).
    struct Relay {
      int depth = 0;
      std::deque<std::pair<std::shared_ptr<ManagerCore>, RuntimeControlMessage>> queued;
    };
    thread_local Relay relay;
    constexpr int max_depth = 32;
    if (relay.depth >= max_depth) {
      relay.queued.emplace_back(std::move(core), std::move(msg));
      return;
    }
    struct Depth {
      int& d;
      explicit Depth(int& x) : d(x) { ++d; }
      ~Depth() { --d; }
      Depth(const Depth&) = delete;
      Depth& operator=(const Depth&) = delete;
    };
    {
      Depth in(relay.depth);
      core->control(std::move(msg));
    }
    if (relay.depth != 0) return;
    while (!relay.queued.empty()) {
      auto [next, queued_msg] = std::move(relay.queued.front());
      relay.queued.pop_front();
      Depth in(relay.depth);
      next->control(std::move(queued_msg));
    }
  }
  asio::awaitable<void> shutdown() override {
    auto core = core_.lock();
    if (core) co_await core->shutdown();
  }
  asio::awaitable<void> reload() override {
    auto core = core_.lock();
    if (core) co_await core->reload();
  }
  std::shared_ptr<ManagerCore> core() const { return core_.lock(); }
  /// A stop kept for the next run, sent while none ran, is dropped.
  void forget_shutdown() override {
    auto core = core_.lock();
    if (!core) return;
    std::lock_guard lock(core->mu);
    auto& p = core->pending;
    p.erase(std::remove_if(p.begin(), p.end(), [](const RuntimeControlMessage& m) { return m.is_shutdown(); }),
            p.end());
  }
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
  std::function<void(bool)> watch;               // told only when it becomes ready
  std::shared_ptr<ReadinessTarget> target;       // our node in a parent: told both ways
  std::vector<std::shared_ptr<Waiter>> waiters;  // completed with `ready`
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
    if (n.options && (n.options->shutdown_timeout || n.options->start_timeout)) ++special;
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
    if (n.ready) --ready_count;
    if (n.options && (n.options->shutdown_timeout || n.options->start_timeout)) --special;
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
  void begin_stop(Actions& act) {
    if (stopping) return;
    stopping = true;
    stop_at = clock::now();
    core->set_self(ChildState::stopping);
    to_start.clear();  // a sequential start ends here
    awaiting = nullptr;
    // Children waiting for a restart are simply done.
    for (ChildNode* p : parked) {
      p->parked = false;
      set_state(*p, ChildState::stopped, {}, "stopping; restart cancelled");
      act.released.push_back(unlink(*p));
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
    // A child that has ended is not told: its next run must not read a
    // stop meant for this one.
    if (n.told || n.exited) return;
    n.told = true;
    n.mark = now;
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
    } else if (stopping && !sequential() && special == 0 && !telling) {
      d = sat_add(stop_at, core->grace);
    }
    if (!stopping && !parked.empty() && group_running == 0) {
      for (const auto& p : parked) d = std::min(d, p->mark);
    }
    if (special > 0 || sequential() || (group_running > 0 && !stopping)) {
      for (const ChildNode* n = head; n != nullptr; n = n->next) {
        if (n->parked) continue;
        if (n->forced) {
          d = std::min(d, sat_add(n->mark, core->abandon));
        } else if (n->told && !telling) {
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
    } else if (special == 0) {
      if (now >= sat_add(stop_at, core->grace)) begin_force(act);
    } else {
      // Some children have timeouts of their own: each is forced at its
      // own deadline, and abandoned at its own bound after that.
      for (ChildNode* n = head; n != nullptr;) {
        ChildNode* next = n->next;
        if (n->forced) {
          if (now >= sat_add(n->mark, core->abandon)) abandon(*n, act);
        } else if (n->told && now >= sat_add(n->mark, n->timeout_or(core->grace))) {
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
      if (n->group && !n->parked) {
        if (n->forced) {
          if (now >= sat_add(n->mark, core->abandon)) {
            n->group = false;
            --group_running;
            abandon(*n, act);
          }
        } else if (n->told && now >= sat_add(n->mark, n->timeout_or(core->grace))) {
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
      parked.erase(std::find(parked.begin(), parked.end(), n));
      n->parked = false;
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
  bool supervise_end(const std::shared_ptr<ChildNode>& node, const std::exception_ptr& e, bool failed, Actions& act) {
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
    const std::string path = core->name + "/" + n.name;
    if (own_limit && !n.intensity) n.intensity.emplace(ro.max_restarts, ro.window);
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
    ev.path = core->event_path(n.name);
    ev.time = now_us();
    ev.cause = e;
    ev.backoff = backoff;
    ev.detail = failed ? "failed" : "ended; permanent";
    core->queue(std::move(ev));
    park(node, sat_add(now, backoff));
    set_state(n, ChildState::restarting, e);
    // The rest of its group stops (newest first) and restarts with it.
    if (core->strategy != Strategy::one_for_one) {
      group_restart_at = sat_add(now, backoff);
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
    parked.push_back(&n);
  }

  void check_start_timeouts(clock::time_point now, Actions& act) {
    for (ChildNode* n = head; n != nullptr; n = n->next) {
      if (n->ready || n->parked || n->told || !n->options || !n->options->start_timeout) continue;
      if (now < sat_add(n->mark, *n->options->start_timeout)) continue;
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*n->options->start_timeout).count();
      const std::string path = core->name + "/" + n->name;
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

/// A readiness change goes up the tree through each parent's node. Done by
/// recursion, a tree 15,000 managers deep overflows the stack; so a thread
/// that is already carrying changes up queues the next one, and the event
/// flushes they cause run once every change has reached the top, top
/// first: the order recursion gave, in which whoever reacts to an event
/// sees readiness up to date all the way up.
struct Propagation {
  std::deque<ReadyChange> changes;
  std::vector<std::shared_ptr<ManagerCore>> flushes;
};
thread_local Propagation* propagating = nullptr;

void deliver(ReadyChange& change) noexcept {
  try {
    if (change.watch) change.watch(true);
  } catch (...) {
    // A watcher that throws must not keep the change from the others.
  }
  if (change.target) {
    if (change.ready) {
      change.target->on_ready(true);
    } else {
      change.target->on_unready();
    }
  }
  for (auto& w : change.waiters) w->complete(change.ready);
}

void notify_ready(ReadyNotice& who) {
  if (!who) return;
  if (propagating != nullptr) {
    propagating->changes.push_back(std::move(*who));
    who.reset();
    return;
  }
  Propagation p;
  propagating = &p;
  p.changes.push_back(std::move(*who));
  who.reset();
  while (!p.changes.empty()) {
    ReadyChange change = std::move(p.changes.front());
    p.changes.pop_front();
    deliver(change);
  }
  propagating = nullptr;
  for (auto it = p.flushes.rbegin(); it != p.flushes.rend(); ++it) (*it)->flush();
}

/// core.flush(), or after the readiness changes under way on this thread.
void flush_after(ManagerCore& core) {
  if (propagating != nullptr) {
    propagating->flushes.push_back(core.shared_from_this());
  } else {
    core.flush();
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

/// True when `e` is an AbandonedError (a blocking service's thread that was
/// left behind).
bool is_abandonment(const std::exception_ptr& e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const AbandonedError&) {
    return true;
  } catch (...) {
    return false;
  }
}

void child_ended(const std::shared_ptr<ChildNode>& node, const std::exception_ptr& e) {
  // The run is gone once its frame has returned (or was torn down): a child
  // that ends after that (abandoned) has nobody left to tell.
  const auto run_ref = node->run.lock();
  if (!run_ref) return;
  ManagerRun& run = *run_ref;
  ManagerCore& core = *run.core;
  std::shared_ptr<ChildNode> released;  // the run's reference, let go after the lock
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
    // Cancelled after its grace: a coroutine ends with operation_aborted, a
    // blocking service's run with AbandonedError. Neither is a failure of
    // its own; both are children that did not stop in time.
    if (forced && (is_operation_aborted(e) || is_abandonment(e))) {
      timed_out = true;
    } else {
      new_failures = failures_of(core.name, node->name, e, collateral, &nested_not_stopped);
    }
  }
  ReadyNotice readiness;
  {
    std::lock_guard lock(core.mu);
    node->exited = true;
    // Abandoned (taken off the books) before it ended: it is no longer
    // this manager's, and its end is not reported. The run it belonged to
    // may have completed, and completion means every event was delivered.
    if (!node->linked) return;
    late = !run.accepting;
    const bool was_awaited = run.awaiting == node.get();
    const bool failed = !new_failures.empty();
    if (!late && run.supervise_end(node, e, failed, act)) {
      // Kept for a restart, or let go: nothing more to do here.
    } else if (timed_out) {
      const std::string path = core.name + "/" + node->name;
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
        ev.path = core.own_path();
        ev.time = now_us();
        ev.state = ChildState::stopping;
        ev.previous = core.self_state;
        ev.detail = "significant child '" + node->name + "' ended; stopping";
        core.queue(std::move(ev));
        run.begin_stop(act);
      }
    }
    if (!node->parked) released = run.unlink(*node);
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

/// The child's handle reported readiness.
void ChildNode::on_ready(bool declared) {
  auto node = shared_from_this();
  const auto run_ref = node->run.lock();
  if (!run_ref) return;
  ManagerRun& run = *run_ref;
  ManagerCore& core = *run.core;
  ReadyNotice readiness;
  {
    std::lock_guard lock(core.mu);
    if (!node->linked || node->ready || node->parked) return;
    if (node->state != ChildState::starting && node->state != ChildState::running) return;
    const auto t = now_us();
    // A guard's first report (its ticker) is also when it counts as
    // running: one critical section instead of two per child.
    run.set_state(*node, ChildState::running, {}, {}, t);
    if (!declared && node->options && node->options->explicit_ready) return;
    node->ready = true;
    ++run.ready_count;
    run.set_state(*node, ChildState::ready, {}, {}, t);
    if (run.awaiting == node.get()) run.poke();
    run.update_ready(readiness);
  }
  notify_ready(readiness);  // before the events: whoever reacts to one sees readiness up to date
  flush_after(core);
}

void ChildNode::on_running() {
  auto node = shared_from_this();
  const auto run_ref = node->run.lock();
  if (!run_ref) return;
  ManagerCore& core = *run_ref->core;
  {
    std::lock_guard lock(core.mu);
    if (!node->linked || node->parked || node->state != ChildState::starting) return;
    run_ref->set_state(*node, ChildState::running);
  }
  flush_after(core);
}

void ChildNode::on_unready() {
  auto node = shared_from_this();
  const auto run_ref = node->run.lock();
  if (!run_ref) return;
  ManagerRun& r = *run_ref;
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
  flush_after(core);
}

namespace {

/// Drops a shutdown that is still unread in `handle`: it was meant for a
/// run of that service that has ended (see RunScoped).
void forget_shutdown(const std::shared_ptr<ProcessControlHandler>& handle) {
  if (auto* scoped = dynamic_cast<RunScoped*>(handle.get())) scoped->forget_shutdown();
}

/// Connects the child's handle to the node, so that readiness reaches it.
/// Returns false when the handle cannot tell (then running is ready).
bool watch(ChildNode& node, const std::shared_ptr<ManagerRun>& run) {
  ProcessControlHandler& h = *node.handle;
  std::weak_ptr<ReadinessTarget> self = std::weak_ptr<ChildNode>(node.shared_from_this());
  // A nested manager learns its place: its paths, its readiness, and
  // whether to pass its events up.
  if (typeid(h) == typeid(ManagerHandle)) {
    if (auto nested = static_cast<ManagerHandle&>(h).core()) {
      attach_parent(*nested, run->core, std::move(self));
      return true;
    }
    return false;
  }
  // A guard's handle (the common case, tested first without a cast) and
  // other sources take the node itself as their watcher: no function object
  // per child. Any other handle gets a function.
  if (typeid(h) == typeid(GuardState)) {
    static_cast<GuardState&>(h).watch_target(std::move(self));
    return true;
  }
  if (auto* source = dynamic_cast<ReadinessSource*>(&h)) {
    source->watch_target(std::move(self));
    return true;
  }
  return h.watch_readiness([weak = std::weak_ptr<ChildNode>(node.shared_from_this())](bool declared) {
    if (auto n = weak.lock()) n->on_ready(declared);
  });
}

void spawn(const std::shared_ptr<ChildNode>& node, asio::awaitable<void> body, bool again) {
  // Spawned from a plain post rather than directly: co_spawn's own hop to
  // the strand counts as a continuation, which Asio keeps on the current
  // thread's private queue, so every child of a manager would start on the
  // manager's thread and a busy child could hold the others back. A post
  // goes to the shared queue and wakes an idle thread.
  asio::post(node->executor(), [node, body = std::move(body), again]() mutable {
    if (again) node->done = false;  // strand-local, like the coroutine it belongs to
    // A handle that cannot report readiness: running is ready. A guard's
    // handle reports both when the service takes its ticker (on_ready).
    if (!node->watches) node->on_ready(true);
    asio::co_spawn(node->executor(), std::move(body), ChildDone{node});
  });
}

std::shared_ptr<ChildNode> start_child(const std::shared_ptr<ManagerRun>& run, std::shared_ptr<Runnable> child,
                                       std::shared_ptr<const ChildOptions> options,
                                       const std::deque<RuntimeControlMessage>& initial) {
  ManagerCore& core = *run->core;
  // User code (the name, the handle, the watcher) runs here, before the lock.
  std::string name = name_of(*child);
  std::shared_ptr<ProcessControlHandler> handle = child->process_handle();
  if (!handle) {
    throw std::invalid_argument("ProcessManager '" + core.name + "': child '" + name +
                                "' returned a null process_handle()");
  }
  // In a later run of this manager, a stop left unread from the run before
  // belongs to that run.
  if (core.runs > 1) forget_shutdown(handle);
  auto node = std::make_shared<ChildNode>(std::move(child), handle, std::move(name), strand_of(run->base), run,
                                          run->base, std::move(options));
  node->watches = watch(*node, run);
  bool stop_now = false;
  ReadyNotice readiness;
  {
    std::lock_guard lock(core.mu);
    if (!run->accepting) throw std::logic_error("ProcessManager '" + core.name + "': add() after the manager finished");
    node->since = now_us();
    const auto now = clock::now();
    if (node->options && node->options->start_timeout) node->mark = now;
    node->run_started = now;
    run->link(node);
    if (core.observed()) {
      Event ev;
      ev.kind = EventKind::state;
      ev.path = core.event_path(node->name);
      ev.time = node->since;
      ev.state = ChildState::starting;
      ev.previous = ChildState::starting;
      core.queue(std::move(ev));
    }
    stop_now = run->stopping;
    if (stop_now) {
      node->told = true;
      node->mark = now;
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
  spawn(node, std::move(body), false);
  return node;
}

/// Runs a parked child again (same node, same handle, a fresh coroutine).
void restart_child(const std::shared_ptr<ManagerRun>& run, const std::shared_ptr<ChildNode>& node) {
  ManagerCore& core = *run->core;
  // Whatever stop reached it before it ended belongs to the run that ended.
  forget_shutdown(node->handle);
  asio::awaitable<void> body;
  std::exception_ptr error;
  try {
    body = node->runnable->process_start();
  } catch (...) {
    error = std::current_exception();
  }
  {
    std::lock_guard lock(core.mu);
    node->run_started = clock::now();
    node->mark = node->run_started;
    node->exited = false;
    run->set_state(*node, ChildState::starting);
    if (run->sequential()) run->awaiting = node.get();
    run->poke();  // its start timeout, or the next sequential restart
  }
  core.flush();
  if (error) {
    child_ended(node, error);
    return;
  }
  spawn(node, std::move(body), true);
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
/// `counted`: the plan counted it in pending_starts (a sequential start),
/// so that the manager was not ready while it was on its way.
void start_or_fail(const std::shared_ptr<ManagerRun>& run, const std::shared_ptr<Runnable>& child,
                   std::shared_ptr<const ChildOptions> options, bool counted) {
  ManagerCore& core = *run->core;
  ReadyNotice readiness;
  try {
    auto node = start_child(run, child, std::move(options), run->initial);
    if (run->sequential() || counted) {
      std::lock_guard lock(core.mu);
      if (counted) --run->pending_starts;
      // It may have ended already (and be unlinked): then nothing waits on it.
      if (run->sequential() && !run->stopping && node->linked) run->awaiting = node.get();
      run->poke();
      run->update_ready(readiness);
    }
  } catch (...) {
    Actions act;
    auto failures = failures_of(core.name, name_of(*child), std::current_exception(), false);
    {
      std::lock_guard lock(core.mu);
      if (counted) --run->pending_starts;
      run->failures.insert(run->failures.end(), failures.begin(), failures.end());
      run->begin_stop(act);
      run->update_ready(readiness);
    }
    notify_ready(readiness);
    readiness.reset();
    for (const auto& f : failures) log_line(LogLevel::error, f.process_name, "failed to start: " + describe(f.cause));
    execute(*run, act);
  }
  notify_ready(readiness);
  run->core->flush();
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
    ++core->runs;
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
      run.awaiting = nullptr;
    }
  } detach{*run};

  for (auto& [child, options] : children) start_or_fail(run, child, options, false);
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
    for (auto& [child, options] : act.start) start_or_fail(run, child, options, true);
    for (auto& node : act.restart) restart_child(run, node);
    if (act.give_up) break;
  }

  std::vector<std::shared_ptr<Waiter>> waiters;
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
  // Completion means delivered: every event of this run has been handed to
  // every hook and observer before the caller (or a shutdown() waiter)
  // hears of the end. Another thread may still be delivering some.
  bool busy = false;
  {
    std::lock_guard lock(core->mu);
    busy = core->dispatching || !core->events.empty();
  }
  if (busy) {
    auto wait_drained = [&core](auto handler) {
      auto w = Waiter::make(std::move(handler));
      {
        std::lock_guard lock(core->mu);
        if (core->dispatching || !core->events.empty()) {
          core->drained.push_back(std::move(w));
          return;
        }
      }
      w->complete(true);
    };
    co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(bool)>(std::move(wait_drained),
                                                                              asio::use_awaitable);
  }
  for (auto& w : waiters) w->complete(true);
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
  std::shared_ptr<const PathLink> up;
  {
    std::lock_guard lock(parent->mu);
    up = parent->where;
  }
  auto where = std::make_shared<const PathLink>(PathLink{std::move(up), nested.name});
  const bool observed = parent->observed();
  std::lock_guard lock(nested.mu);
  nested.parent = parent;
  nested.where = std::move(where);
  nested.ready_target = std::move(target);
  nested.forward.store(observed, std::memory_order_relaxed);
}

void ManagerCore::control(RuntimeControlMessage msg, std::vector<std::shared_ptr<ProcessControlHandler>>* awaited) {
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
      for (ChildNode* n = run->head; n != nullptr; n = n->next) {
        const ProcessControlHandler& h = *n->handle;
        if (awaited != nullptr && typeid(h) != typeid(GuardState)) {
          awaited->push_back(n->handle);
        } else {
          act.tell.push_back(n->handle);
        }
      }
      if (observed()) {
        for (ChildNode* n = run->head; n != nullptr; n = n->next) {
          Event ev;
          ev.kind = EventKind::control;
          ev.path = event_path(n->name);
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

asio::awaitable<void> ManagerCore::reload() {
  std::vector<std::shared_ptr<ProcessControlHandler>> awaited;
  control(RuntimeControlMessage::reload(), &awaited);
  if (awaited.empty()) co_return;
  auto ex = co_await asio::this_coro::executor;
  struct Join {
    std::mutex mu;
    std::size_t left = 0;
    std::shared_ptr<Waiter> waiter;
  };
  // Every child's reload() at once, on the caller's executor: the slowest
  // one, not their sum, is what the caller waits.
  auto start = [&awaited, &ex](auto handler) {
    auto join = std::make_shared<Join>();
    join->left = awaited.size();
    join->waiter = Waiter::make(std::move(handler));
    for (auto& h : awaited) {
      auto one = h->reload();
      asio::co_spawn(ex, std::move(one), [join](const std::exception_ptr&) {
        // A handle's reload() that throws has still ended its part.
        std::shared_ptr<Waiter> last;
        {
          std::lock_guard lock(join->mu);
          if (--join->left == 0) last = join->waiter;
        }
        if (last) last->complete(true);
      });
    }
  };
  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(bool)>(std::move(start), asio::use_awaitable);
}

asio::awaitable<void> ManagerCore::shutdown() {
  auto self = shared_from_this();
  control(RuntimeControlMessage::shutdown());
  // Named, not a temporary of the co_await expression: GCC 12 destroys such
  // temporaries twice when they span the suspension (STYLE.md).
  auto wait_stopped = [self](auto handler) {
    auto w = Waiter::make(std::move(handler));
    std::shared_ptr<ManagerRun> run;  // released after the lock
    {
      std::lock_guard lock(self->mu);
      run = self->current.lock();
      if (run && run->accepting) {
        run->stopped_waiters.push_back(std::move(w));
        return;
      }
    }
    w->complete(true);
  };
  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(bool)>(std::move(wait_stopped),
                                                                            asio::use_awaitable);
}

}  // namespace detail

namespace {

/// The options, checked when they are given, under every strategy.
std::shared_ptr<const ChildOptions> checked(const std::string& manager, const Runnable& child,
                                            const ChildOptions& options) {
  const std::string who = "ProcessManager '" + manager + "': child '" + detail::name_of(child) + "'";
  auto fail = [&](const std::string& what) { throw std::invalid_argument(who + ": " + what); };
  if (options.shutdown_timeout && options.shutdown_timeout->count() < 0) fail("negative shutdown_timeout");
  if (options.start_timeout && options.start_timeout->count() < 0) fail("negative start_timeout");
  if (options.heartbeat_timeout && options.heartbeat_timeout->count() <= 0) fail("heartbeat_timeout must be positive");
  if (options.restart) validate(*options.restart, who);
  return std::make_shared<const ChildOptions>(options);
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

void ProcessManager::adopt(const Runnable& child) const {
  const auto* nested = dynamic_cast<const ProcessManager*>(&child);
  if (nested == nullptr) return;
  const auto& inner = nested->core_;
  if (inner == core_) {
    throw std::logic_error("ProcessManager '" + core_->name + "': cannot be inserted into itself");
  }
  // Walking up from here: meeting the child means it is an ancestor, and
  // inserting it would close a loop.
  for (auto up = core_; up;) {
    std::shared_ptr<detail::ManagerCore> next;
    {
      std::lock_guard lock(up->mu);
      next = up->owner.lock();
    }
    if (next == inner) {
      throw std::logic_error("ProcessManager '" + core_->name + "': cannot insert '" + inner->name +
                             "', which is one of its ancestors (the tree would loop)");
    }
    up = std::move(next);
  }
  std::lock_guard lock(inner->mu);
  if (auto owner = inner->owner.lock(); owner && owner != core_) {
    throw std::logic_error("ProcessManager '" + core_->name + "': cannot insert '" + inner->name +
                           "', which is already a child of '" + owner->name + "' (a manager belongs to one tree)");
  }
  inner->owner = core_;
}

void ProcessManager::insert(std::shared_ptr<Runnable> child) {
  if (!child) throw std::invalid_argument("ProcessManager '" + core_->name + "': insert() of a null runnable");
  adopt(*child);
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
  adopt(*child);
  std::lock_guard lock(core_->mu);
  if (!core_->current.expired()) {
    throw std::logic_error("ProcessManager '" + core_->name +
                           "': insert() while the manager runs; use add() to start a child now");
  }
  core_->inserted.emplace_back(std::move(child), std::move(opts));
}

void ProcessManager::add(std::shared_ptr<Runnable> child) { add_with(std::move(child), nullptr); }

void ProcessManager::add(std::shared_ptr<Runnable> child, ChildOptions options) {
  if (!child) throw std::invalid_argument("ProcessManager '" + core_->name + "': add() of a null runnable");
  auto opts = checked(core_->name, *child, options);
  add_with(std::move(child), std::move(opts));
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
  adopt(*child);
  // add() may come from a thread that runs no io_context: counted work keeps
  // the io_context from running out of work, and being destroyed, while
  // this thread is still inside the post that starts the child.
  const auto work = asio::prefer(run->base, asio::execution::outstanding_work.tracked);
  detail::start_child(run, std::move(child), std::move(options), {});
}

asio::awaitable<bool> ProcessManager::wait_ready(std::chrono::nanoseconds timeout) {
  auto core = core_;
  auto ex = co_await asio::this_coro::executor;
  // The timer lives in this frame, on the caller's executor: when that
  // io_context goes first, it takes the frame and the timer with it, and
  // the manager's list holds only a waiter that is then dropped.
  asio::steady_timer timer(ex);
  std::shared_ptr<detail::Waiter> w;
  // Checked and listed under the lock that readiness changes under, so a
  // change cannot fall between the check and the listing.
  auto start_wait = [&](auto handler) {
    w = detail::Waiter::make(std::move(handler));
    std::optional<bool> settled;
    {
      std::lock_guard lock(core->mu);
      auto run = core->current.lock();
      if (core->ready) {
        settled = true;
      } else if ((run && run->stopping) || (!run && core->finished)) {
        settled = false;  // stopping or stopped: it will not become ready
      } else {
        core->ready_waiters.push_back(w);
      }
    }
    if (settled) {
      w->complete(*settled);
      return;
    }
    timer.expires_at(detail::sat_add(std::chrono::steady_clock::now(), timeout));
    timer.async_wait([w](const boost::system::error_code& ec) {
      if (!ec) w->complete(false);
    });
  };
  const bool answer = co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(bool)>(std::move(start_wait),
                                                                                                asio::use_awaitable);
  {
    std::lock_guard lock(core->mu);
    auto& list = core->ready_waiters;
    list.erase(std::remove(list.begin(), list.end(), w), list.end());
  }
  co_return answer;
}

bool ProcessManager::is_ready() const {
  std::lock_guard lock(core_->mu);
  return core_->ready;
}

namespace {

/// What status() copies of a child under its manager's lock; the rest
/// (heartbeat, restarts of a supervisor, a nested manager) is read from the
/// handle after the lock, since a handle is user code.
struct ChildPeek {
  std::shared_ptr<ProcessControlHandler> handle;
  std::optional<std::chrono::nanoseconds> heartbeat_timeout;
  std::chrono::steady_clock::time_point run_started;
  bool watch_beat = false;  // in a state where staleness applies
};

/// The nested manager behind a handle, looking through supervisors.
std::shared_ptr<detail::ManagerCore> nested_core(std::shared_ptr<ProcessControlHandler> h) {
  // A supervisor of a supervisor of ... ends at a plain handle; the bound
  // only guards against a handle that supervises itself.
  for (int hops = 0; h && hops < 64; ++hops) {
    ProcessControlHandler& ref = *h;
    if (typeid(ref) == typeid(detail::ManagerHandle)) return static_cast<detail::ManagerHandle&>(ref).core();
    const auto* sup = dynamic_cast<const detail::Supervising*>(h.get());
    if (sup == nullptr) return nullptr;
    h = sup->supervised_handle();
  }
  return nullptr;
}

/// Fills `out` with the children of `core`, their paths under `prefix`;
/// returns the nested managers found, with the slots they fill.
std::vector<std::pair<ChildStatus*, std::shared_ptr<detail::ManagerCore>>> peek_children(detail::ManagerCore& core,
                                                                                         const std::string& prefix,
                                                                                         ChildStatus& out) {
  std::vector<ChildPeek> peeks;
  {
    std::lock_guard lock(core.mu);
    if (auto run = core.current.lock()) {
      out.children.reserve(run->live);
      peeks.reserve(run->live);
      for (detail::ChildNode* n = run->head; n != nullptr; n = n->next) {
        ChildStatus c;
        c.path = prefix + n->name;
        c.state = n->state;
        c.since = n->since;
        c.ready = n->ready;
        if (n->last_error) c.last_error = describe(n->last_error);
        c.restarts = n->restarts;
        out.children.push_back(std::move(c));
        ChildPeek p;
        p.handle = n->handle;
        if (n->options) p.heartbeat_timeout = n->options->heartbeat_timeout;
        p.run_started = n->run_started;
        p.watch_beat = !n->parked && (n->state == ChildState::running || n->state == ChildState::ready ||
                                      n->state == ChildState::starting);
        peeks.push_back(std::move(p));
      }
    }
  }
  std::vector<std::pair<ChildStatus*, std::shared_ptr<detail::ManagerCore>>> nested;
  const auto now = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < peeks.size(); ++i) {
    ChildPeek& p = peeks[i];
    ChildStatus& c = out.children[i];
    if (p.heartbeat_timeout && p.watch_beat) {
      auto last = p.run_started;
      if (const auto beat = p.handle->last_heartbeat(); beat && *beat > last) last = *beat;
      c.stale = now - last > *p.heartbeat_timeout;
    }
    const ProcessControlHandler& handle = *p.handle;
    if (typeid(handle) == typeid(detail::GuardState)) continue;  // the common case: a leaf
    if (const auto* sup = dynamic_cast<const detail::Supervising*>(p.handle.get())) {
      c.restarts += sup->supervised_restarts();
    }
    if (auto inner = nested_core(p.handle)) nested.emplace_back(&c, std::move(inner));
  }
  return nested;
}

}  // namespace

ChildStatus ProcessManager::status() const {
  ChildStatus out;
  {
    std::lock_guard lock(core_->mu);
    out.path = core_->name;
    out.state = core_->self_state;
    out.since = core_->self_since;
    out.ready = core_->ready;
    out.last_error = core_->self_error;
  }
  // Breadth by breadth with an explicit list, not recursion: a tree
  // thousands of levels deep costs time linear in its nodes (plus its
  // paths) and no stack per level. Each manager's lock is taken alone.
  std::vector<std::pair<ChildStatus*, std::shared_ptr<detail::ManagerCore>>> work{{&out, core_}};
  std::unordered_set<const detail::ManagerCore*> seen{core_.get()};
  while (!work.empty()) {
    auto [slot, core] = std::move(work.back());
    work.pop_back();
    // Paths are full ("root/db/writer") whatever the depth.
    for (auto& [child, inner] : peek_children(*core, slot->path + "/", *slot)) {
      // A manager met twice (a supervisor's loop) is listed, not entered again.
      if (seen.insert(inner.get()).second) work.emplace_back(child, std::move(inner));
    }
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
  auto manager = std::shared_ptr<ProcessManager>(new ProcessManager(std::move(core)));
  for (const auto& [child, options] : children_) {
    if (options) {
      manager->insert(child, *options);
    } else {
      manager->insert(child);
    }
  }
  return manager;
}

}  // namespace pm
