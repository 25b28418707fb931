#include <processmanager/context.hpp>

#include <stdexcept>

namespace pm {

namespace detail {
void throw_no_ticker(const std::string& service) {
  throw std::logic_error("RuntimeContext of service '" + service +
                         "': tick() or next_control() called while the service is not running");
}
}  // namespace detail

RuntimeContext::RuntimeContext(std::string name, Body body)
    : name_(name), body_(std::move(body)), guard_(std::move(name)) {}

asio::awaitable<void> RuntimeContext::run() {
  RuntimeTicker ticker = co_await guard_.runtime_ticker();
  // Clears ticker_ on every way out, also when the frame is destroyed unrun.
  struct Reset {
    RuntimeTicker*& slot;
    ~Reset() { slot = nullptr; }
  } reset{ticker_};
  ticker_ = &ticker;
  co_await body_(*this);
}

namespace {

class LambdaRunnable final : public Runnable {
 public:
  LambdaRunnable(std::string name, RuntimeContext::Body body) : ctx_(std::move(name), std::move(body)) {}

  asio::awaitable<void> process_start() override { return ctx_.run(); }
  std::string process_name() const override { return ctx_.name(); }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return ctx_.handle(); }

 private:
  RuntimeContext ctx_;
};

}  // namespace

std::shared_ptr<Runnable> make_runnable(std::string name, std::function<asio::awaitable<void>(RuntimeContext&)> body) {
  if (!body) throw std::invalid_argument("make_runnable('" + name + "'): the body is empty");
  return std::make_shared<LambdaRunnable>(std::move(name), std::move(body));
}

}  // namespace pm
