// RuntimeGuard and RuntimeTicker: the loop every coroutine service runs.
#pragma once

#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <boost/system/system_error.hpp>
#include <processmanager/detail/guard_state.hpp>
#include <processmanager/operation.hpp>

namespace pm {

namespace detail {

template <class T>
struct is_awaitable : std::false_type {};
template <class T, class E>
struct is_awaitable<asio::awaitable<T, E>> : std::true_type {};

template <class T>
struct awaitable_value;
template <class T, class E>
struct awaitable_value<asio::awaitable<T, E>> {
  using type = T;
};

// What `co_await op(use_awaitable)` yields for completion arguments Args...:
// a leading error_code or exception_ptr becomes a throw, the rest becomes
// void, the single value, or a tuple.
template <class... Args>
struct values_of {
  using type = std::tuple<Args...>;
};
template <>
struct values_of<> {
  using type = void;
};
template <class A>
struct values_of<A> {
  using type = A;
};

template <class Tuple>
struct completion_traits;
template <class... Args>
struct completion_traits<std::tuple<Args...>> {
  static constexpr bool has_error = false;
  using value_type = typename values_of<Args...>::type;
};
template <class... Args>
struct completion_traits<std::tuple<boost::system::error_code, Args...>> {
  static constexpr bool has_error = true;
  using value_type = typename values_of<Args...>::type;
};
template <class... Args>
struct completion_traits<std::tuple<std::exception_ptr, Args...>> {
  static constexpr bool has_error = true;
  using value_type = typename values_of<Args...>::type;
};

template <class Op, bool = is_awaitable<Op>::value>
struct tick_traits {
  using tuple_type = typename awaitable_value<decltype(std::declval<Op>()(asio::as_tuple(asio::use_awaitable)))>::type;
  using result_type = typename completion_traits<tuple_type>::value_type;
};
template <class Op>
struct tick_traits<Op, true> {
  using result_type = typename awaitable_value<Op>::type;
};

// Turns the completion tuple, less its error, into ProcessOperation<R>.
template <class R, class Tuple, std::size_t... I>
ProcessOperation<R> next_from_tuple(Tuple& t, std::index_sequence<I...>) {
  if constexpr (std::is_void_v<R>) {
    return ProcessOperation<R>::from_next();
  } else if constexpr (sizeof...(I) == 1) {
    return ProcessOperation<R>::from_next(std::move(std::get<I>(t))...);
  } else {
    return ProcessOperation<R>::from_next(R(std::move(std::get<I>(t))...));
  }
}

template <std::size_t Offset, std::size_t... I>
constexpr std::index_sequence<(I + Offset)...> shift(std::index_sequence<I...>) {
  return {};
}

// Starts tick()'s work with its cancellation slot bound to `slot`: the
// slot of the caller's cancellation state where it has one (the slot Asio
// would have given the work anyway), else the guard's own. Binding it
// explicitly gives tick() one co_await for both cases; each co_await site
// adds its awaiter to the frame, which lives as long as every idle
// service's wait (docs/performance.md counts its bytes). `Tupled`: the
// handler takes the completion values as one tuple, as as_tuple makes them.
template <class Op, bool Tupled>
struct start_in_slot {
  Op* op;
  asio::cancellation_slot slot;
  template <class Handler>
  void operator()(Handler&& handler) const {
    if constexpr (Tupled) {
      std::move (*op)(asio::as_tuple(asio::bind_cancellation_slot(slot, std::forward<Handler>(handler))));
    } else {
      std::move (*op)(asio::bind_cancellation_slot(slot, std::forward<Handler>(handler)));
    }
  }
};

[[noreturn]] void throw_ticker_moved_from();

}  // namespace detail

/// The result type of `ticker.tick(op)`: what `co_await op` produces.
template <class Op>
using tick_result_t = typename detail::tick_traits<std::decay_t<Op>>::result_type;

/// The one ticker of a RuntimeGuard. Move-only; destroying it ends
/// "running" (a new ticker may then be obtained from the guard).
///
/// Executor: use it from the coroutine that obtained it, which must run on a
/// strand or a single-threaded executor (ProcessManager and pm::run ensure
/// this for every service they start).
class RuntimeTicker {
 public:
  /// Takes over `other`'s guard; `other` is left empty (ticking it throws).
  RuntimeTicker(RuntimeTicker&& other) noexcept : state_(std::move(other.state_)) {}
  /// Releases this ticker's guard, then takes over `other`'s.
  RuntimeTicker& operator=(RuntimeTicker&& other) noexcept {
    if (this != &other) {
      release();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  RuntimeTicker(const RuntimeTicker&) = delete;
  RuntimeTicker& operator=(const RuntimeTicker&) = delete;
  ~RuntimeTicker() { release(); }

  /// Races one unit of work against the next control message.
  ///
  /// `op` is an Asio deferred operation (`timer.async_wait(asio::deferred)`,
  /// `asio::post(ex, asio::deferred)`, `sock.async_read_some(buf,
  /// asio::deferred)`, ...) or an `asio::awaitable<T>`.
  ///
  /// Completion: a message already waiting is returned at once and `op` is
  /// not started. Otherwise, if the work finishes first, `next()` holds what
  /// `co_await op` would have produced, and a work error throws as it would
  /// have (a message that arrived meanwhile waits for the next tick). If a
  /// message comes first, the work is cancelled (every cancellation type is
  /// emitted; an operation that supports none runs to its end first) and the
  /// operation holds the message. Messages come in the order sent.
  ///
  /// Cancellation: terminal cancellation of the calling coroutine reaches
  /// `op` and throws as with `asio::use_awaitable`.
  template <class Op>
  asio::awaitable<ProcessOperation<tick_result_t<Op>>> tick(Op op) {
    using R = tick_result_t<Op>;
    using Result = ProcessOperation<R>;
    detail::GuardState& s = state();
    if (s.has_pending()) co_return Result::from_control(s.take(), s.name());

    asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    asio::cancellation_signal* sig = detail::relay_signal_of(cs);
    const bool own = sig == nullptr;
    if (own) sig = &s.own_signal();

    if constexpr (detail::is_awaitable<Op>::value) {
      std::exception_ptr error;
      std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> value;
      s.begin_wait(sig);
      if (!own) {
        try {
          if constexpr (std::is_void_v<R>) {
            co_await std::move(op);
            value.emplace(true);
          } else {
            value.emplace(co_await std::move(op));
          }
        } catch (...) {
          error = std::current_exception();
        }
      } else {
        // No parent slot to relay through: run the work as its own
        // coroutine whose parent slot is ours. Slower, and only taken when
        // the caller was spawned without a cancellation slot.
        auto ex = co_await asio::this_coro::executor;
        auto token = asio::as_tuple(asio::bind_cancellation_slot(sig->slot(), asio::use_awaitable));
        auto done = co_await asio::co_spawn(ex, std::move(op), token);
        error = std::get<0>(done);
        if (!error) {
          if constexpr (std::is_void_v<R>) {
            value.emplace(true);
          } else {
            value.emplace(std::move(std::get<1>(done)));
          }
        }
      }
      const bool ours = s.end_wait();
      if (error) {
        if (ours && s.has_pending() && detail::is_operation_aborted(error))
          co_return Result::from_control(s.take(), s.name());
        std::rethrow_exception(error);
      }
      if constexpr (std::is_void_v<R>) {
        co_return Result::from_next();
      } else {
        co_return Result::from_next(std::move(*value));
      }
    } else {
      using Tuple = typename detail::tick_traits<Op>::tuple_type;
      using Traits = detail::completion_traits<Tuple>;
      s.begin_wait(sig);
      if constexpr (!Traits::has_error && std::tuple_size_v<Tuple> == 0) {
        // Work that cannot fail and yields nothing (a post, a dispatch):
        // awaited without a tuple to carry an error through.
        co_await asio::async_initiate<const asio::deferred_t&, void()>(
            detail::start_in_slot<Op, false>{&op, sig->slot()}, asio::deferred);
        s.end_wait();
        co_return Result::from_next();
      } else {
        // Awaited as an async operation, not through use_awaitable, which
        // would wrap it in a coroutine frame of its own.
        Tuple done = co_await asio::async_initiate<const asio::deferred_t&, void(Tuple)>(
            detail::start_in_slot<Op, true>{&op, sig->slot()}, asio::deferred);
        const bool ours = s.end_wait();
        constexpr std::size_t first = Traits::has_error ? 1 : 0;
        if constexpr (Traits::has_error) {
          auto& err = std::get<0>(done);
          if (err) {
            if constexpr (std::is_same_v<std::decay_t<decltype(err)>, std::exception_ptr>) {
              if (ours && s.has_pending() && detail::is_operation_aborted(err))
                co_return Result::from_control(s.take(), s.name());
              std::rethrow_exception(err);
            } else {
              if (ours && s.has_pending() && err == asio::error::operation_aborted)
                co_return Result::from_control(s.take(), s.name());
              throw boost::system::system_error(err);
            }
          }
        }
        co_return detail::next_from_tuple<R>(
            done, detail::shift<first>(std::make_index_sequence<std::tuple_size_v<Tuple> - first>()));
      }
    }
  }

  /// Waits for the next control message only.
  /// Completion: the message. Cancellation: terminal cancellation throws
  /// `system_error(operation_aborted)`.
  asio::awaitable<RuntimeControlMessage> next_control();

 private:
  friend class RuntimeGuard;
  explicit RuntimeTicker(std::shared_ptr<detail::GuardState> s) noexcept : state_(std::move(s)) {}
  detail::GuardState& state() const {
    if (!state_) detail::throw_ticker_moved_from();
    return *state_;
  }
  void release() noexcept {
    if (state_) {
      state_->detach();
      state_.reset();
    }
  }

  std::shared_ptr<detail::GuardState> state_;
};

/// Owns a service's control inbox. A member of a Runnable; not copyable.
/// Messages sent before a ticker exists are kept and delivered first; a
/// guard can be run, stopped and run again.
class RuntimeGuard {
 public:
  RuntimeGuard();
  /// A guard whose errors and logs name the service `name`.
  explicit RuntimeGuard(std::string name);
  RuntimeGuard(const RuntimeGuard&) = delete;
  RuntimeGuard& operator=(const RuntimeGuard&) = delete;
  ~RuntimeGuard() = default;

  /// The guard's one ticker, bound to the calling coroutine's executor.
  /// Throws std::logic_error while another ticker of this guard is alive.
  asio::awaitable<RuntimeTicker> runtime_ticker();
  /// The handle that delivers control messages to this guard's ticker.
  std::shared_ptr<ProcessControlHandler> handle() const noexcept { return state_; }
  /// True while a ticker is alive.
  bool is_running() const noexcept { return state_->is_running(); }
  /// Tells the supervisor the service is ready (serving, connected, loaded).
  /// Without defer_readiness() a service is ready once it has its ticker.
  /// It counts when readiness is held back (defer_readiness(), or
  /// ChildOptions::explicit_ready) or when it comes before the ticker. A
  /// call that can change nothing, because the service counted as ready
  /// when it took its ticker, throws std::logic_error naming the service
  /// (as a lambda service's ctx.ready() does): it is a mistake about when
  /// the service is ready, not to be hidden. A service run by no supervisor
  /// has nobody to tell, and its ready() does nothing.
  void ready();
  /// From now on only ready() makes the service ready, not its ticker: call
  /// it before runtime_ticker() in a service that needs time to get ready.
  void defer_readiness() { state_->defer_readiness(); }
  /// Tells the supervisor the service is alive and making progress. Cheap
  /// (one relaxed atomic store) and callable from any thread; it matters to
  /// a child with ChildOptions::heartbeat_timeout, whose heartbeat going
  /// stale holds back the systemd watchdog and fails /livez.
  void heartbeat() noexcept { state_->beat(); }

 private:
  std::shared_ptr<detail::GuardState> state_;
};

}  // namespace pm
