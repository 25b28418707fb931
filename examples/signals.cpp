// Signals: SIGHUP reloads every service, SIGTERM (or Ctrl-C) stops the tree
// gracefully and pm::run exits 0; a second Ctrl-C stops it at once.
//
//   signals               runs until a signal
//   signals --self-test   sends itself SIGHUP, then SIGTERM (as CI runs it)
#include <processmanager/processmanager.hpp>

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>

namespace asio = pm::asio;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const bool self_test = argc > 1 && std::string(argv[1]) == "--self-test";
  auto reloads = std::make_shared<std::atomic<int>>(0);
  auto config_service = [reloads](const std::string& name) {
    return pm::make_runnable(name, [name, reloads](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
      std::printf("%s: running (pid %d; kill -HUP to reload, kill -TERM to stop)\n", name.c_str(), ::getpid());
      for (;;) {
        auto msg = co_await ctx.next_control();
        if (msg.is_reload()) {
          std::printf("%s: reloading configuration\n", name.c_str());
          reloads->fetch_add(1);
        }
        if (msg.is_shutdown()) {
          std::printf("%s: stopping gracefully\n", name.c_str());
          co_return;
        }
      }
    });
  };
  auto root = pm::ProcessManagerBuilder()
                  .name("signals")
                  .pre_insert(config_service("http"))
                  .pre_insert(config_service("cache"))
                  .build();
  if (self_test) {
    root->insert(pm::make_runnable("self-test", [reloads](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
      asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
      auto first = t.async_wait(asio::deferred);
      co_await ctx.tick(first);
      ::kill(::getpid(), SIGHUP);
      while (reloads->load() < 2) {  // both services reloaded
        t.expires_after(5ms);
        auto wait = t.async_wait(asio::deferred);
        auto op = co_await ctx.tick(wait);
        if (op.is_control() && op.control().is_shutdown()) co_return;
      }
      ::kill(::getpid(), SIGTERM);
      for (;;) {
        auto msg = co_await ctx.next_control();
        if (msg.is_shutdown()) co_return;
      }
    }));
  }
  const int code = pm::run(root, {.threads = 2, .handle_signals = true});
  std::printf("exit code %d, %d reloads\n", code, reloads->load());
  return self_test ? (code == 0 && reloads->load() == 2 ? 0 : 1) : code;
}
