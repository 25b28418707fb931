// Services written as lambdas with make_runnable: no class, no guard. The
// captures live in the runnable, so they are safe across suspensions.
#include <processmanager/processmanager.hpp>

#include <chrono>
#include <cstdio>
#include <string>

namespace asio = pm::asio;
using namespace std::chrono_literals;

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto manager = pm::ProcessManagerBuilder().name("lambdas").build();

  // A cache that reloads its contents on request.
  auto generation = std::make_shared<int>(0);
  manager->insert(pm::make_runnable("cache", [generation](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_reload()) std::printf("cache: reloaded, generation %d\n", ++*generation);
      if (const auto* note = msg.custom_if<std::string>()) std::printf("cache: note '%s'\n", note->c_str());
      if (msg.is_shutdown()) break;
    }
    std::puts("cache: stopped");
  }));

  // A driver that pokes the whole tree, then stops it.
  auto handle = manager->process_handle();
  manager->insert(pm::make_runnable("driver", [handle](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    asio::steady_timer t(co_await asio::this_coro::executor);
    for (int i = 0; i < 3;) {
      t.expires_after(30ms);
      auto op = co_await ctx.tick(t.async_wait(asio::deferred));
      if (op.is_next()) {
        handle->request_reload();  // reaches every service, this one too
        ++i;
      } else if (op.control().is_shutdown()) {
        co_return;
      }
    }
    handle->control(pm::RuntimeControlMessage::custom(std::string("bye")));
    handle->request_shutdown();
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) break;
    }
  }));

  const int code = pm::run(manager);
  std::printf("exit code %d, generation %d\n", code, *generation);
  return code == 0 && *generation == 3 ? 0 : 1;
}
