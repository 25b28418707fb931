// The seed example of docs/api.md, as is, run under pm::run.
//
//   seed_example            runs until Ctrl-C (SIGINT) or SIGTERM
//   seed_example --for 5s   also stops gracefully on its own after 5 s
#include <processmanager/processmanager.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

// clang-format off: verbatim from docs/api.md
struct ExampleController : pm::Runnable {
  pm::RuntimeGuard runtime_guard;

  pm::asio::awaitable<void> process_start() override {
    pm::asio::steady_timer interval(co_await pm::asio::this_coro::executor);
    auto ticker = co_await runtime_guard.runtime_ticker();
    for (;;) {
      interval.expires_after(std::chrono::seconds(1));
      auto op = co_await ticker.tick(interval.async_wait(pm::asio::deferred));
      if (op.is_next()) {
        std::puts("work");
        continue;
      }
      if (op.control().is_shutdown()) {
        std::puts("shutdown");
        break;
      }
      if (op.control().is_reload()) std::puts("trigger reload");
    }
  }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return runtime_guard.handle(); }
};
// clang-format on

namespace {

// "5", "5s" or "500ms".
std::chrono::milliseconds parse_duration(const std::string& text) {
  std::size_t used = 0;
  const long value = std::stol(text, &used);
  const std::string unit = text.substr(used);
  if (unit.empty() || unit == "s") return std::chrono::seconds(value);
  if (unit == "ms") return std::chrono::milliseconds(value);
  throw std::invalid_argument("unknown duration unit in '" + text + "' (use s or ms)");
}

// Asks `target` to shut down after `after`, unless it is stopped first.
std::shared_ptr<pm::Runnable> stop_after(std::chrono::milliseconds after,
                                         std::shared_ptr<pm::ProcessControlHandler> target) {
  return pm::make_runnable("stop-after", [after, target](pm::RuntimeContext& ctx) -> pm::asio::awaitable<void> {
    pm::asio::steady_timer timer(co_await pm::asio::this_coro::executor, after);
    auto op = co_await ctx.tick(timer.async_wait(pm::asio::deferred));
    if (op.is_next()) {
      std::puts("time is up: shutting down");
      target->request_shutdown();
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto manager = pm::ProcessManagerBuilder().name("seed").pre_insert(std::make_shared<ExampleController>()).build();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--for" && i + 1 < argc) {
      manager->insert(stop_after(parse_duration(argv[++i]), manager->process_handle()));
    } else {
      std::fprintf(stderr, "usage: %s [--for DURATION]\n", argv[0]);
      return 2;
    }
  }
  std::puts("seed example running: Ctrl-C stops it gracefully");
  return pm::run(manager);
}
