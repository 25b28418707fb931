// A flaky worker under a RestartSupervisor: it fails again and again, is
// restarted with exponential backoff, and the supervisor gives up once the
// restarts come faster than its intensity limit. pm::run then exits 1 with
// the worker's path, "restart intensity exceeded" and the last failure.
#include <processmanager/processmanager.hpp>

#include <chrono>
#include <cstdio>

namespace asio = pm::asio;
using namespace std::chrono_literals;

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto attempts = std::make_shared<int>(0);
  auto flaky = pm::make_runnable("flaky-worker", [attempts](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    std::printf("flaky-worker: attempt %d\n", ++*attempts);
    asio::steady_timer work(co_await asio::this_coro::executor, 20ms);
    auto wait = work.async_wait(asio::deferred);
    auto op = co_await ctx.tick(wait);
    if (op.is_control() && op.control().is_shutdown()) co_return;
    throw std::runtime_error("lost the connection to the queue");
  });

  pm::RestartOptions options;
  options.policy = pm::RestartPolicy::transient;
  options.backoff = {.initial = 10ms, .factor = 2.0, .max = 200ms, .jitter = false};
  options.max_restarts = 4;  // more than 4 restarts within 10 s: give up
  options.window = 10s;
  auto supervisor = std::make_shared<pm::RestartSupervisor>(flaky, options);

  auto root = pm::ProcessManagerBuilder()
                  .name("app")
                  .pre_insert(supervisor)
                  .pre_insert(std::make_shared<pm::IdleProcess>("steady-service"))
                  .build();
  const int code = pm::run(root, {.threads = 2, .handle_signals = true});
  std::printf("exit code %d after %zu restarts (last backoff %lld ms)\n", code, supervisor->restarts(),
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(supervisor->last_backoff()).count()));
  // The example succeeds when the supervisor gave up as designed.
  return code == 1 && supervisor->restarts() == 4 ? 0 : 1;
}
