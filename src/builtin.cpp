// The built-in services: IdleProcess, SignalReceiver, blocking services and
// RestartSupervisor. One translation unit keeps the build lean.
#include <processmanager/builtin/blocking.hpp>
#include <processmanager/builtin/idle.hpp>
#include <processmanager/builtin/restart.hpp>
#include <processmanager/builtin/signals.hpp>
#include <processmanager/detail/guard_state.hpp>

#include <signal.h>
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include "log.hpp"

namespace pm {

using detail::log_line;

namespace {

std::string millis(std::chrono::nanoseconds d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

}  // namespace

// ---------------------------------------------------------------- IdleProcess

IdleProcess::IdleProcess(std::string name) : name_(name), guard_(std::move(name)) {}

asio::awaitable<void> IdleProcess::process_start() {
  auto ticker = co_await guard_.runtime_ticker();
  for (;;) {
    auto msg = co_await ticker.next_control();
    if (msg.is_shutdown()) co_return;
  }
}

// ------------------------------------------------------------- SignalReceiver

std::string signal_name(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGQUIT:
      return "SIGQUIT";
    case SIGHUP:
      return "SIGHUP";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGUSR2:
      return "SIGUSR2";
    default:
      return "signal " + std::to_string(sig);
  }
}

SignalReceiver::SignalReceiver(std::shared_ptr<ProcessControlHandler> tree, SignalReceiverOptions options)
    : tree_(std::move(tree)), options_(std::move(options)) {
  if (!tree_) throw std::invalid_argument("SignalReceiver: the tree's handle is null");
}

/// What each watched signal's disposition was before listen(): asio's
/// signal_set resets a signal to SIG_DFL when its last registration goes,
/// which would turn an ignored SIGHUP into one that kills the process.
struct SignalReceiver::Saved {
  std::vector<std::pair<int, struct sigaction>> actions;
};

SignalReceiver::~SignalReceiver() { uninstall(); }

void SignalReceiver::uninstall() noexcept {
  if (!signals_) return;
  signals_.reset();  // asio removes its handlers (SIG_DFL where it was the last user)
  if (!saved_) return;
  for (const auto& [sig, before] : saved_->actions) {
    struct sigaction now {};
    // Only where asio left SIG_DFL behind: another signal_set still
    // watching the signal keeps its handler.
    if (::sigaction(sig, nullptr, &now) == 0 && (now.sa_flags & SA_SIGINFO) == 0 && now.sa_handler == SIG_DFL) {
      ::sigaction(sig, &before, nullptr);
    }
  }
  saved_.reset();
}

void SignalReceiver::listen(const asio::any_io_executor& ex) {
  uninstall();  // a second listen() replaces the first, restoring in between
  auto saved = std::make_unique<Saved>();
  auto remember = [&saved](int sig) {
    for (const auto& entry : saved->actions) {
      if (entry.first == sig) return;
    }
    struct sigaction before {};
    if (::sigaction(sig, nullptr, &before) == 0) saved->actions.emplace_back(sig, before);
  };
  for (int sig : options_.stop_signals) remember(sig);
  for (int sig : options_.reload_signals) remember(sig);
  auto set = std::make_unique<asio::signal_set>(ex);
  for (int sig : options_.stop_signals) set->add(sig);
  for (int sig : options_.reload_signals) set->add(sig);
  signals_ = std::move(set);
  saved_ = std::move(saved);
}

asio::awaitable<void> SignalReceiver::process_start() {
  auto ex = co_await asio::this_coro::executor;
  if (!signals_) listen(ex);
  // The handlers go when this run ends, however it ends, and what was
  // there before comes back.
  struct Uninstall {
    SignalReceiver& self;
    ~Uninstall() { self.uninstall(); }
  } uninstall{*this};
  asio::signal_set& signals = *signals_;
  auto ticker = co_await guard_.runtime_ticker();
  const auto is_in = [](const std::vector<int>& v, int sig) { return std::find(v.begin(), v.end(), sig) != v.end(); };
  for (;;) {
    auto wait = signals.async_wait(asio::deferred);
    auto op = co_await ticker.tick(wait);
    if (op.is_control()) {
      if (op.control().is_shutdown()) co_return;
      continue;  // the reloads it broadcasts reach it too
    }
    const int sig = op.next();
    if (is_in(options_.stop_signals, sig)) {
      int expected = 0;
      if (stop_signal_.compare_exchange_strong(expected, sig)) {
        log_line(LogLevel::info, "signal-receiver", "received " + signal_name(sig) + ": shutting down gracefully");
        tree_->request_shutdown();
      } else if (sig == SIGINT || sig == SIGTERM) {
        escalation_signal_.store(sig);
        log_line(LogLevel::warn, "signal-receiver",
                 "received " + signal_name(sig) + " again during the shutdown: stopping at once");
        if (options_.escalate) options_.escalate(sig);
      } else {
        log_line(LogLevel::info, "signal-receiver", "received " + signal_name(sig) + ": already shutting down");
      }
    } else if (is_in(options_.reload_signals, sig)) {
      reloads_.fetch_add(1);
      log_line(LogLevel::info, "signal-receiver", "received " + signal_name(sig) + ": reloading");
      tree_->request_reload();
    }
  }
}

// ------------------------------------------------------------------ blocking

namespace detail {

/// A blocking service's inbox and stop source, shared by its runnable, its
/// handle (it is the handle) and its thread's context.
class BlockingState final : public ProcessControlHandler,
                            public RunScoped,
                            public std::enable_shared_from_this<BlockingState> {
 public:
  explicit BlockingState(std::string n) : name(std::move(n)) {}

  void forget_shutdown() override {
    std::lock_guard lock(mu);
    inbox.erase(std::remove_if(inbox.begin(), inbox.end(), [](const auto& m) { return m.is_shutdown(); }), inbox.end());
  }

  void control(RuntimeControlMessage msg) override {
    {
      std::lock_guard lock(mu);
      if (msg.is_shutdown()) stop.request_stop();
      inbox.push_back(std::move(msg));
    }
    cv.notify_all();
  }

  /// A fresh stop source for a new run; a shutdown kept from before the run
  /// stops it at once.
  BlockingContext begin_run() {
    std::lock_guard lock(mu);
    stop = std::stop_source();
    if (std::any_of(inbox.begin(), inbox.end(), [](const auto& m) { return m.is_shutdown(); })) stop.request_stop();
    return BlockingContext(shared_from_this(), stop.get_token());
  }

  void request_stop() {
    {
      std::lock_guard lock(mu);
      stop.request_stop();
    }
    cv.notify_all();
  }

  std::optional<std::chrono::steady_clock::time_point> last_heartbeat() const override { return heartbeat.last(); }

  const std::string name;
  Heartbeat heartbeat;
  std::mutex mu;
  std::condition_variable_any cv;
  std::deque<RuntimeControlMessage> inbox;
  std::stop_source stop;
};

/// One run's completion, shared by the waiting coroutine and the thread.
///
/// The thread that completes the run must not touch the io_context once the
/// coroutine can have resumed: the manager may then complete, and its owner
/// stop and destroy the io_context (`io.stop()`, `run_for` returning), while
/// this thread is still inside post() or releasing an executor. So the
/// posted handler waits until the completing thread has let go of
/// everything of the io_context's (post() returned, its executor copy
/// destroyed) before it resumes the coroutine. That wait is short (the rest
/// of one post()) and never depends on the io_context itself. No counted
/// work is needed: the posted handler is work until it has run.
struct BlockingRun : std::enable_shared_from_this<BlockingRun> {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<std::pair<asio::any_io_executor, asio::any_completion_handler<void(std::exception_ptr)>>> waiter;
  bool released = false;  // under mu: the completing thread no longer touches the io_context

