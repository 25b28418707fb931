// The supervision core's state: a child's record, a manager's shared core
// and its handle. Internal to the library (src/), shared by its parts:
// core/manager_core.cpp (control, events), core/run.cpp (a run's loop and
// its children), core/run_state.hpp (what a run decides), and
// process_manager.cpp (the public API).
#pragma once

#include <processmanager/detail/guard_state.hpp>
#include <processmanager/process_manager.hpp>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../log.hpp"
#include "deadline.hpp"
#include "waiter.hpp"

namespace pm::detail {

using clock = std::chrono::steady_clock;
inline constexpr std::chrono::nanoseconds default_grace = std::chrono::seconds(30);
inline constexpr std::chrono::nanoseconds default_abandon = std::chrono::seconds(5);

class ManagerRun;
class ManagerCore;

using sys_clock = std::chrono::system_clock;

inline sys_clock::time_point now_us() {
  // Microseconds: what status JSON carries, so that a snapshot round-trips.
  return std::chrono::time_point_cast<std::chrono::microseconds>(sys_clock::now());
}

/// Where a child is in its manager's run (under the manager's lock). The
/// run's transitions (run_state.hpp) move it; docs/design.md draws the
/// graph:
///
///   running -> told -> forced -> ended -> parked -> restarting -> running
///                                                  restarting -> restarting_told -> told
///
/// with `running -> forced` (a cancellation without a stop first),
/// `running|told -> ended`, and `parked -> ended` (a stop cancels the
/// restart). Readiness (`ready`), the books (`linked`) and why it was told
/// (`group`) are kept beside the phase: they hold in several phases.
enum class Phase : std::uint8_t {
  running,          ///< its coroutine runs; mark: when it started (its start timeout)
  told,             ///< told to stop; mark: when (its shutdown timeout)
  forced,           ///< cancelled; mark: when (the abandon bound)
  ended,            ///< its coroutine ended; it leaves the books, or parks, in the same step
  parked,           ///< ended; waits in the run's parked list; mark: when it restarts
  restarting,       ///< taken off that list; the loop starts its new run after the lock
  restarting_told,  ///< the same, and told to stop meanwhile: the new run gets that stop at once
};

/// Whether a child may go from one phase to the other: the graph above.
constexpr bool phase_step(Phase from, Phase to) {
  switch (from) {
    case Phase::running:
      return to == Phase::told || to == Phase::forced || to == Phase::ended;
    case Phase::told:
      return to == Phase::forced || to == Phase::ended;
    case Phase::forced:
      return to == Phase::ended;
    case Phase::ended:
      return to == Phase::parked;
    case Phase::parked:
      return to == Phase::restarting || to == Phase::ended;
    case Phase::restarting:
      return to == Phase::restarting_told || to == Phase::running || to == Phase::forced;
    case Phase::restarting_told:
      return to == Phase::told || to == Phase::forced;
  }
  return false;
}

/// One started child. The run owns the linked ones (`keep`, a reference
/// to itself that unlinking hands back to be released after the lock); its
/// completion handler owns it while its coroutine lives, so that the
/// cancellation signal outlives the coroutine. It refers to its run weakly:
/// nothing a child holds keeps a run (and so its other children) alive,
/// and its destructor takes no lock.
struct ChildNode final : ReadinessTarget, std::enable_shared_from_this<ChildNode> {
  /// `strand`: its own, or null where the manager's base executor runs on
  /// one thread (a strand there only costs).
  ChildNode(std::shared_ptr<Runnable> r, std::shared_ptr<ProcessControlHandler> h, std::string n,
            std::unique_ptr<asio::any_io_executor> strand_, const std::shared_ptr<ManagerRun>& run_,
            std::shared_ptr<const ChildOptions> o)
      : runnable(std::move(r)),
        handle(std::move(h)),
        name(std::move(n)),
        strand(std::move(strand_)),
        run(run_),
        options(std::move(o)) {}
  void on_ready(bool declared) override;
  void on_unready() override;
  void on_running() override;
  /// `options` is set once, before the node is shared: read without a lock.
  bool needs_declared_ready() const override { return options && options->explicit_ready; }
  /// Where its coroutine runs: its strand, or its run's base executor
  /// (`base`), which the caller holds while the run is alive.
  const asio::any_io_executor& executor(const asio::any_io_executor& base) const { return strand ? *strand : base; }
  ~ChildNode() = default;
  ChildNode(const ChildNode&) = delete;
  ChildNode& operator=(const ChildNode&) = delete;

