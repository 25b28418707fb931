#include <processmanager/task_scope.hpp>

#include <processmanager/process_manager.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <utility>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include "core/deadline.hpp"
#include "core/serial.hpp"
#include "core/waiter.hpp"
#include "log.hpp"

namespace pm {

namespace detail {

namespace {

/// One running sub-task. Owned by its completion handler only, so that it
/// (and the cancellation signal bound to the sub-task) goes with the
/// coroutine's frame, also when the io_context is destroyed unrun; the
/// scope lists it by address while it lives.
struct Task : std::enable_shared_from_this<Task> {
  std::shared_ptr<TaskScopeState> scope;
  asio::any_io_executor ex;
  asio::cancellation_signal signal;
  std::string name;          // empty: "#<number>", made only when reported
  std::uint64_t number = 0;  // its spawn number
  Task* prev = nullptr;
  Task* next = nullptr;
  bool linked = false;
  // On the task's executor only. Asio's co_spawn awaits on its own before
  // and after the task's body, outside the body's try, and once its
  // coroutine is cancelled every such await throws, out of spawn() or out
  // of io_context::run(). So cancellation is emitted only while the body
  // runs: one that comes earlier waits (`pending`) for the body to begin,
  // one that comes later is dropped, and the body's end clears the
  // coroutine's cancellation state.
  bool started = false;
  bool pending = false;
  bool done = false;
  bool told = false;  // cancellation was emitted
  ~Task();

  std::string label() const { return name.empty() ? std::string("#").append(std::to_string(number)) : name; }
};

using Cancel = std::pair<asio::any_io_executor, std::weak_ptr<Task>>;

/// Emits terminal cancellation on each sub-task's own executor: a signal
/// may only be emitted where its operation runs.
void deliver(std::vector<Cancel>& cancels) noexcept {
  for (auto& [ex, weak] : cancels) {
    try {
      asio::post(ex, [weak = std::move(weak)] {
        auto t = weak.lock();
        if (!t || t->done) return;
        if (!t->started) {
          t->pending = true;
          return;
        }
        t->told = true;
        t->signal.emit(asio::cancellation_type::terminal);
      });
    } catch (...) {
      // Only a failed allocation: that sub-task is then waited for (or
      // abandoned by drain) without having been told.
    }
  }
}

/// The coroutine co_spawn runs: the task's body, between the two points at
/// which cancellation may be emitted (see Task). `t` outlives it: its
/// completion handler owns it.
asio::awaitable<void> body(Task* t, asio::awaitable<void> task) {
  t->started = true;
  if (t->pending) {
    t->told = true;
    t->signal.emit(asio::cancellation_type::terminal);
  }
  std::exception_ptr e;
  try {
    co_await std::move(task);
  } catch (...) {
    e = std::current_exception();
  }
  t->done = true;
  co_await asio::this_coro::reset_cancellation_state();
  if (e) std::rethrow_exception(e);
}

}  // namespace

struct TaskScopeState {
  TaskScopeState(asio::any_io_executor e, TaskScopeOptions o)
      : ex(std::move(e)), ex_is_serial(serial_executor(ex) == ex), options(std::move(o)) {}

  const asio::any_io_executor ex;
  // Decided once: asking an io_context how many threads it was promised
  // takes its service registry's lock.
  const bool ex_is_serial;
  const TaskScopeOptions options;

  mutable std::mutex mu;
  Task* head = nullptr;  // in spawn order
  Task* tail = nullptr;
  std::size_t running = 0;
  std::uint64_t spawned = 0;
  std::uint64_t failed = 0;
  bool closed = false;
  std::vector<TaskFailure> failures;  // not yet reported by a drain
  std::size_t failures_dropped = 0;
  std::exception_ptr first_failure;  // under fail_owner
  std::vector<std::shared_ptr<Waiter>> idle_waiters;
  std::size_t ended_since_report = 0;  // for DrainReport::finished

  void link(Task& t) {
    t.prev = tail;
    if (tail != nullptr) tail->next = &t;
    tail = &t;
    if (head == nullptr) head = &t;
    t.linked = true;
    ++running;
  }

  /// Under mu. Returns the waiters to wake when the last one went.
  std::vector<std::shared_ptr<Waiter>> unlink(Task& t) {
    if (!t.linked) return {};
    (t.prev != nullptr ? t.prev->next : head) = t.next;
    (t.next != nullptr ? t.next->prev : tail) = t.prev;
    t.linked = false;
    --running;
    ++ended_since_report;
    if (running != 0) return {};
    return std::exchange(idle_waiters, {});
  }