  /// Resumes the coroutine with `e`, once; later calls do nothing.
  void complete(const std::exception_ptr& e) {
    std::unique_lock lock(mu);
    if (!waiter) return;
    {
      auto taken = std::move(*waiter);
      waiter.reset();
      lock.unlock();
      asio::post(taken.first, [self = shared_from_this(), h = std::move(taken.second), e]() mutable {
        {
          std::unique_lock wait(self->mu);
          self->cv.wait(wait, [&self] { return self->released; });
        }
        std::move(h)(e);
      });
    }  // the executor (maybe the last reference to a strand) goes here, before the release
    lock.lock();
    released = true;
    cv.notify_all();  // under the lock: the handler cannot miss it
  }
};
}  // namespace detail

bool BlockingContext::wait_for(duration d) {
  std::unique_lock lock(state_->mu);
  const bool woken = state_->cv.wait_for(lock, token_, d, [this] { return !state_->inbox.empty(); });
  return !woken && !token_.stop_requested();
}

std::optional<RuntimeControlMessage> BlockingContext::next_control(duration timeout) {
  std::unique_lock lock(state_->mu);
  state_->cv.wait_for(lock, token_, timeout, [this] { return !state_->inbox.empty(); });
  if (state_->inbox.empty()) return std::nullopt;
  RuntimeControlMessage msg = std::move(state_->inbox.front());
  state_->inbox.pop_front();
  return msg;
}

const std::string& BlockingContext::name() const noexcept { return state_->name; }

void BlockingContext::heartbeat() noexcept { state_->heartbeat.beat(); }

namespace {

class BlockingRunnable final : public Runnable {
 public:
  BlockingRunnable(std::string name, std::function<void(BlockingContext&)> fn)
      : state_(std::make_shared<detail::BlockingState>(std::move(name))),
        fn_(std::make_shared<std::function<void(BlockingContext&)>>(std::move(fn))) {}

