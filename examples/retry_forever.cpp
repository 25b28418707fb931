// Retry forever, in one line: a feed whose upstream stays down for its
// first 60 connection attempts, restarted with RestartOptions::forever().
// No intensity limit gives up on it however fast it fails; only the
// backoff paces it, and the backoff's floor (`min`) holds under full
// jitter, so no restart comes "almost at once". Once the upstream is back
// the feed becomes ready, and the program stops it and checks the books.
//
//   retry_forever          prints the restarts it saw and exits 0 when every
//                          check held
#include <processmanager/processmanager.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace asio = pm::asio;
using namespace std::chrono_literals;

namespace {

constexpr int down_for = 60;  // far beyond the default intensity (3 restarts in 5 s)

/// Stands in for a broker that refuses connections for a while.
struct Upstream {
  std::atomic<int> attempts{0};
  void connect() {
    const int n = attempts.fetch_add(1) + 1;
    if (n <= down_for)
      throw std::runtime_error(std::string("upstream refused (attempt ").append(std::to_string(n)).append(")"));
  }
};

/// What the event hook saw: every restart's number and wait.
struct Books {
  std::mutex mu;
  std::vector<std::chrono::nanoseconds> waits;
  bool gave_up = false;
};

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto upstream = std::make_shared<Upstream>();
  auto books = std::make_shared<Books>();

  auto feed = pm::make_runnable("feed", [upstream](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    upstream->connect();  // throws while the upstream is down: a failure, restarted
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
    }
  });

  // The one line. Full jitter spreads many clients' retries; the floor keeps
  // each client from hammering the upstream when a draw comes out near zero.
  const pm::ChildOptions forever{
      .restart = pm::RestartOptions::forever({.initial = 2ms, .factor = 2.0, .max = 20ms, .jitter = true, .min = 1ms})};

  auto root = pm::ProcessManagerBuilder()
                  .name("app")
                  .on_event([books](const pm::Event& e) {
                    std::lock_guard lock(books->mu);
                    if (e.kind == pm::EventKind::restart && e.backoff) books->waits.push_back(*e.backoff);
                    if (e.kind == pm::EventKind::give_up) books->gave_up = true;
                  })
                  .pre_insert(feed, forever)
                  .build();

  int code = -1;
  std::thread runner([&] { code = pm::run(root, {.threads = 2, .handle_signals = false}); });
  const bool ready = root->wait_ready_blocking(60s);
  root->shutdown_blocking();
  runner.join();

  std::lock_guard lock(books->mu);
  const auto shortest = books->waits.empty() ? 0ns : *std::min_element(books->waits.begin(), books->waits.end());
  const auto longest = books->waits.empty() ? 0ns : *std::max_element(books->waits.begin(), books->waits.end());
  std::printf("feed: %d attempts, %zu restarts, waits %.2f ms to %.2f ms, ready %s, exit code %d\n",
              upstream->attempts.load(), books->waits.size(),
              std::chrono::duration<double, std::milli>(shortest).count(),
              std::chrono::duration<double, std::milli>(longest).count(), ready ? "yes" : "no", code);
  const bool ok = ready && code == 0 && !books->gave_up && upstream->attempts == down_for + 1 &&
                  books->waits.size() == static_cast<std::size_t>(down_for) && shortest >= 1ms && longest <= 20ms;
  std::printf("retry forever: %s\n", ok ? "every check held" : "a check failed");
  return ok ? 0 : 1;
}
