// A completion that a manager finishes from any thread, for a coroutine that
// may run on an io_context of its own, which may be destroyed first.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>

namespace pm::detail {

namespace asio = boost::asio;

/// Someone waiting for an answer (ready or not; stopped). The handler is
/// completed at most once, on its own executor. When the io_context of that
/// executor is destroyed first, its shutdown drops the handler (and so the
/// suspended coroutine frame) while the context's services still exist,
/// and complete() then does nothing: a waiter whose executor is gone is
/// never touched.
class Waiter : public std::enable_shared_from_this<Waiter> {
 public:
  using Handler = asio::any_completion_handler<void(boost::system::error_code, bool)>;

  /// Lists `handler` with the service of its executor's context. Takes the
  /// handler before type erasure: its executor names the context. With
  /// `cancellable`, a terminal cancellation on the handler's slot ends the
  /// wait with operation_aborted (what the waited-for thing does is not
  /// affected: it goes on).
  template <class H>
  static std::shared_ptr<Waiter> make(H&& handler, bool cancellable = false);

  /// Completes the wait with `value` by posting to the waiter's executor.
  /// Returns false when it was completed already or its context is gone.
  bool complete(bool value) { return finish({}, value); }
  /// Ends the wait with operation_aborted; false when it had ended.
  bool cancel() { return finish(asio::error::operation_aborted, false); }

  /// Called by the context's shutdown: drops the handler unrun.
  void drop() noexcept;

  /// True once the wait has ended (completed, cancelled or dropped).
  bool ended() {
    std::lock_guard lock(mu_);
    return !handler_;
  }

 private:
  bool finish(boost::system::error_code ec, bool value);

  std::mutex mu_;
  // In an optional, moved only by construction: Asio 1.81's move assignment
  // of any_completion_handler recurses without end (it copies from an
  // lvalue through its converting constructor).
  std::optional<Handler> handler_;
  asio::any_io_executor ex_;
};

/// One per execution context that has waiters: drops them at its shutdown.
/// Services are shut down newest first, so the scheduler (created with the
/// context) is still there to take a completion posted concurrently; the
/// waiter's mutex orders that post before the drop.
class WaiterService final : public asio::execution_context::service {
 public:
  static inline asio::execution_context::id id;  // NOLINT(readability-identifier-naming): Asio's convention
  explicit WaiterService(asio::execution_context& ctx) : asio::execution_context::service(ctx) {}
  void add(const std::shared_ptr<Waiter>& w);

 private:
  void shutdown() override;
  std::mutex mu_;
  std::vector<std::weak_ptr<Waiter>> waiters_;
  std::size_t prune_at_ = 16;
};

template <class H>
std::shared_ptr<Waiter> Waiter::make(H&& handler, bool cancellable) {
  auto w = std::make_shared<Waiter>();
  w->ex_ = asio::any_io_executor(asio::get_associated_executor(handler));
  w->handler_.emplace(std::forward<H>(handler));
  // On the type-erased handler's slot: erasing it installs a forwarder of
  // its own in the original slot. Assigned here, on the waiting coroutine's
  // executor, where its signal is emitted; cleared there too, just before
  // the completion runs.
  if (auto slot = asio::get_associated_cancellation_slot(*w->handler_); cancellable && slot.is_connected()) {
    slot.assign([weak = std::weak_ptr<Waiter>(w)](asio::cancellation_type type) {
      if ((type & asio::cancellation_type::terminal) == asio::cancellation_type::none) return;
      if (auto waiter = weak.lock()) waiter->cancel();
    });
  }
  auto& ctx = asio::query(w->ex_, asio::execution::context);
  asio::use_service<WaiterService>(ctx).add(w);
  return w;
}

inline bool Waiter::finish(boost::system::error_code ec, bool value) {
  // The posted completion may resume the waiting coroutine on another
  // thread at once, and that coroutine may hold the last other reference
  // to this waiter: it stays alive until we have let go of its mutex.
  const auto keep = shared_from_this();
  std::lock_guard lock(mu_);
  if (!handler_) return false;
  Handler h(std::move(*handler_));
  handler_.reset();
  asio::post(ex_, [h = std::move(h), ec, value]() mutable {
    asio::get_associated_cancellation_slot(h).clear();
    std::move(h)(ec, value);
  });
  return true;
}

inline void Waiter::drop() noexcept {
  std::optional<Handler> dead;
  {
    std::lock_guard lock(mu_);
    if (handler_) dead.emplace(std::move(*handler_));
    handler_.reset();
    ex_ = asio::any_io_executor();
  }
  // Destroyed unlocked: the frame it owns may complete other waiters.
}

inline void WaiterService::add(const std::shared_ptr<Waiter>& w) {
  std::lock_guard lock(mu_);
  if (waiters_.size() >= prune_at_) {
    std::erase_if(waiters_, [](const std::weak_ptr<Waiter>& x) { return x.expired(); });
    prune_at_ = std::max<std::size_t>(16, waiters_.size() * 2);
  }
  waiters_.push_back(w);
}

inline void WaiterService::shutdown() {
  std::vector<std::weak_ptr<Waiter>> all;
  {
    std::lock_guard lock(mu_);
    all.swap(waiters_);
  }
  for (auto& weak : all) {
    if (auto w = weak.lock()) w->drop();
  }
}

}  // namespace pm::detail