  asio::awaitable<void> process_start() override {
    auto state = state_;
    auto fn = fn_;
    auto run = std::make_shared<detail::BlockingRun>();
    auto start = [state, fn, run](auto handler) {
      auto slot = asio::get_associated_cancellation_slot(handler);
      asio::any_io_executor ex = asio::get_associated_executor(handler);
      {
        std::lock_guard lock(run->mu);
        run->waiter.emplace(std::move(ex), std::move(handler));
      }
      // Cancellation comes after the grace period: the thread had its stop
      // request and did not return. It is abandoned (never joined) and the
      // service fails by name.
      if (slot.is_connected()) {
        slot.assign([state, run](asio::cancellation_type_t type) {
          if ((type & asio::cancellation_type::terminal) == asio::cancellation_type::none) return;
          state->request_stop();
          run->complete(std::make_exception_ptr(
              AbandonedError("blocking service '" + state->name +
                             "' ignored its stop token past the grace period; its thread is abandoned")));
        });
      }
      BlockingContext ctx = state->begin_run();
      // Detached: the run completes through `run`, never through a join, so
      // an abandoned thread cannot hold anything up.
      std::thread([ctx = std::move(ctx), fn, run]() mutable {
        std::exception_ptr error;
        try {
          (*fn)(ctx);
        } catch (...) {
          error = std::current_exception();
        }
        run->complete(error);
      }).detach();
    };
    // A leading exception_ptr is rethrown by use_awaitable: the thread's
    // failure (or the abandonment) becomes this service's.
    co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(std::exception_ptr)>(std::move(start),
                                                                                            asio::use_awaitable);
  }
  std::string process_name() const override { return state_->name; }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return state_; }

 private:
  std::shared_ptr<detail::BlockingState> state_;
  std::shared_ptr<std::function<void(BlockingContext&)>> fn_;
};

}  // namespace

std::shared_ptr<Runnable> make_blocking_runnable(std::string name, std::function<void(BlockingContext&)> fn) {
  if (!fn) throw std::invalid_argument("make_blocking_runnable('" + name + "'): the function is empty");
  return std::make_shared<BlockingRunnable>(std::move(name), std::move(fn));
}

// --------------------------------------------------------- RestartSupervisor

