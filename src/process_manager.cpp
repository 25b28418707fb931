// The public face of the supervision core: ProcessManager, its builder,
// readiness waits, status snapshots and observation.
#include <processmanager/process_manager.hpp>

#include <stdexcept>
#include <unordered_set>

#include "core/snapshot.hpp"

namespace pm {

using detail::default_abandon;
using detail::default_grace;

namespace {

std::string default_name() {
  static std::atomic<unsigned long long> next_id{1};
  return "process-manager-" + std::to_string(next_id.fetch_add(1, std::memory_order_relaxed));
}

}  // namespace

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
  auto own = std::make_shared<ChildOptions>(options);
  if (dynamic_cast<const detail::StopsLast*>(&child) != nullptr) own->stop_last = true;
  return own;
}

/// The options of a child inserted without any: the defaults (null), or
/// what a service that stops last needs.
std::shared_ptr<const ChildOptions> defaults_for(const Runnable& child) {
  if (dynamic_cast<const detail::StopsLast*>(&child) == nullptr) return nullptr;
  return std::make_shared<const ChildOptions>(ChildOptions{.stop_last = true});
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

void ProcessManager::adopt(Runnable& child) const {
  // A manager inside supervisors (RestartSupervisor) belongs to this tree
  // as much as one inserted bare. The bound guards against a supervisor of
  // itself.
  const ProcessManager* nested = nullptr;
  std::shared_ptr<Runnable> held;  // keeps the supervised runnable while it is looked at
  Runnable* r = &child;
  for (int hops = 0; r != nullptr && hops < 64; ++hops) {
    nested = dynamic_cast<const ProcessManager*>(r);
    if (nested != nullptr) break;
    const auto handle = r->process_handle();
    const auto* sup = dynamic_cast<const detail::Supervising*>(handle.get());
    if (sup == nullptr) return;
    held = sup->supervised_runnable();
    r = held.get();
  }
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
  auto opts = defaults_for(*child);
  core_->inserted.emplace_back(std::move(child), std::move(opts));
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

void ProcessManager::add(std::shared_ptr<Runnable> child) {
  if (!child) throw std::invalid_argument("ProcessManager '" + core_->name + "': add() of a null runnable");
  auto opts = defaults_for(*child);
  add_with(std::move(child), std::move(opts));
}

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
    w = detail::Waiter::make(std::move(handler), true);
    std::optional<bool> settled;
    {
      std::lock_guard lock(core->mu);
      auto run = core->current.lock();
      if (core->ready) {
        settled = true;
      } else if ((run && run->stopping) || (!run && core->finished)) {
        settled = false;  // stopping or stopped: it will not become ready
      } else {
        // The timer is armed before the waiter is listed: once listed, it
        // may be completed on another thread and this frame resume and
        // end, so nothing of the frame may be touched after the lock.
        timer.expires_at(detail::sat_add(std::chrono::steady_clock::now(), timeout));
        timer.async_wait([w](const boost::system::error_code& ec) {
          if (!ec) w->complete(false);
        });
        core->ready_waiters.push_back(w);
      }
    }
    if (settled) w->complete(*settled);
  };
  // Taken off the list however the wait ends (a cancelled one included).
  struct Unlist {
    Unlist(detail::ManagerCore& c, const std::shared_ptr<detail::Waiter>& waiter) : core(c), w(waiter) {}
    detail::ManagerCore& core;
    const std::shared_ptr<detail::Waiter>& w;
    Unlist(const Unlist&) = delete;
    Unlist& operator=(const Unlist&) = delete;
    ~Unlist() {
      std::lock_guard lock(core.mu);
      auto& list = core.ready_waiters;
      list.erase(std::remove(list.begin(), list.end(), w), list.end());
    }
  } unlist(*core, w);
  co_return co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(boost::system::error_code, bool)>(
      std::move(start_wait), asio::use_awaitable);
}

bool ProcessManager::is_ready() const {
  std::lock_guard lock(core_->mu);
  return core_->ready;
}

ChildStatus ProcessManager::status() const {
  ChildStatus out = detail::peek_self(*core_);
  // Breadth by breadth with an explicit list, not recursion: a tree
  // thousands of levels deep costs time linear in its nodes (plus its
  // paths) and no stack per level. Each manager's lock is taken alone.
  std::vector<std::pair<ChildStatus*, std::shared_ptr<detail::ManagerCore>>> work{{&out, core_}};
  std::unordered_set<const detail::ManagerCore*> seen{core_.get()};
  while (!work.empty()) {
    auto [slot, core] = std::move(work.back());
    work.pop_back();
    // Paths are full ("root/db/writer") whatever the depth. All of a
    // manager's children are read at once, so the slots stay put.
    detail::PeekCursor cursor;
    for (auto& [index, inner] : detail::peek_children(*core, slot->path + "/", slot->children, cursor)) {
      // A manager met twice (a supervisor's loop) is listed, not entered again.
      if (seen.insert(inner.get()).second) work.emplace_back(&slot->children[index], std::move(inner));
    }
  }
  return out;
}

HealthSummary ProcessManager::health() const { return detail::summarize(core_); }

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
  children_.push_back(Planned{std::move(child), nullptr, {}, std::nullopt});
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::pre_insert_with(ChildFactory make) {
  return plan_factory(std::move(make), std::nullopt);
}

ProcessManagerBuilder& ProcessManagerBuilder::pre_insert_with(ChildFactory make, ChildOptions options) {
  return plan_factory(std::move(make), options);
}

ProcessManagerBuilder& ProcessManagerBuilder::plan_factory(ChildFactory make, std::optional<ChildOptions> options) {
  if (!make) {
    throw std::invalid_argument("ProcessManagerBuilder '" + name_ + "': pre_insert_with() of an empty factory");
  }
  children_.push_back(Planned{nullptr, nullptr, std::move(make), options});
  return *this;
}

ProcessManagerBuilder& ProcessManagerBuilder::pre_insert(std::shared_ptr<Runnable> child, ChildOptions options) {
  if (!child) throw std::invalid_argument("ProcessManagerBuilder '" + name_ + "': pre_insert() of a null runnable");
  auto opts = checked(name_, *child, options);
  children_.push_back(Planned{std::move(child), std::move(opts), {}, std::nullopt});
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
  for (const auto& planned : children_) {
    if (planned.make) {
      auto child = planned.make(manager);
      if (!child) {
        throw std::invalid_argument("ProcessManagerBuilder '" + manager->process_name() +
                                    "': a pre_insert_with() factory returned null");
      }
      if (planned.make_options) {
        manager->insert(std::move(child), *planned.make_options);
      } else {
        manager->insert(std::move(child));
      }
    } else if (planned.options) {
      manager->insert(planned.child, *planned.options);
    } else {
      manager->insert(planned.child);
    }
  }
  return manager;
}

}  // namespace pm
