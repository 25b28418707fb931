#include <processmanager/process_manager.hpp>

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
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
  return hint == 1 || (BOOST_ASIO_CONCURRENCY_HINT_IS_SPECIAL(hint) &&
                       !BOOST_ASIO_CONCURRENCY_HINT_IS_LOCKING(SCHEDULER, hint));
}

// A strand per child, except on an io_context that runs on one thread: there
// a strand only costs (two extra scheduler hops per wake-up, an allocation
// per child), as Asio's own documentation of implicit strands says.
asio::any_io_executor strand_of(const asio::any_io_executor& base) {
  if (const auto* io = base.target<asio::io_context::executor_type>()) {
    if (single_threaded(io->context())) return base;
    return asio::make_strand(*io);
  }
  if (const auto* tp = base.target<asio::thread_pool::executor_type>()) return asio::make_strand(*tp);
  return asio::make_strand(base);
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
                           std::string reason)
    : std::runtime_error(summary(first_of(process_name, cause, failures, reason))),
      failures_(first_of(std::move(process_name), std::move(cause), std::move(failures), std::move(reason))) {}

namespace detail {

class ManagerRun;

/// One started child. Owned by its completion handler (and briefly by
/// whoever posts to its strand); the run's list holds plain pointers to the
/// live ones, unlinked under the manager's lock before the node can die.
struct ChildNode : std::enable_shared_from_this<ChildNode> {
  ChildNode(std::shared_ptr<Runnable> r, std::shared_ptr<ProcessControlHandler> h, asio::any_io_executor s,
            std::shared_ptr<ManagerRun> run_)
      : runnable(std::move(r)), handle(std::move(h)), strand(std::move(s)), run(std::move(run_)) {}
  ~ChildNode();
  ChildNode(const ChildNode&) = delete;
  ChildNode& operator=(const ChildNode&) = delete;

  std::shared_ptr<Runnable> runnable;
  std::shared_ptr<ProcessControlHandler> handle;
  asio::any_io_executor strand;
  asio::cancellation_signal cancel;  // the child coroutine's parent slot
  std::shared_ptr<ManagerRun> run;

  bool done = false;  // strand-local

  // Under the manager's lock.
  ChildNode* prev = nullptr;
  ChildNode* next = nullptr;
  bool linked = false;
  bool forced = false;
};

/// The manager's shared state: its children, its current run, the messages
/// sent while it is not running.
class ManagerCore final : public std::enable_shared_from_this<ManagerCore> {
 public:
  ManagerCore(std::string name_, std::chrono::nanoseconds grace_, std::chrono::nanoseconds abandon_, bool cleanup)
      : name(std::move(name_)), grace(grace_), abandon(abandon_), auto_cleanup(cleanup) {}

  void control(RuntimeControlMessage msg);
  asio::awaitable<void> shutdown();

  const std::string name;
  const std::chrono::nanoseconds grace;
  const std::chrono::nanoseconds abandon;
  const bool auto_cleanup;

  mutable std::mutex mu;
  std::vector<std::shared_ptr<Runnable>> inserted;
  std::weak_ptr<ManagerRun> current;
  std::deque<RuntimeControlMessage> pending;  // sent while not running
  std::size_t finished_kept = 0;              // finished children kept (auto_cleanup off)
};

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

 private:
  std::weak_ptr<ManagerCore> core_;
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
  ChildNode* head = nullptr;
  std::size_t live = 0;
  bool accepting = true;
  bool stopping = false;
  bool forcing = false;
  clock::time_point stop_at{};
  clock::time_point force_at{};
  std::vector<Failure> failures;
  asio::steady_timer* timer = nullptr;
  bool wake = false;
  std::vector<std::pair<asio::any_io_executor, asio::any_completion_handler<void()>>> stopped_waiters;