/// Shared by the supervisor and its handle (it is the handle). It relays
/// its child's readiness to whoever supervises it, and withdraws it when
/// the child ends, so that a supervised child reads the same (ready,
/// running, restarting) as one a manager restarts itself.
struct RestartSupervisor::State final : ProcessControlHandler,
                                        detail::ReadinessTarget,
                                        detail::ReadinessSource,
                                        detail::RunScoped,
                                        detail::Supervising,
                                        std::enable_shared_from_this<RestartSupervisor::State> {
  explicit State(std::string n) : name(std::move(n)) {}

  void control(RuntimeControlMessage msg) override {
    std::shared_ptr<ProcessControlHandler> child;
    {
      std::lock_guard lock(mu);
      if (msg.is_shutdown()) {
        stopping = true;
        if (timer != nullptr) timer->cancel();  // a backoff wait ends at once
      }
      child = child_handle;
    }
    if (child) child->control(std::move(msg));
  }

  // The child's heartbeat is ours: a restarted child starts a fresh clock
  // only once it beats again, which is what a watchdog wants to see.
  std::optional<std::chrono::steady_clock::time_point> last_heartbeat() const override {
    auto child = supervised_handle();
    return child ? child->last_heartbeat() : std::nullopt;
  }

  bool watch_readiness(std::function<void(bool)> on_ready) override {
    std::lock_guard lock(mu);
    watcher_fn = std::move(on_ready);
    watcher.reset();
    return true;
  }
  void watch_target(std::weak_ptr<detail::ReadinessTarget> target) override {
    std::lock_guard lock(mu);
    watcher = std::move(target);
    watcher_fn = nullptr;
  }
  void forget_shutdown() override {
    std::shared_ptr<ProcessControlHandler> child;
    {
      std::lock_guard lock(mu);
      stopping = false;
      child = child_handle;
    }
    if (auto* scoped = dynamic_cast<detail::RunScoped*>(child.get())) scoped->forget_shutdown();
  }
  std::shared_ptr<ProcessControlHandler> supervised_handle() const override {
    std::lock_guard lock(mu);
    return child_handle;
  }
  std::size_t supervised_restarts() const noexcept override { return restarts.load(); }
  std::size_t supervised_failures() const noexcept override { return failures.load(); }
  std::shared_ptr<Runnable> supervised_runnable() const override { return supervised.lock(); }

  // From the child's handle, relayed upwards (never under our lock).
  void on_ready(bool declared) override {
    std::shared_ptr<detail::ReadinessTarget> target;
    std::function<void(bool)> fn;
    {
      std::lock_guard lock(mu);
      target = watcher.lock();
      fn = watcher_fn;
    }
    if (target) target->on_ready(declared);
    if (fn) fn(declared);
  }
  void on_running() override {
    std::shared_ptr<detail::ReadinessTarget> target;
    {
      std::lock_guard lock(mu);
      target = watcher.lock();
    }
    if (target) target->on_running();
  }
  void on_unready() override {
    std::shared_ptr<detail::ReadinessTarget> target;
    {
      std::lock_guard lock(mu);
      target = watcher.lock();
    }
    if (target) target->on_unready();
  }
  // Our supervisor's rule is the child's: we relay its readiness as it is.
  bool needs_declared_ready() const override {
    std::shared_ptr<detail::ReadinessTarget> target;
    {
      std::lock_guard lock(mu);
      target = watcher.lock();
    }
    return target && target->needs_declared_ready();
  }

  /// Wires the child's handle for this run: its readiness comes to us.
  /// Returns false when the handle cannot report readiness (then running
  /// is ready, as under a manager).
  bool relay_from(const std::shared_ptr<ProcessControlHandler>& child) {
    std::weak_ptr<detail::ReadinessTarget> self = std::static_pointer_cast<detail::ReadinessTarget>(shared_from_this());
    if (auto* source = dynamic_cast<detail::ReadinessSource*>(child.get())) {
      source->watch_target(self);
      return true;
    }
    return child->watch_readiness([self](bool declared) {
      if (auto s = self.lock()) s->on_ready(declared);
    });
  }

  const std::string name;
  mutable std::mutex mu;
  bool stopping = false;                                // under mu
  asio::steady_timer* timer = nullptr;                  // under mu: the pending backoff wait
  std::shared_ptr<ProcessControlHandler> child_handle;  // under mu
  std::weak_ptr<detail::ReadinessTarget> watcher;       // under mu
  std::function<void(bool)> watcher_fn;                 // under mu
  std::atomic<std::size_t> restarts{0};
  std::atomic<std::size_t> failures{0};  // runs that threw and were restarted
  std::atomic<std::int64_t> last_backoff_ns{0};
  EventHook hook;                        // under mu
  std::weak_ptr<Runnable> supervised{};  // set once, before the handle is shared

  /// Hands `ev` to the hook, outside the lock; drops what it throws.
  void emit(Event ev) const {
    EventHook h;
    {
      std::lock_guard lock(mu);
      h = hook;
    }
    if (!h) return;
    ev.path = name;
    ev.time = std::chrono::floor<std::chrono::microseconds>(std::chrono::system_clock::now());  // as a manager's
    try {
      h(ev);
    } catch (...) {
      // As a manager's hook: an exception stops nothing.
    }
  }
};

RestartSupervisor::RestartSupervisor(std::shared_ptr<Runnable> child, RestartOptions options)
    : child_(std::move(child)), options_(options) {
  if (!child_) throw std::invalid_argument("RestartSupervisor: the child is null");
  const auto name = child_->process_name();
  validate(options_, "RestartSupervisor of '" + name + "'");
  state_ = std::make_shared<State>(name);
  state_->supervised = child_;
}

RestartSupervisor::~RestartSupervisor() = default;

std::string RestartSupervisor::process_name() const { return state_->name; }

std::shared_ptr<ProcessControlHandler> RestartSupervisor::process_handle() { return state_; }

std::size_t RestartSupervisor::restarts() const noexcept { return state_->restarts.load(); }

