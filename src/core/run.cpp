// A run of a manager: starting its children, their ends, readiness going up
// the tree, and the loop that waits for deadlines and pokes.
#include <typeinfo>

#include "run_state.hpp"
#include "serial.hpp"
#include "snapshot.hpp"

namespace pm::detail {

namespace {

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

/// Where a child of `run` runs: a shard of its set, when it has one, on a
/// strand there as strand_of decides; null for the run's own base.
std::unique_ptr<asio::any_io_executor> place(const ManagerRun& run, const ChildOptions* options) {
  if (!run.shards) return strand_of(run.base);
  const auto& shard = run.shards->shards[run.shards->pick(options != nullptr ? options->shard : std::nullopt)];
  const auto* own = run.base.target<asio::io_context::executor_type>();
  if (own != nullptr && *own == shard) return strand_of(run.base);
  // Another shard: its own executor where no strand is needed (null would
  // mean the run's base).
  const asio::any_io_executor there(shard);
  auto strand = strand_of(there);
  return strand ? std::move(strand) : std::make_unique<asio::any_io_executor>(there);
}

}  // namespace

asio::any_io_executor serial_executor(const asio::any_io_executor& ex) {
  if (ex.target<asio::strand<asio::io_context::executor_type>>() != nullptr ||
      ex.target<asio::strand<asio::thread_pool::executor_type>>() != nullptr ||
      ex.target<asio::strand<asio::any_io_executor>>() != nullptr)
    return ex;
  auto strand = strand_of(ex);
  return strand ? *strand : ex;
}

void tell_one(ProcessControlHandler& handle, const RuntimeControlMessage& msg) noexcept {
  try {
    handle.control(msg);
  } catch (...) {
    // control() is specified not to throw; a user handle that does must
    // not keep the message from the others, nor a child from starting.
  }
}

namespace {

/// tell_one, with a guard's wake-up left to `batch`.
void tell_into(ProcessControlHandler& handle, const RuntimeControlMessage& msg, WakeBatch& batch) noexcept {
  try {
    if (typeid(handle) == typeid(GuardState)) {
      static_cast<GuardState&>(handle).control_into(msg, batch);
    } else {
      handle.control(msg);
    }
  } catch (...) {
    // As in tell_one.
  }
}

}  // namespace

void tell_all(const std::vector<std::shared_ptr<ProcessControlHandler>>& handles, const RuntimeControlMessage& msg) {
  // Every message is queued before any service is woken; the wake-ups go
  // out one handler per io_context (WakeBatch), which is what lets a
  // sharded run's fan-out scale.
  WakeBatch batch;
  for (const auto& h : handles) tell_into(*h, msg, batch);
  batch.post();
}

/// Posts a terminal cancellation to each node, on its own executor.
void force(const asio::any_io_executor& base, const std::vector<std::shared_ptr<ChildNode>>& nodes) {
  for (const auto& n : nodes) {
    // Emitted on the child's strand, where its coroutine runs.
    asio::post(n->executor(base), [n] {
      if (!n->done) n->cancel.emit(asio::cancellation_type::terminal);
    });
  }
}

/// Hands out the stop messages of `act`, then says so to the run: a
/// concurrent stop's grace starts, and restarts held back for them go on.
void deliver_stop(ManagerRun& run, Actions& act, bool also_force) {
  if (act.stop.empty() && !act.stop_fanout) {
    if (also_force) force(run.base, act.force);
    return;
  }
  const auto msg = RuntimeControlMessage::shutdown();
  {
    WakeBatch batch;  // as in tell_all
    for (const auto& n : act.stop) tell_into(*n->handle, msg, batch);
  }
  {
    std::lock_guard lock(run.core->mu);
    run.on_delivered(act, clock::now());
  }
  if (also_force) force(run.base, act.force);
  // Once the run's count of stops on their way reaches zero it may end, and
  // its io_context may be destroyed: a thread outside it (a shutdown sent
  // from anywhere) must have let go of the children first, or the last
  // reference to one (and to its strand) could go after the io_context.
  // Let go outside the lock: a child's destructor may run user code.
  const std::size_t told = act.stop.size();
  act.stop.clear();
  act.force.clear();
  std::lock_guard lock(run.core->mu);
  run.on_released(told);
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
  ChildEnd end;
  end.error = e;
  bool forced = false;
  bool collateral = false;
  {
    std::lock_guard lock(core.mu);
    forced = node->forced();
    collateral = run.stopping;
  }
  // Cancelled after its grace: a coroutine ends with operation_aborted (or
  // catches it and returns), a blocking service's run with AbandonedError.
  // None is a failure of its own; all are children that did not stop in
  // time.
  if (forced && (!e || is_operation_aborted(e) || is_abandonment(e))) {
    end.timed_out = true;
  } else if (e) {
    end.failures = failures_of(core.name, node->name, e, collateral, &end.nested_not_stopped);
  } else if (const auto inner = nested_core(node->handle)) {
    // A nested manager that ended cleanly throws no ProcessError to carry
    // what did not stop in it; its run left that on its core.
    std::vector<std::string> paths;
    {
      std::lock_guard lock(inner->mu);
      paths = inner->last_not_stopped;
    }
    for (auto& p : paths) end.nested_not_stopped.push_back(std::string(core.name).append("/").append(p));
  }
  ReadyNotice readiness;
  {
    std::lock_guard lock(core.mu);
    released = run.on_end(node, std::move(end), clock::now(), act, readiness);
  }
  notify_ready(readiness);  // before the events: whoever reacts to one sees readiness up to date
  core.flush();
  deliver_stop(run, act, true);
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
    if (!node->linked || node->ready || !node->runs()) return;
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
    if (!node->linked || !node->runs() || node->state != ChildState::starting) return;
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

void spawn(const std::shared_ptr<ManagerRun>& run, const std::shared_ptr<ChildNode>& node, bool again) {
  // Spawned from a plain post rather than directly: co_spawn's own hop to
  // the strand counts as a continuation, which Asio keeps on the current
  // thread's private queue, so every child of a manager would start on the
  // manager's thread and a busy child could hold the others back. A post
  // goes to the shared queue and wakes an idle thread. The handler holds
  // the run weakly rather than a copy of its executor (16 bytes, not 56): a
  // manager posts all its children's starts at once, so that is 4 MB of
  // peak at 100k children. A run that is gone by the time the start comes
  // round gave up on this child, which then never starts.
  //
  // process_start() is called here, on the child's own executor, not by
  // the manager: its coroutine frame is then allocated on the thread that
  // runs it, which in a sharded run is the shard's (its own malloc arena;
  // the frame freed where it was allocated), and a manager starting many
  // children does not allocate every frame on its own thread.
  asio::post(node->executor(run->base), [node, weak = std::weak_ptr<ManagerRun>(run), again]() mutable {
    const auto alive = weak.lock();
    if (!alive) return;
    if (again) node->done = false;  // strand-local, like the coroutine it belongs to
    asio::awaitable<void> body;
    try {
      body = node->runnable->process_start();
    } catch (...) {
      // A process_start() that throws before returning its coroutine fails
      // like one that throws inside it.
      node->done = true;
      child_ended(node, std::current_exception());
      return;
    }
    // A handle that cannot report readiness: running is ready. A guard's
    // handle reports both when the service takes its ticker (on_ready).
    if (!node->watches) node->on_ready(true);
    asio::co_spawn(node->executor(alive->base), std::move(body), ChildDone{node});
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
  auto where = place(*run, options.get());  // before `options` is moved from
  auto node =
      std::make_shared<ChildNode>(std::move(child), handle, std::move(name), std::move(where), run, std::move(options));
  node->watches = watch(*node, run);
  bool stop_now = false;
  bool force_now = false;
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
    // One that stops last waits until the others have ended, unless the
    // manager has already cancelled them all.
    // While the initial children are still being started (a run that
    // begins stopping), the others may not exist yet: the loop tells it.
    stop_now = run->stopping && (run->forcing || !node->stops_last() || (!run->launching && run->live == run->lasts));
    if (stop_now) {
      // Added after the manager cancelled its children: cancelled as they
      // were, and abandoned with them at the same bound.
      force_now = run->forcing;
      node->enter(force_now ? Phase::forced : Phase::told);
      node->mark = now;
      node->state = ChildState::stopping;
    }
    if (run->special > 0) run->poke();  // its start timeout joins the deadlines; a last one's stop
    run->update_ready(readiness);       // a new child makes the manager not ready
  }
  notify_ready(readiness);  // before the events: whoever reacts to one sees readiness up to date
  core.flush();
  // Kept in the child's inbox and delivered to its first tick. A shutdown
  // among them is the one this child gets: it must not get a second.
  // The child is on the books now: a user handle whose control() throws
  // (it is specified not to) must not keep it from being started, or the
  // manager would wait for a child that never runs.
  bool told_to_stop = false;
  for (const auto& msg : initial) {
    // A kept shutdown is the run's stop: a child that stops last is told
    // it only once the others have ended (by the loop, like any stop).
    if (msg.is_shutdown() && !stop_now) continue;
    told_to_stop = told_to_stop || msg.is_shutdown();
    tell_one(*handle, msg);
  }
  if (stop_now && !told_to_stop) tell_one(*handle, RuntimeControlMessage::shutdown());

  spawn(run, node, false);
  if (force_now) force(run->base, {node});  // queued behind its start on its strand
  return node;
}

/// Runs a parked child again (same node, same handle, a fresh coroutine).
void restart_child(const std::shared_ptr<ManagerRun>& run, const std::shared_ptr<ChildNode>& node) {
  ManagerCore& core = *run->core;
  // Whatever stop reached it before it ended belongs to the run that ended.
  forget_shutdown(node->handle);
  Phase phase = Phase::running;
  {
    std::lock_guard lock(core.mu);
    phase = run->on_restarted(*node, clock::now());
  }
  core.flush();
  // Told to stop (or cancelled) while its restart was on its way: the new
  // run gets that stop first.
  if (phase != Phase::running) tell_one(*node->handle, RuntimeControlMessage::shutdown());
  spawn(run, node, true);
  if (phase == Phase::forced) force(run->base, {node});  // queued behind its start on its strand
}

void execute(ManagerRun& run, Actions& act) {
  run.core->flush();
  deliver_stop(run, act, true);
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
      run->begin_stop(clock::now(), act);
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

asio::awaitable<void> run_manager(std::shared_ptr<ManagerCore> core) {
  co_await asio::this_coro::throw_if_cancelled(false);
  auto ex = co_await asio::this_coro::executor;
  auto run = std::make_shared<ManagerRun>(core, base_of(ex));
  run->shards = shards_of(run->base);
  if (run->shards) {
    run->shard_work.reserve(run->shards->shards.size());
    for (const auto& s : run->shards->shards) {
      run->shard_work.emplace_back(asio::prefer(s, asio::execution::outstanding_work.tracked));
    }
  }
  asio::steady_timer timer(ex);
  std::vector<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>> children;
  {
    std::lock_guard lock(core->mu);
    if (!core->current.expired()) {
      throw std::logic_error("ProcessManager '" + core->name + "': process_start() called while it is already running");
    }
    core->current = run;
    core->closing = false;
    ++core->runs;
    core->finished = false;
    core->set_self(ChildState::running);
    core->run_began = core->self_since;
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
      // The shards may go once the run has ended: the run itself may be
      // released later, by a thread outside them (control()).
      run.shard_work.clear();
      ManagerCore& c = *run.core;
      std::unique_lock lock(c.mu);
      run.timer = nullptr;
      run.accepting = false;
      run.awaiting = nullptr;
      c.closing = false;
      // Torn down unfinished (its io_context destroyed): the manager no
      // longer runs, and must not go on saying it is ready. No event: no
      // one may be left to deliver it to.
      if (c.current.lock().get() != &run) return;
      c.current.reset();
      c.ready = false;
      c.finished = true;
      c.self_state = ChildState::stopped;
      c.self_since = now_us();
      // Waiters on other io_contexts hear it: it will not become ready, and
      // it has stopped as far as it ever will. (Those on the dying
      // io_context were dropped by its shutdown already.)
      auto ready_waiters = std::move(c.ready_waiters);
      auto stopped_waiters = std::move(run.stopped_waiters);
      c.ready_waiters.clear();
      run.stopped_waiters.clear();
      lock.unlock();
      for (auto& w : ready_waiters) w->complete(false);
      for (auto& w : stopped_waiters) w->complete(true);
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
      // A stop still being handed over by another thread holds the end:
      // once the run completes, a next run's children may be started, and
      // that stop must not reach them.
      if (run->live == 0 && run->to_start.empty() && run->undelivered == 0) {
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
    core->last_not_stopped = not_stopped;
    core->set_self(failures.empty() ? ChildState::stopped : ChildState::failed);
    core->finished = true;
    if (!failures.empty()) core->self_error = describe(failures.front());
    if (core->current.lock() == run) {
      core->current.reset();
      core->closing = true;  // until process_start() completes
    }
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
    // The waiter holds no work (it may belong to another io_context, which
    // may go first), but this wait is the run's own: without the hold, the
    // io_context could run out of work while another thread delivers the
    // last events, io.run() would return with the run unfinished, and its
    // owner could destroy the io_context under that thread.
    const auto hold = asio::prefer(run->base, asio::execution::outstanding_work.tracked);
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
    co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(boost::system::error_code, bool)>(
        std::move(wait_drained), asio::use_awaitable);
  }
  {
    std::lock_guard lock(core->mu);
    core->closing = false;
  }
  for (auto& w : waiters) w->complete(true);
  if (!failures.empty()) {
    Failure first = failures.front();
    throw ProcessError(std::move(first.process_name), std::move(first.cause), std::move(failures),
                       std::move(first.reason), std::move(not_stopped));
  }
}

}  // namespace pm::detail