  // One of these per service: the fields are ordered so that the small
  // ones share words (docs/performance.md counts bytes per service).
  std::shared_ptr<Runnable> runnable;
  std::shared_ptr<ProcessControlHandler> handle;
  const std::string name;                         // taken once, before it was linked: no user code under the lock
  std::unique_ptr<asio::any_io_executor> strand;  // null: the run's base serialises already
  asio::cancellation_signal cancel;               // the child coroutine's parent slot
  std::weak_ptr<ManagerRun> run;
  std::shared_ptr<const ChildOptions> options;  // null: the defaults
  std::shared_ptr<ChildNode> keep;              // under the lock: the run's ownership while linked
  // Its own limit when restarted under stop_all: allocated at its first
  // restart, since most children never have one.
  std::unique_ptr<RestartIntensity> intensity;

  // Under the manager's lock.
  ChildNode* prev = nullptr;
  ChildNode* next = nullptr;
  clock::time_point run_started{};
  sys_clock::time_point since{};
  // When it started, until told to stop; then when told, until forced; then
  // when forced. One field: each deadline only needs the latest.
  clock::time_point mark{};
  std::exception_ptr last_error{};
  std::uint64_t seq = 0;          // its sequence number in the run (see below)
  std::uint32_t restarts = 0;     // for status
  std::uint32_t consecutive = 0;  // restarts since it last ran reset_after without ending
  std::uint32_t failures = 0;     // runs that failed (thrown, or a start timeout): for /metrics
  // The run's health books (health_books.hpp): its place in the list of
  // children with a heartbeat_timeout and in that of children that may be
  // nested managers, whether the last look found it stale, and `seq`, its
  // place in insertion order (where a sliced snapshot goes on from).
  std::uint32_t beat_slot = 0;
  std::uint32_t nest_slot = 0;
  /// Stops decided for its current run and not yet handed to its handle
  /// (the lock is released in between). Its restart waits for them: a
  /// stop handed over after forget_shutdown() would reach the next run.
  std::uint32_t undelivered = 0;
  ChildState state = ChildState::starting;
  Phase phase = Phase::running;
  bool linked = false;
  bool ready = false;
  bool watches = false;  // its handle reports readiness
  bool group = false;    // told to stop so that its group can restart together
  bool may_nest = false;
  bool found_stale = false;

  bool done = false;  // strand-local

