#include <processmanager/runnable.hpp>

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <typeinfo>

namespace pm {

asio::awaitable<void> ProcessControlHandler::shutdown() {
  control(RuntimeControlMessage::shutdown());
  co_return;
}

asio::awaitable<void> ProcessControlHandler::reload() {
  control(RuntimeControlMessage::reload());
  co_return;
}

// By value, like every override that keeps the function; this default keeps nothing.
// NOLINTNEXTLINE(performance-unnecessary-value-param)
bool ProcessControlHandler::watch_readiness(std::function<void(bool)> /*on_ready*/) { return false; }

std::optional<std::chrono::steady_clock::time_point> ProcessControlHandler::last_heartbeat() const {
  return std::nullopt;
}

std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(mangled);
}

std::string Runnable::process_name() const { return demangle(typeid(*this).name()); }

}  // namespace pm
