#include <processmanager/runtime_guard.hpp>

#include <algorithm>
#include <atomic>
#include <stdexcept>

namespace pm {
namespace detail {

// Names asio::cancellation_state's private relay pointer. Access checks do
// not apply to the arguments of an explicit instantiation ([temp.spec]/6),
// which makes this the one portable way to read it.
struct relay_tag {};
auto relay_member(relay_tag) noexcept;
template <auto Member>
struct relay_access {
  friend auto relay_member(relay_tag) noexcept { return Member; }
};
template struct relay_access<&asio::cancellation_state::impl_>;

asio::cancellation_signal* relay_signal_of(const asio::cancellation_state& state) noexcept {
  auto* impl = state.*relay_member(relay_tag{});
  return impl != nullptr ? &impl->signal_ : nullptr;
}

bool is_operation_aborted(const std::exception_ptr& e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const boost::system::system_error& err) {
    return err.code() == asio::error::operation_aborted;
  } catch (...) {
    return false;
  }
}

void CompactMutex::lock_contended() noexcept {
  // A short spin first: the sections it guards are a few dozen
  // instructions, so a holder usually lets go sooner than a sleep pays off.
  for (int spin = 0; spin < 64; ++spin) {
    std::uint32_t seen = state_.load(std::memory_order_relaxed);
    if (seen == 0 && state_.compare_exchange_weak(seen, 1, std::memory_order_acquire, std::memory_order_relaxed))
      return;
    if (seen == 2) break;  // others sleep already: queue behind them
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  // Marked "sleepers possible" before sleeping. Whoever takes it by this
  // exchange keeps the mark, so its unlock() wakes the next sleeper (at
  // worst one wake-up too many, never one too few).
  while (state_.exchange(2, std::memory_order_acquire) != 0) state_.wait(2, std::memory_order_relaxed);
}

void throw_ticker_moved_from() { throw std::logic_error("RuntimeTicker used after it was moved from"); }

bool GuardState::enqueue(RuntimeControlMessage msg) {
  if (!has_first_ && head_ == inbox_.size()) {
    first_ = std::move(msg);
    has_first_ = true;
  } else {
    inbox_.push_back(std::move(msg));
  }
  pending_.fetch_add(1, std::memory_order_release);
  // One wake-up in flight is enough: it looks at the inbox when it runs.
  if (!ex_ || wake_posted_) return false;
  wake_posted_ = true;
  return true;
}

void GuardState::control(RuntimeControlMessage msg) {
  std::lock_guard lock(mu_);
  // Posting under the lock means the executor cannot be released (by the
  // ticker's end, and so by its io_context's teardown) in between.
  if (enqueue(std::move(msg))) {
    asio::post(ex_, [self = shared_from_this(), gen = generation_] { self->wake(gen); });
  }
}

void GuardState::control_into(RuntimeControlMessage msg, WakeBatch& batch) {
  std::lock_guard lock(mu_);
  if (!enqueue(std::move(msg))) return;
  const auto post_one = [this] {
    asio::post(ex_, [self = shared_from_this(), gen = generation_] { self->wake(gen); });
  };
  const auto* io = ex_.target<asio::io_context::executor_type>();
  if (io == nullptr) {
    post_one();
    return;
  }
  // The batch holds a plain copy of the executor: the caller (a manager's
  // fan-out) holds counted work on that io_context until it has posted.
  try {
    auto& groups = batch.groups_;
    auto it = std::find_if(groups.begin(), groups.end(), [io](const WakeBatch::Group& g) { return g.ex == *io; });
    if (it == groups.end()) it = groups.insert(groups.end(), WakeBatch::Group{*io, {}});
    it->wakes.emplace_back(shared_from_this(), generation_);
  } catch (...) {
    // Out of memory: a wake-up of its own, or none marked as on its way.
    try {
      post_one();
    } catch (...) {
      wake_posted_ = false;
      throw;
    }
  }
}

void WakeBatch::post() noexcept {
  for (auto& g : groups_) {
    // Shared, so that the list is still ours when Asio cannot allocate the
    // handler (it moves the handler before it allocates).
    std::shared_ptr<const std::vector<std::pair<std::shared_ptr<GuardState>, std::uint64_t>>> list;
    try {
      list = std::make_shared<const std::vector<std::pair<std::shared_ptr<GuardState>, std::uint64_t>>>(
          std::move(g.wakes));
      asio::post(g.ex, [list] {
        for (const auto& [guard, gen] : *list) guard->wake(gen);
      });
    } catch (...) {
      // Out of memory: the messages are queued, but no wake-up is on its
      // way. Clear the mark so that the next message posts one.
      for (const auto& [guard, gen] : list ? *list : g.wakes) guard->unmark_wake(gen);
    }
  }
  groups_.clear();
}

void GuardState::unmark_wake(std::uint64_t generation) noexcept {
  std::lock_guard lock(mu_);
  if (generation == generation_) wake_posted_ = false;
}

void GuardState::wake(std::uint64_t generation) noexcept {
  {
    std::lock_guard lock(mu_);
    // A wake-up meant for an earlier ticker runs on that ticker's strand,
    // not the current one's: it must not touch the strand-local half.
    if (generation != generation_) return;
    wake_posted_ = false;
  }
  // Runs on the ticker's strand, so waiting_ cannot change under us; a tick
  // that began before the message was queued is waiting now, and one that
  // begins later sees the inbox first. The inbox may be empty by now: an
  // earlier tick took the message this wake-up was posted for, and
  // cancelling the current work for nothing would turn into a work error.
  if (waiting_ != nullptr && !emitted_ && has_pending()) {
    emitted_ = true;
    waiting_->emit(control_cancellation);
  }
}

RuntimeControlMessage GuardState::take() {
  std::lock_guard lock(mu_);
  if (has_first_) {
    has_first_ = false;
    pending_.fetch_sub(1, std::memory_order_release);
    return std::move(first_);
  }
  RuntimeControlMessage msg = std::move(inbox_[head_]);
  if (++head_ == inbox_.size()) {
    inbox_.clear();  // keeps the capacity for the next burst
    head_ = 0;
  } else if (head_ >= 64 && std::size_t{head_} * 2 >= inbox_.size()) {
    // An inbox that never quite drains: drop the taken half, amortised O(1).
    inbox_.erase(inbox_.begin(), inbox_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
  }
  pending_.fetch_sub(1, std::memory_order_release);
  return msg;
}

void GuardState::attach(const asio::any_io_executor& ex) {
  std::shared_ptr<ReadinessTarget> watcher;
  bool deferred = false;
  {
    std::lock_guard lock(mu_);
    if (alive_.load(std::memory_order_relaxed)) {
      throw std::logic_error("RuntimeGuard" + (name_.empty() ? std::string() : " of service '" + name_ + "'") +
                             ": runtime_ticker() called while another ticker of this guard is alive");
    }
    ex_ = ex;
    ++generation_;
    wake_posted_ = false;
    alive_.store(true, std::memory_order_release);
    watcher = watcher_.lock();
    deferred = defer_ready_;
  }
  // Outside the lock: the watcher takes its supervisor's lock. A service
  // that holds its readiness back still runs from here on.
  if (!watcher) return;
  if (deferred) {
    watcher->on_running();
  } else {
    watcher->on_ready(false);
  }
}

void GuardState::forget_shutdown() {
  std::lock_guard lock(mu_);
  std::size_t dropped = 0;
  if (has_first_ && first_.is_shutdown()) {
    has_first_ = false;
    ++dropped;
  }
  const auto before = inbox_.size();
  inbox_.erase(std::remove_if(inbox_.begin() + static_cast<std::ptrdiff_t>(head_), inbox_.end(),
                              [](const RuntimeControlMessage& m) { return m.is_shutdown(); }),
               inbox_.end());
  dropped += before - inbox_.size();
  // The oldest message lives inline: refill it from the rest, so that the
  // FIFO order holds.
  if (!has_first_ && head_ < inbox_.size()) {
    first_ = std::move(inbox_[head_]);
    has_first_ = true;
    ++head_;
  }
  if (head_ == inbox_.size()) {
    inbox_.clear();
    head_ = 0;
  }
  pending_.fetch_sub(static_cast<std::uint32_t>(dropped), std::memory_order_release);
}

namespace {
/// A watch_readiness() function, as a watcher.
class FunctionWatcher final : public ReadinessTarget {
 public:
  explicit FunctionWatcher(std::function<void(bool)> f) : f_(std::move(f)) {}
  void on_ready(bool declared) override { f_(declared); }
  // A function cannot say whether it counts only a declared ready(): it
  // may (a manager's explicit_ready behind a wrapping handle), so a
  // ready() call is let through rather than refused.
  bool needs_declared_ready() const override { return true; }

 private:
  std::function<void(bool)> f_;
};
}  // namespace

bool GuardState::watch_readiness(std::function<void(bool)> on_ready) {
  auto owned = on_ready ? std::make_shared<FunctionWatcher>(std::move(on_ready)) : nullptr;
  std::lock_guard lock(mu_);
  owned_watcher_ = owned;
  watcher_ = owned;
  return true;
}

void GuardState::watch_target(std::weak_ptr<ReadinessTarget> target) {
  std::lock_guard lock(mu_);
  owned_watcher_.reset();
  watcher_ = std::move(target);
}

void GuardState::notify_ready(bool declared) {
  std::shared_ptr<ReadinessTarget> target;
  {
    std::lock_guard lock(mu_);
    target = watcher_.lock();
  }
  // Outside the lock: the watcher takes its supervisor's lock.
  if (target) target->on_ready(declared);
}

void GuardState::declare_ready() { notify_ready(true); }

bool GuardState::ready_is_moot() const {
  std::shared_ptr<ReadinessTarget> target;
  {
    std::lock_guard lock(mu_);
    if (defer_ready_ || !alive_.load(std::memory_order_acquire)) return false;
    target = watcher_.lock();
  }
  // Outside the lock: a supervisor's answer may take its own lock.
  return target && !target->needs_declared_ready();
}

bool GuardState::watcher_needs_declared_ready() const {
  std::shared_ptr<ReadinessTarget> target;
  {
    std::lock_guard lock(mu_);
    target = watcher_.lock();
  }
  // Outside the lock: a supervisor's answer may take its own lock.
  return target && target->needs_declared_ready();
}

void GuardState::defer_readiness() {
  std::lock_guard lock(mu_);
  defer_ready_ = true;
}

void GuardState::detach() noexcept {
  // A ticker that dies inside a wait (its io_context destroyed under it)
  // never ends it: the handler bound to the guard's own signal goes here,
  // while its operation's service still exists, not with the guard. Strand-
  // local, like the wait, and outside the lock: it may hold an executor.
  own_.slot().clear();
  std::lock_guard lock(mu_);
  ex_ = asio::any_io_executor();
  ++generation_;
  alive_.store(false, std::memory_order_release);
  waiting_ = nullptr;
}

}  // namespace detail

RuntimeGuard::RuntimeGuard() : RuntimeGuard(std::string()) {}

RuntimeGuard::RuntimeGuard(std::string name) : state_(std::make_shared<detail::GuardState>(std::move(name))) {}

void RuntimeGuard::ready() {
  if (state_->ready_is_moot()) {
    throw std::logic_error("RuntimeGuard '" + state_->name() +
                           "': ready() has no effect: the service counted as ready when it took its ticker; call "
                           "defer_readiness() before runtime_ticker(), or insert it with "
                           "ChildOptions{.explicit_ready = true}");
  }
  state_->declare_ready();
}

asio::awaitable<RuntimeTicker> RuntimeGuard::runtime_ticker() {
  auto state = state_;
  auto ex = co_await asio::this_coro::executor;
  state->attach(ex);
  co_return RuntimeTicker(std::move(state));
}

asio::awaitable<RuntimeControlMessage> RuntimeTicker::next_control() {
  detail::GuardState& s = state();
  if (s.has_pending()) co_return s.take();
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer never(ex, asio::steady_timer::time_point::max());
  for (;;) {
    auto wait = never.async_wait(asio::deferred);
    auto op = co_await tick(wait);
    if (op.is_control()) co_return op.control();
  }
}

}  // namespace pm