  /// Under mu: every running sub-task, to be told after unlocking.
  std::vector<Cancel> cancels() const {
    std::vector<Cancel> out;
    out.reserve(running);
    for (Task* t = head; t != nullptr; t = t->next) {
      out.emplace_back(t->ex, t->weak_from_this());
    }
    return out;
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(running);
    for (Task* t = head; t != nullptr; t = t->next) out.push_back(t->label());
    return out;
  }

  void failed_with(Task& t, const std::exception_ptr& e) noexcept;
};

namespace {

Task::~Task() {
  if (!scope) return;
  std::vector<std::shared_ptr<Waiter>> wake;
  {
    std::lock_guard lock(scope->mu);
    wake = scope->unlink(*this);
  }
  for (auto& w : wake) w->complete(true);
}

}  // namespace

void TaskScopeState::failed_with(Task& t, const std::exception_ptr& e) noexcept {
  // The scope's own cancellation ending a wait that throws (use_awaitable,
  // or any co_await once the coroutine is cancelled) is how a sub-task is
  // meant to end, not a failure. (Completions run on the task's executor,
  // where `told` is written.)
  if (t.told && is_operation_aborted(e)) return;
  std::vector<Cancel> to_cancel;
  bool trip = false;
  {
    std::lock_guard lock(mu);
    ++failed;
    try {
      if (failures.size() < options.keep_errors) {
        failures.push_back(TaskFailure{t.label(), e});
      } else {
        ++failures_dropped;
      }
    } catch (...) {
      ++failures_dropped;
    }
    if (options.on_error == TaskErrors::fail_owner && !first_failure) {
      first_failure = e;
      closed = true;
      trip = true;
      to_cancel = cancels();
    }
  }
  try {
    log_line(LogLevel::warn, options.name,
             std::string("task '").append(t.label()).append("' failed: ").append(describe(e)));
  } catch (...) {
    // A line that cannot be built is not a reason to lose the failure.
  }
  if (!trip) return;
  deliver(to_cancel);
  if (!options.owner) return;
  try {
    options.owner->request_shutdown();
  } catch (...) {
    // A handle of the user's own that throws: the scope is closed and its
    // sub-tasks cancelled all the same, and drain() still throws the failure.
    log_line(LogLevel::error, options.name, "could not ask the owner to shut down");
  }
}

}  // namespace detail

using detail::Task;
using detail::TaskScopeState;

namespace {

asio::any_io_executor checked(asio::any_io_executor ex, const std::string& scope) {
  if (!ex) throw std::invalid_argument(std::string("task scope '").append(scope).append("': no executor"));
  return ex;
}

}  // namespace

TaskScope::TaskScope(asio::any_io_executor ex, TaskScopeOptions options)
    : state_(std::make_shared<TaskScopeState>(checked(std::move(ex), options.name), std::move(options))) {}

TaskScope::~TaskScope() { cancel(); }

void TaskScope::spawn(asio::awaitable<void> task, std::string name) {
  launch(state_->ex_is_serial ? state_->ex : detail::serial_executor(state_->ex), std::move(task), std::move(name));
}

void TaskScope::spawn(const asio::any_io_executor& ex, asio::awaitable<void> task, std::string name) {
  launch(detail::serial_executor(checked(ex, state_->options.name)), std::move(task), std::move(name));
}

void TaskScope::launch(asio::any_io_executor ex, asio::awaitable<void> task, std::string name) {
  auto t = std::make_shared<Task>();
  t->ex = std::move(ex);
  t->name = std::move(name);
  {
    std::lock_guard lock(state_->mu);
    t->number = state_->spawned + 1;
    if (state_->closed) {
      throw ScopeClosed(std::string("task scope '")
                            .append(state_->options.name)
                            .append("' is closed: cannot spawn '")
                            .append(t->label())
                            .append("'"));
    }
    ++state_->spawned;
    state_->link(*t);
  }
  t->scope = state_;  // from here its destructor unlists it
  Task& ref = *t;
  asio::co_spawn(ref.ex, detail::body(&ref, std::move(task)),
                 asio::bind_cancellation_slot(ref.signal.slot(), [t = std::move(t)](const std::exception_ptr& e) {
                   if (e) t->scope->failed_with(*t, e);
                 }));
}

void TaskScope::close() noexcept {
  std::lock_guard lock(state_->mu);
  state_->closed = true;
}

void TaskScope::cancel() noexcept {
  std::vector<detail::Cancel> to_cancel;
  {
    std::lock_guard lock(state_->mu);
    state_->closed = true;
    try {
      to_cancel = state_->cancels();
    } catch (...) {
      return;  // out of memory: drain's abandon period still bounds the wait
    }
  }
  detail::deliver(to_cancel);
}

namespace {

/// Waits until the scope has no sub-task running (true) or `until` passes
/// (false). A terminal cancellation ends it with operation_aborted.
asio::awaitable<bool> wait_idle(std::shared_ptr<TaskScopeState> s, std::chrono::steady_clock::time_point until) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  boost::system::error_code ec;
  auto token = asio::redirect_error(asio::use_awaitable, ec);
  const bool idle = co_await asio::async_initiate<decltype(token), void(boost::system::error_code, bool)>(
      [&](auto handler) {
        auto w = detail::Waiter::make(std::move(handler), true);
        bool idle_now = false;
        {
          std::lock_guard lock(s->mu);
          idle_now = s->running == 0;
          if (!idle_now) {
            // Waits of earlier phases that ended by their deadline.
            std::erase_if(s->idle_waiters, [](const auto& old) { return old->ended(); });
            s->idle_waiters.push_back(w);
          }
        }
        if (idle_now) {
          w->complete(true);
          return;
        }
        if (until == std::chrono::steady_clock::time_point::max()) return;
        timer.expires_at(until);
        timer.async_wait([weak = std::weak_ptr<detail::Waiter>(w)](boost::system::error_code tec) {
          if (tec) return;
          if (auto waiter = weak.lock()) waiter->complete(false);
        });
      },
      token);
  timer.cancel();
  if (ec) throw boost::system::system_error(ec, "task scope drain");
  co_return idle;
}

/// drain()'s wait, on the scope's state only: the scope may be destroyed
/// while it waits.
asio::awaitable<DrainReport> drain_state(std::shared_ptr<TaskScopeState> s, std::chrono::nanoseconds grace,
                                         std::chrono::nanoseconds abandon) {
  DrainReport report;
  bool cancelled = false;
  try {
    const bool idle = co_await wait_idle(
        s, detail::sat_add(std::chrono::steady_clock::now(), std::max(grace, std::chrono::nanoseconds::zero())));
    if (!idle) {
      std::vector<detail::Cancel> to_cancel;
      {
        std::lock_guard lock(s->mu);
        report.cancelled = s->names();
        to_cancel = s->cancels();
      }
      cancelled = true;
      detail::deliver(to_cancel);
      co_await wait_idle(
          s, detail::sat_add(std::chrono::steady_clock::now(), std::max(abandon, std::chrono::nanoseconds::zero())));
    }
  } catch (...) {
    // The drain itself was cancelled (its service is being stopped hard):
    // nothing waits for the sub-tasks any more, so they are told to end.
    std::vector<detail::Cancel> to_cancel;
    {
      std::lock_guard lock(s->mu);
      to_cancel = s->cancels();
    }
    detail::deliver(to_cancel);
    throw;
  }
  std::exception_ptr failure;
  {
    // One look at the books, so that the counts agree with each other
    // whatever ends meanwhile.
    std::lock_guard lock(s->mu);
    if (cancelled) report.abandoned = s->names();
    const std::size_t ended_cancelled = report.cancelled.size() - report.abandoned.size();
    report.finished = s->ended_since_report > ended_cancelled ? s->ended_since_report - ended_cancelled : 0;
    s->ended_since_report = 0;
    failure = s->first_failure;
    // A drain that throws reports nothing: the failures stay for errors().
    if (!failure) {
      report.failures = std::exchange(s->failures, {});
      report.failures_dropped = std::exchange(s->failures_dropped, 0);
    }
  }
  if (failure) std::rethrow_exception(failure);
  co_return report;
}

}  // namespace

asio::awaitable<DrainReport> TaskScope::drain(std::chrono::nanoseconds grace, std::chrono::nanoseconds abandon) {
  close();  // at the call, not when the awaitable is first resumed
  return drain_state(state_, grace, abandon);
}

std::size_t TaskScope::running() const noexcept {
  std::lock_guard lock(state_->mu);
  return state_->running;
}

std::uint64_t TaskScope::spawned() const noexcept {
  std::lock_guard lock(state_->mu);
  return state_->spawned;
}

std::uint64_t TaskScope::failed() const noexcept {
  std::lock_guard lock(state_->mu);
  return state_->failed;
}

bool TaskScope::closed() const noexcept {
  std::lock_guard lock(state_->mu);
  return state_->closed;
}

std::vector<TaskFailure> TaskScope::errors() const {
  std::lock_guard lock(state_->mu);
  return state_->failures;
}

const std::string& TaskScope::name() const noexcept { return state_->options.name; }

}  // namespace pm