void RestartSupervisor::on_event(EventHook hook) {
  std::lock_guard lock(state_->mu);
  state_->hook = std::move(hook);
}

std::chrono::nanoseconds RestartSupervisor::last_backoff() const noexcept {
  return std::chrono::nanoseconds(state_->last_backoff_ns.load());
}

asio::awaitable<void> RestartSupervisor::process_start() {
  using clock = std::chrono::steady_clock;
  auto state = state_;
  auto child = child_;
  const RestartOptions opts = options_;
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex);
  // Whatever way the run ends: no wait is reachable, the next run starts
  // afresh, and messages no longer go to this run's child.
  struct EndOfRun {
    State& s;
    ~EndOfRun() {
      std::lock_guard lock(s.mu);
      s.timer = nullptr;
      s.stopping = false;
      s.child_handle.reset();
    }
  } end_of_run{*state};

  RestartIntensity intensity(opts.max_restarts, opts.window);
  std::uint32_t attempt = 0;
  bool first = true;
  for (;;) {
    auto handle = child->process_handle();
    if (!handle) throw std::invalid_argument("RestartSupervisor of '" + state->name + "': null process_handle()");
    // A shutdown sent to the run that ended must not stop this one.
    if (!first) {
      if (auto* scoped = dynamic_cast<detail::RunScoped*>(handle.get())) scoped->forget_shutdown();
    }
    first = false;
    const bool reports = state->relay_from(handle);
    {
      std::lock_guard lock(state->mu);
      state->child_handle = handle;
      if (state->stopping) co_return;
    }
    if (!reports) state->on_ready(false);
    const auto started = clock::now();
    std::exception_ptr error;
    try {
      co_await child->process_start();
    } catch (...) {
      error = std::current_exception();
    }
    state->on_unready();  // ended: not ready while it waits or gives up
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    bool stopping = false;
    {
      std::lock_guard lock(state->mu);
      stopping = state->stopping;
    }
    if (stopping || cs.cancelled() != asio::cancellation_type::none || opts.policy == RestartPolicy::temporary ||
        (opts.policy == RestartPolicy::transient && !error)) {
      if (error) std::rethrow_exception(error);
      co_return;
    }

    const auto now = clock::now();
    if (!intensity.record(now)) {
      const std::string reason = intensity.exceeded();
      log_line(LogLevel::error, state->name, reason + "; gave up");
      if (!error) error = std::make_exception_ptr(std::runtime_error("ended normally (permanent restart policy)"));
      Event ev;
      ev.kind = EventKind::give_up;
      ev.cause = error;
      ev.detail = reason;
      state->emit(std::move(ev));
      throw ProcessError(state->name, error, {}, reason);
    }
    if (now - started >= opts.reset_after) attempt = 0;
    ++attempt;
    const auto backoff = backoff_delay(opts.backoff, attempt);
    const auto restart = static_cast<std::uint32_t>(state->restarts.fetch_add(1) + 1);
    if (error) state->failures.fetch_add(1);
    state->last_backoff_ns.store(backoff.count());
    {
      Event ev;
      ev.kind = EventKind::restart;
      ev.path = state->name;
      ev.cause = error;
      ev.backoff = backoff;
      ev.detail = error ? "failed" : "ended; permanent";  // as a manager words it
      ev.restart = restart;
      if (log_enabled(LogLevel::warn)) {
        detail::log_event(ev, LogLevel::warn,
                          (error ? describe(error) : std::string("ended")) + "; restarting in " + millis(backoff) +
                              " (restart " + std::to_string(restart) + ")");
      }
      state->emit(std::move(ev));
    }

    // The backoff wait: set up under the lock, so that a shutdown either
    // sees the timer and cancels it or is seen here first.
    boost::system::error_code ec;
    auto wait = [&state, &timer, backoff](auto handler) {
      std::lock_guard lock(state->mu);
      timer.expires_after(state->stopping ? std::chrono::nanoseconds(0) : backoff);
      state->timer = &timer;
      timer.async_wait(std::move(handler));
    };
    auto token = asio::redirect_error(asio::use_awaitable, ec);
    co_await asio::async_initiate<decltype(token), void(boost::system::error_code)>(std::move(wait), token);
    {
      std::lock_guard lock(state->mu);
      state->timer = nullptr;
    }
    const asio::cancellation_state after = co_await asio::this_coro::cancellation_state;
    if (after.cancelled() != asio::cancellation_type::none) {
      throw boost::system::system_error(asio::error::operation_aborted);
    }
  }
}

}  // namespace pm
