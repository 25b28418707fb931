// RuntimeContext and make_runnable: services written as lambdas.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <processmanager/runtime_guard.hpp>

namespace pm {

namespace detail {
[[noreturn]] void throw_no_ticker(const std::string& service);
struct LambdaReadiness;
}  // namespace detail

/// What a lambda service gets instead of a guard of its own: the same tick
/// and next_control as a RuntimeTicker, valid while the service runs.
class RuntimeContext {
 public:
  /// The body type of a lambda service.
  using Body = std::function<asio::awaitable<void>(RuntimeContext&)>;
  /// A context for the service `name` that runs `body`.
  RuntimeContext(std::string name, Body body);
  RuntimeContext(const RuntimeContext&) = delete;
  RuntimeContext& operator=(const RuntimeContext&) = delete;

  /// RuntimeTicker::tick on the service's ticker. Throws std::logic_error
  /// (naming the service) when called while the service is not running.
  template <class Op>
  asio::awaitable<ProcessOperation<tick_result_t<Op>>> tick(Op op) {
    return ticker().tick(std::move(op));
  }
  /// RuntimeTicker::next_control on the service's ticker.
  asio::awaitable<RuntimeControlMessage> next_control() { return ticker().next_control(); }
  /// The service's handle.
  std::shared_ptr<ProcessControlHandler> handle() const noexcept { return guard_.handle(); }
  /// Tells the supervisor the service is ready. Unless the body holds its
  /// readiness back (defer_readiness(), or ChildOptions::explicit_ready), a
  /// lambda service is ready once its body first suspends, and a ready()
  /// call before that makes it ready then. A call that cannot take effect,
  /// because the service already counts as ready without it, throws
  /// std::logic_error naming the service; so does a call while the service
  /// is not running. Call it from the body.
  void ready();
  /// Like RuntimeGuard::defer_readiness(): only ready() makes the service
  /// ready, not its body starting. Call it before the body's first co_await
  /// that suspends; later, or while the service is not running, it throws
  /// std::logic_error naming the service. Holds for the current run; call
  /// it from the body.
  void defer_readiness();
  /// RuntimeGuard::heartbeat(): the service is alive and making progress.
  void heartbeat() noexcept { guard_.heartbeat(); }
  /// The service's name.
  const std::string& name() const noexcept { return name_; }

  /// Runs the body with a live ticker; the runnable that owns the context
  /// returns this from process_start().
  asio::awaitable<void> run();

 private:
  RuntimeTicker& ticker() {
    if (ticker_ == nullptr) detail::throw_no_ticker(name_);
    return *ticker_;
  }

  std::string name_;
  Body body_;
  RuntimeGuard guard_;
  RuntimeTicker* ticker_ = nullptr;
  std::shared_ptr<detail::LambdaReadiness> readiness_;  // the current run's, null between runs
};

/// A Runnable named `name` that runs `body`. The callable is stored in the
/// runnable, and each run (the awaitable process_start() returns) keeps the
/// runnable alive until it ends, so a lambda coroutine may capture by value
/// whatever it reads across suspensions, even when the runnable itself is
/// a temporary. Throws std::invalid_argument for an empty body.
std::shared_ptr<Runnable> make_runnable(std::string name, std::function<asio::awaitable<void>(RuntimeContext&)> body);

}  // namespace pm
