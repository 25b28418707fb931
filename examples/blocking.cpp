// A plain blocking function as a service: it polls "hardware" on its own
// thread, reloads its settings when told to, and stops on its stop token.
#include <processmanager/processmanager.hpp>

#include <chrono>
#include <cstdio>

namespace asio = pm::asio;
using namespace std::chrono_literals;

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto poller = pm::make_blocking_runnable("sensor-poller", [](pm::BlockingContext& ctx) {
    int readings = 0;
    int settings = 1;
    while (!ctx.stop_requested()) {
      // Wait for the next poll, but wake at once for a message or the stop.
      if (ctx.wait_for(20ms)) {
        ++readings;
        continue;
      }
      while (auto msg = ctx.next_control(0ms)) {
        if (msg->is_reload()) std::printf("sensor-poller: settings reloaded (version %d)\n", ++settings);
      }
    }
    std::printf("sensor-poller: stopped after %d readings\n", readings);
  });

  auto root = pm::ProcessManagerBuilder().name("device").pre_insert(poller).build();
  auto handle = root->process_handle();
  // A driver that reloads the tree twice, then stops it.
  root->insert(pm::make_runnable("driver", [handle](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    asio::steady_timer t(co_await asio::this_coro::executor);
    for (int i = 0; i < 3;) {
      t.expires_after(60ms);
      auto wait = t.async_wait(asio::deferred);
      auto op = co_await ctx.tick(wait);
      if (op.is_control()) {
        if (op.control().is_shutdown()) co_return;
        continue;
      }
      if (++i < 3) {
        handle->request_reload();
      } else {
        handle->request_shutdown();
      }
    }
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
    }
  }));
  return pm::run(root, {.threads = 2});
}
