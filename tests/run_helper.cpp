// Started by test_run.cpp as a child process: runs a small tree under
// pm::run and reports what its services saw on stdout.
#include <processmanager/processmanager.hpp>

#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <string>

namespace asio = pm::asio;

namespace {

// Prints "ready" once it has its ticker, then counts reloads until shutdown;
// with `stubborn` it ignores shutdown (only cancellation ends it).
std::shared_ptr<pm::Runnable> worker(const std::string& name, bool stubborn) {
  return pm::make_runnable(name, [name, stubborn](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    std::printf("ready %s\n", name.c_str());
    std::fflush(stdout);
    for (;;) {
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
      auto op = co_await ctx.tick(t.async_wait(asio::deferred));
      if (op.is_next()) continue;
      if (op.control().is_reload()) {
        std::printf("reload %s\n", name.c_str());
        std::fflush(stdout);
      }
      if (op.control().is_shutdown()) {
        std::printf("shutdown %s\n", name.c_str());
        std::fflush(stdout);
        if (!stubborn) co_return;
      }
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "idle";
  auto root = pm::ProcessManagerBuilder()
                  .name("root")
                  .shutdown_grace_period(std::chrono::hours(1))
                  .pre_insert(worker("a", mode == "stubborn"))
                  .pre_insert(worker("b", false))
                  .build();
  if (mode == "fail") {
    auto db = pm::ProcessManagerBuilder().name("db").build();
    db->insert(pm::make_runnable("writer", [](pm::RuntimeContext&) -> asio::awaitable<void> {
      throw std::runtime_error("disk full");
      co_return;
    }));
    root->insert(db);
  }
  return pm::run(root, {.threads = 2, .handle_signals = true});
}
