// Children added to a running manager from a service and from a plain
// thread; each ends on its own, and the manager stops once asked.
#include <processmanager/processmanager.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

namespace asio = pm::asio;
using namespace std::chrono_literals;

namespace {

// A short-lived job: a few timed steps, then it is done (a normal return
// ends only this child).
std::shared_ptr<pm::Runnable> job(int id, std::atomic<int>& finished) {
  return pm::make_runnable("job-" + std::to_string(id),
                           [id, &finished](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
                             asio::steady_timer step(co_await asio::this_coro::executor);
                             for (int i = 0; i < 3; ++i) {
                               step.expires_after(20ms);
                               auto op = co_await ctx.tick(step.async_wait(asio::deferred));
                               if (op.is_control() && op.control().is_shutdown()) co_return;
                             }
                             std::printf("job-%d done\n", id);
                             finished.fetch_add(1);
                           });
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::atomic<int> finished{0};
  auto manager = pm::ProcessManagerBuilder().name("dynamic").shutdown_grace_period(2s).build();
  std::weak_ptr<pm::ProcessManager> weak = manager;

  // A dispatcher service that adds a job every 50 ms, then waits for them.
  manager->insert(pm::make_runnable("dispatcher", [weak, &finished](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    asio::steady_timer every(co_await asio::this_coro::executor);
    for (int id = 1; id <= 5; ++id) {
      every.expires_after(50ms);
      auto op = co_await ctx.tick(every.async_wait(asio::deferred));
      if (op.is_control()) co_return;
      if (auto m = weak.lock()) m->add(job(id, finished));
    }
    // Jobs 1..5 from here and job 100 from the thread below.
    while (finished.load() < 6) {
      every.expires_after(10ms);
      auto op = co_await ctx.tick(every.async_wait(asio::deferred));
      if (op.is_control()) co_return;
    }
    std::puts("all jobs done; shutting the manager down");
    if (auto m = weak.lock()) m->process_handle()->request_shutdown();
  }));

  // add() is thread-safe: a plain thread adds one job once the manager runs.
  std::thread outsider([manager, &finished] {
    while (!manager->is_running()) std::this_thread::yield();
    manager->add(job(100, finished));
  });
  const int code = pm::run(manager, {.threads = 2});
  outsider.join();
  std::printf("exit code %d, %d jobs finished\n", code, finished.load());
  return code == 0 && finished.load() == 6 ? 0 : 1;
}
