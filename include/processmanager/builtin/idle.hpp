// IdleProcess: keeps a manager with no other children alive until shutdown.
#pragma once

#include <memory>
#include <string>

#include <processmanager/runtime_guard.hpp>

namespace pm {

/// A service that does nothing until it is told to shut down (it ignores
/// reload and custom messages). Insert it into a manager whose other
/// children come and go through add(), so that the manager does not
/// complete when it has none.
class IdleProcess : public Runnable {
 public:
  /// An idle service named `name`.
  explicit IdleProcess(std::string name = "idle");
  /// Completes on shutdown; terminal cancellation throws operation_aborted.
  asio::awaitable<void> process_start() override;
  std::string process_name() const override { return name_; }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return guard_.handle(); }

 private:
  std::string name_;
  RuntimeGuard guard_;
};

}  // namespace pm