  void link(ChildNode& n) {
    n.next = head;
    if (head != nullptr) head->prev = &n;
    head = &n;
    n.linked = true;
    ++live;
  }
  void unlink(ChildNode& n) {
    if (!n.linked) return;
    if (n.prev != nullptr) n.prev->next = n.next;
    if (n.next != nullptr) n.next->prev = n.prev;
    if (head == &n) head = n.next;
    n.prev = n.next = nullptr;
    n.linked = false;
    --live;
  }
  /// Wakes the run's loop; call with core->mu held.
  void poke() {
    wake = true;
    if (timer != nullptr) timer->cancel();
  }
  /// Starts the graceful stop; returns the handles to tell. Under core->mu.
  std::vector<std::shared_ptr<ProcessControlHandler>> begin_stop() {
    std::vector<std::shared_ptr<ProcessControlHandler>> handles;
    if (stopping) return handles;
    stopping = true;
    stop_at = clock::now();
    handles.reserve(live);
    for (ChildNode* n = head; n != nullptr; n = n->next) handles.push_back(n->handle);
    poke();
    return handles;
  }
  /// Marks every live child forced and returns them. Under core->mu.
  std::vector<std::shared_ptr<ChildNode>> begin_force() {
    std::vector<std::shared_ptr<ChildNode>> nodes;
    forcing = true;
    stopping = true;
    force_at = clock::now();
    nodes.reserve(live);
    for (ChildNode* n = head; n != nullptr; n = n->next) {
      n->forced = true;
      if (auto sp = n->weak_from_this().lock()) nodes.push_back(std::move(sp));
    }
    return nodes;
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

void force(const std::vector<std::shared_ptr<ChildNode>>& nodes) {
  for (const auto& n : nodes) {
    // Emitted on the child's strand, where its coroutine runs.
    asio::post(n->strand, [n] {
      if (!n->done) n->cancel.emit(asio::cancellation_type::terminal);
    });
  }
}

/// The path of a failed child and what it threw, flattening a nested
/// ProcessError so that the root names the leaf ("root/db/writer").
std::vector<Failure> failures_of(const std::string& manager, const std::string& child, const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const ProcessError& pe) {
    std::vector<Failure> out;
    out.reserve(pe.failures().size());
    for (const auto& f : pe.failures()) out.push_back(Failure{manager + "/" + f.process_name, f.cause, f.reason});
    return out;
  } catch (...) {
    return {Failure{manager + "/" + child, e}};
  }
}

void child_ended(const std::shared_ptr<ChildNode>& node, const std::exception_ptr& e) {
  ManagerRun& run = *node->run;
  ManagerCore& core = *run.core;
  // The name is needed only to report something: a clean end, the common
  // case at shutdown, builds no string.
  auto child_name = [&node]() -> std::string {
    try {
      return node->runnable->process_name();
    } catch (...) {
      return "<unnamed>";
    }
  };
  std::vector<Failure> new_failures;
  bool timed_out = false;
  std::vector<std::shared_ptr<ProcessControlHandler>> to_stop;
  bool late = false;
  if (e) {
    bool forced = false;
    {
      std::lock_guard lock(core.mu);
      forced = node->forced;
    }
    if (forced && is_operation_aborted(e)) {
      timed_out = true;
    } else {
      new_failures = failures_of(core.name, child_name(), e);
    }
  }
  {
    std::lock_guard lock(core.mu);
    late = !run.accepting;
    run.unlink(*node);
    if (!new_failures.empty()) {
      run.failures.insert(run.failures.end(), new_failures.begin(), new_failures.end());
      to_stop = run.begin_stop();
    } else if (!e && !core.auto_cleanup) {
      ++core.finished_kept;
    }
    if (run.live == 0) run.poke();
  }
  for (const auto& f : new_failures) log_line("ERROR", f.process_name, one_failure(f));
  if (timed_out) log_line("WARN", core.name + "/" + child_name(), "did not stop within the grace period; cancelled");
  if (late) log_line("WARN", core.name + "/" + child_name(), "ended after its manager had abandoned it");
  tell_all(to_stop, RuntimeControlMessage::shutdown());
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

void start_child(const std::shared_ptr<ManagerRun>& run, std::shared_ptr<Runnable> child,
                 const std::deque<RuntimeControlMessage>& initial) {
  ManagerCore& core = *run->core;
  std::shared_ptr<ProcessControlHandler> handle = child->process_handle();
  if (!handle) {
    throw std::invalid_argument("ProcessManager '" + core.name + "': child '" + child->process_name() +
                                "' returned a null process_handle()");
  }
  auto node = std::make_shared<ChildNode>(std::move(child), handle, strand_of(run->base), run);
  bool stop_now = false;
  {
    std::lock_guard lock(core.mu);
    if (!run->accepting) {
      node->run.reset();
      throw std::logic_error("ProcessManager '" + core.name + "': add() after the manager finished");
    }
    run->link(*node);
    stop_now = run->stopping;
  }
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
    return;
  }
  // Spawned from a plain post rather than directly: co_spawn's own hop to
  // the strand counts as a continuation, which Asio keeps on the current
  // thread's private queue, so every child of a manager would start on the
  // manager's thread and a busy child could hold the others back. A post
  // goes to the shared queue and wakes an idle thread.
  asio::post(node->strand, [node, body = std::move(body)]() mutable {
    asio::co_spawn(node->strand, std::move(body), ChildDone{node});
  });
}

/// Waits on the run's timer until its deadline or a poke. The wait is set
/// up under the lock, so a poke cannot fall between check and wait.
template <class Token>
auto wait_for_event(ManagerRun& run, asio::steady_timer& timer, Token&& token) {
  return asio::async_initiate<Token, void(boost::system::error_code)>(
      [&run, &timer](auto handler) {
        std::lock_guard lock(run.core->mu);
        clock::time_point deadline = clock::time_point::max();
        if (run.forcing) {
          deadline = run.force_at + run.core->abandon;
        } else if (run.stopping) {
          deadline = run.stop_at + run.core->grace;
        }
        if (run.wake) {
          run.wake = false;
          deadline = clock::time_point::min();
        }
        timer.expires_at(deadline);
        timer.async_wait(std::move(handler));
      },
      token);
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
  std::vector<std::shared_ptr<Runnable>> children;
  std::deque<RuntimeControlMessage> initial;
  {
    std::lock_guard lock(core->mu);
    if (!core->current.expired()) {
      throw std::logic_error("ProcessManager '" + core->name + "': process_start() called while it is already running");
    }
    core->current = run;
    run->timer = &timer;
    children = core->inserted;
    core->finished_kept = 0;
    // Kept messages go to every child before it starts; only the first
    // shutdown among them, as when running.
    for (auto& msg : core->pending) {
      if (msg.is_shutdown()) {
        if (run->stopping) continue;
        run->stopping = true;
        run->stop_at = clock::now();
      }
      initial.push_back(std::move(msg));
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
    }
  } detach{*run};

  for (const auto& child : children) {
    try {
      start_child(run, child, initial);
    } catch (...) {
      std::vector<std::shared_ptr<ProcessControlHandler>> to_stop;
      auto failures = failures_of(core->name, child->process_name(), std::current_exception());
      {
        std::lock_guard lock(core->mu);
        run->failures.insert(run->failures.end(), failures.begin(), failures.end());
        to_stop = run->begin_stop();
      }
      for (const auto& f : failures) log_line("ERROR", f.process_name, "failed to start: " + describe(f.cause));
      tell_all(to_stop, RuntimeControlMessage::shutdown());
    }
  }

  std::vector<std::shared_ptr<Runnable>> abandoned_runnables;
  for (;;) {
    {
      std::lock_guard lock(core->mu);
      // Seen together with closing the door, so no add() can slip in after.
      if (run->live == 0) {
        run->accepting = false;
        break;
      }
    }
    boost::system::error_code ec;
    auto token = asio::redirect_error(asio::use_awaitable, ec);
    co_await wait_for_event(*run, timer, token);
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    const bool parent_cancelled = cs.cancelled() != asio::cancellation_type::none;
    std::vector<std::shared_ptr<ChildNode>> to_force;
    bool give_up = false;
    {
      std::lock_guard lock(core->mu);
      const auto now = clock::now();
      // Our parent cancelled us, or the grace period is over: cancel every
      // child at once. The abandon bound is over: stop waiting for them.
      const bool grace_over = !ec && run->stopping && now >= run->stop_at + core->grace;
      if (!run->forcing && (parent_cancelled || grace_over)) {
        to_force = run->begin_force();
      } else if (!ec && run->forcing && now >= run->force_at + core->abandon) {
        give_up = true;
        run->accepting = false;
        for (ChildNode* n = run->head; n != nullptr; n = n->next) abandoned_runnables.push_back(n->runnable);
      }
    }
    force(to_force);
    if (give_up) break;
  }

  std::vector<std::pair<asio::any_io_executor, asio::any_completion_handler<void()>>> waiters;
  std::vector<Failure> failures;
  {
    std::lock_guard lock(core->mu);
    run->accepting = false;
    run->timer = nullptr;
    waiters.swap(run->stopped_waiters);
    failures = run->failures;
    if (core->current.lock() == run) core->current.reset();
  }
  for (const auto& r : abandoned_runnables) {
    log_line("ERROR", core->name + "/" + r->process_name(),
             "ignored terminal cancellation; abandoned so that the manager can stop");
  }
  for (auto& [wex, w] : waiters) asio::post(wex, std::move(w));
  if (!failures.empty()) {
    Failure first = failures.front();
    throw ProcessError(std::move(first.process_name), std::move(first.cause), std::move(failures),
                       std::move(first.reason));
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace

void ManagerCore::control(RuntimeControlMessage msg) {
  std::shared_ptr<ManagerRun> run;  // released after the lock
  std::vector<std::shared_ptr<ProcessControlHandler>> targets;
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
      targets = run->begin_stop();
    } else {
      targets.reserve(run->live);
      for (ChildNode* n = run->head; n != nullptr; n = n->next) targets.push_back(n->handle);
    }
  }
  tell_all(targets, msg);
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

ProcessManager::ProcessManager()
    : ProcessManager(std::make_shared<detail::ManagerCore>(default_name(), default_grace, default_abandon, true)) {}

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
  core_->inserted.push_back(std::move(child));
}

void ProcessManager::add(std::shared_ptr<Runnable> child) {
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
  detail::start_child(run, std::move(child), {});
}

asio::awaitable<void> ProcessManager::process_start() { return detail::run_manager(core_); }

std::string ProcessManager::process_name() const { return core_->name; }

std::shared_ptr<ProcessControlHandler> ProcessManager::process_handle() { return handle_; }

std::chrono::nanoseconds ProcessManager::shutdown_grace_period() const { return core_->grace; }

std::chrono::nanoseconds ProcessManager::abandon_timeout() const { return core_->abandon; }

bool ProcessManager::auto_cleanup() const { return core_->auto_cleanup; }

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
  return run ? run->live : 0;
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
  children_.push_back(std::move(child));
  return *this;
}

std::shared_ptr<ProcessManager> ProcessManagerBuilder::build() {
  auto core =
      std::make_shared<detail::ManagerCore>(name_.empty() ? default_name() : name_, grace_, abandon_, auto_cleanup_);
  core->inserted = children_;
  return std::shared_ptr<ProcessManager>(new ProcessManager(std::move(core)));
}

}  // namespace pm