  /// Whether it runs with a heartbeat older than its heartbeat_timeout (the
  /// clock starting at its start), given its handle's last beat, read
  /// outside the lock. Under the manager's lock.
  bool stale(clock::time_point now, std::optional<clock::time_point> beat) const {
    if (!beat_watched()) return false;
    auto last = run_started;
    if (beat && *beat > last) last = *beat;
    return now - last > *options->heartbeat_timeout;
  }
  /// Whether its heartbeat is judged now: it has a heartbeat_timeout and
  /// runs (not stopping, ended, or waiting for a restart). Under the lock.
  bool beat_watched() const {
    if (!options || !options->heartbeat_timeout || !runs()) return false;
    return state == ChildState::running || state == ChildState::ready || state == ChildState::starting;
  }
  std::chrono::nanoseconds timeout_or(std::chrono::nanoseconds grace) const {
    return options && options->shutdown_timeout ? *options->shutdown_timeout : grace;
  }
  /// ChildOptions::stop_last.
  bool stops_last() const { return options && options->stop_last; }
  /// It has deadlines of its own, so the run looks at it child by child.
  bool has_own_deadlines() const {
    return options && (options->shutdown_timeout || options->start_timeout || options->stop_last);
  }
  /// Moves it to another phase along the graph above. Under the lock.
  void enter(Phase to) {
    assert(phase_step(phase, to));
    phase = to;
  }
  bool parked() const { return phase == Phase::parked; }
  /// Told to stop, or cancelled, in this run or in the restart under way.
  bool told() const { return phase == Phase::told || phase == Phase::forced || phase == Phase::restarting_told; }
  bool forced() const { return phase == Phase::forced; }
  bool restarting() const { return phase == Phase::restarting || phase == Phase::restarting_told; }
  /// Its coroutine runs (it may have been told to stop). A child can be
  /// `failed` while it still runs (a start timeout): that one is told to
  /// stop like any other.
  bool runs() const { return phase == Phase::running || phase == Phase::told || phase == Phase::forced; }
};

/// A runnable's name; user code, so never called under a library lock.
inline std::string name_of(const Runnable& r) {
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
inline std::string join_path(const PathLink* link, std::string_view tail = {}) {
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
  // A run's loop has ended but its process_start() has not completed (it
  // delivers its last events): a stop sent now is that run's, not kept.
  bool closing = false;
  ChildState self_state = ChildState::stopped;
  sys_clock::time_point self_since{};
  sys_clock::time_point run_began{};  // when the current (or last) run began: /metrics' start time
  /// Restarts and failures of children that have left the books, by name,
  /// so that /metrics' counters never go backwards: a child that comes
  /// back under the same name (the next run, after this manager itself was
  /// restarted, or added again) goes on from them. Only children that
  /// restarted or failed are kept, so a quiet tree keeps none.
  struct Retired {
    std::uint64_t restarts = 0;
    std::uint64_t failures = 0;
  };
  std::unordered_map<std::string, Retired> retired;
  std::string self_error;
  // What did not stop in the last run that ended ("inner/db" paths): a
  // parent reads it when this manager, its child, ends without an error.
  std::vector<std::string> last_not_stopped;
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
  std::vector<std::shared_ptr<ProcessControlHandler>> tell;  // a message other than shutdown
  // Told to stop: each gets a shutdown after the lock, and is then counted
  // delivered (ManagerRun::on_delivered).
  std::vector<std::shared_ptr<ChildNode>> stop;
  std::size_t counted = 0;  // of them, counted in their ChildNode::undelivered
  std::vector<std::shared_ptr<ChildNode>> force;
  std::vector<std::shared_ptr<Runnable>> abandoned;
  std::vector<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>> start;
  std::vector<std::shared_ptr<ChildNode>> restart;
  std::vector<std::shared_ptr<ChildNode>> released;  // dropped after the lock: their destructors run user code
  bool give_up = false;
  bool stop_fanout = false;  // `stop` is a concurrent stop's fan-out: its grace starts once it is delivered
};

class ManagerRun;

/// Delivers a readiness change (up the tree, to waiters), without recursion.
void notify_ready(ReadyNotice& who);
/// core.flush(), or after the readiness changes under way on this thread.
void flush_after(ManagerCore& core);
/// control(msg) on one handle, whatever it throws.
void tell_one(ProcessControlHandler& handle, const RuntimeControlMessage& msg) noexcept;
/// control(msg) on each handle; a handle that throws keeps it from none.
void tell_all(const std::vector<std::shared_ptr<ProcessControlHandler>>& handles, const RuntimeControlMessage& msg);
/// Hands out the stops of `act` (and, with `also_force`, its cancellations),
/// tells the run they were delivered, then lets go of act.stop and
/// act.force before the run may end.
void deliver_stop(ManagerRun& run, Actions& act, bool also_force = false);
/// Starts one child in `run` (from the loop, or add()); throws for a child
/// that cannot be started, or when the run no longer accepts children.
std::shared_ptr<ChildNode> start_child(const std::shared_ptr<ManagerRun>& run, std::shared_ptr<Runnable> child,
                                       std::shared_ptr<const ChildOptions> options,
                                       const std::deque<RuntimeControlMessage>& initial);
/// One run of a manager: process_start().
asio::awaitable<void> run_manager(std::shared_ptr<ManagerCore> core);

}  // namespace pm::detail
