#include <processmanager/context.hpp>

#include <atomic>
#include <stdexcept>

namespace pm {

namespace detail {
void throw_no_ticker(const std::string& service) {
  throw std::logic_error("RuntimeContext of service '" + service +
                         "': tick() or next_control() called while the service is not running");
}

/// Who has settled a lambda service's readiness in this run. Shared with a
/// handler posted to the service's executor, which may run after the body.
struct LambdaReadiness {
  enum : int {
    open,      ///< nothing yet: the body has not suspended
    held,      ///< the body deferred it, or said ready() before suspending
    implicit,  ///< reported at the body's first suspension
    over,      ///< the run ended
  };
  std::atomic<int> state{open};
};

namespace {
[[noreturn]] void throw_context_error(const std::string& service, const std::string& what) {
  throw std::logic_error(std::string("RuntimeContext of service '").append(service).append("': ").append(what));
}
}  // namespace
}  // namespace detail

RuntimeContext::RuntimeContext(std::string name, Body body)
    : name_(name), body_(std::move(body)), guard_(std::move(name)) {}

asio::awaitable<void> RuntimeContext::run() {
  using detail::LambdaReadiness;
  // The ticker alone never makes a lambda service ready: its body has not
  // started then. Readiness is reported below, once the body has run up to
  // its first suspension, so that defer_readiness() at its top still counts.
  guard_.defer_readiness();
  RuntimeTicker ticker = co_await guard_.runtime_ticker();
  auto readiness = std::make_shared<LambdaReadiness>();
  // Clears the run's pointers on every way out, also when the frame is
  // destroyed unrun; a report still in flight then finds the run over.
  struct Reset {
    RuntimeTicker*& slot;
    std::shared_ptr<LambdaReadiness>& run;
    ~Reset() {
      slot = nullptr;
      if (run) run->state.store(LambdaReadiness::over);
      run.reset();
    }
  } reset{ticker_, readiness_};
  ticker_ = &ticker;
  readiness_ = readiness;
  // The service runs on a strand (or one thread): this handler runs only
  // once the body below has suspended, or ended.
  auto state = std::static_pointer_cast<detail::GuardState>(guard_.handle());
  auto ex = co_await asio::this_coro::executor;
  asio::post(ex, [state, readiness] {
    int expected = LambdaReadiness::open;
    if (readiness->state.compare_exchange_strong(expected, LambdaReadiness::implicit)) state->report_implicit_ready();
  });
  co_await body_(*this);
}

void RuntimeContext::ready() {
  using detail::LambdaReadiness;
  if (!readiness_) detail::throw_context_error(name_, "ready() called while the service is not running");
  int expected = LambdaReadiness::open;
  if (readiness_->state.compare_exchange_strong(expected, LambdaReadiness::held) || expected == LambdaReadiness::held) {
    guard_.ready();
    return;
  }
  // Counted ready already, unless its supervisor waits for a declared
  // ready() (explicit_ready): a call that changes nothing is a mistake
  // about when the service is ready, and silence would hide it.
  auto state = std::static_pointer_cast<detail::GuardState>(guard_.handle());
  if (state->watcher_needs_declared_ready()) {
    guard_.ready();
    return;
  }
  detail::throw_context_error(
      name_,
      "ready() has no effect: the service counted as ready when its body first suspended; call "
      "ctx.defer_readiness() before the body's first co_await, or insert it with ChildOptions{.explicit_ready = true}");
}

void RuntimeContext::defer_readiness() {
  using detail::LambdaReadiness;
  if (!readiness_) detail::throw_context_error(name_, "defer_readiness() called while the service is not running");
  int expected = LambdaReadiness::open;
  if (readiness_->state.compare_exchange_strong(expected, LambdaReadiness::held) || expected == LambdaReadiness::held) {
    return;
  }
  detail::throw_context_error(name_,
                              "defer_readiness() called after the body first suspended, when the service already "
                              "counted as ready; call it before the body's first co_await");
}

namespace {

class LambdaRunnable final : public Runnable, public std::enable_shared_from_this<LambdaRunnable> {
 public:
  LambdaRunnable(std::string name, RuntimeContext::Body body) : ctx_(std::move(name), std::move(body)) {}

  // The run holds the runnable, taken as an argument so that the frame owns
  // it from the call on (a local would be taken only once the coroutine
  // starts): a runnable dropped right after process_start(), as in
  // co_spawn(io, make_runnable(...)->process_start(), ...), lives on with
  // the callable and its captures until the run ends.
  asio::awaitable<void> process_start() override { return run_owned(shared_from_this()); }
  std::string process_name() const override { return ctx_.name(); }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return ctx_.handle(); }

 private:
  static asio::awaitable<void> run_owned(std::shared_ptr<LambdaRunnable> self) { co_await self->ctx_.run(); }

  RuntimeContext ctx_;
};

}  // namespace

std::shared_ptr<Runnable> make_runnable(std::string name, std::function<asio::awaitable<void>(RuntimeContext&)> body) {
  if (!body) throw std::invalid_argument("make_runnable('" + name + "'): the body is empty");
  return std::make_shared<LambdaRunnable>(std::move(name), std::move(body));
}

}  // namespace pm
