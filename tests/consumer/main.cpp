#include <processmanager/processmanager.hpp>

int main() {
  auto svc = pm::make_runnable("once", [](pm::RuntimeContext&) -> pm::asio::awaitable<void> { co_return; });
  auto root = pm::ProcessManagerBuilder().name("consumer").pre_insert(svc).build();
  return pm::run(root, {.threads = 1, .handle_signals = false});
}
