// Soak: runs one tree of services through many start/stop cycles on one
// io_context and checks that resident memory stays flat.
//
//   pm_soak [--cycles N] [--services M] [--tolerance PERCENT]
//
// Prints one JSON line: cycles, services, RSS after the first cycle and at
// the end. Exits 1 if the end exceeds the first by more than the tolerance
// (default 5%) plus one page per service of allocator slack.
#include <processmanager/processmanager.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace asio = pm::asio;

namespace {

// Under a sanitizer, RSS measures the sanitizer (ASan's quarantine keeps up
// to 256 MB of freed memory), not us: the leak check is LeakSanitizer's.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool rss_is_meaningful = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool rss_is_meaningful = false;
#else
constexpr bool rss_is_meaningful = true;
#endif
#else
constexpr bool rss_is_meaningful = true;
#endif

long rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

struct Cycle {
  std::atomic<int> started{0};
  int target = 0;
  std::shared_ptr<pm::ProcessControlHandler> root;
};

// Idles until shutdown; the last one to start asks the root to stop.
std::shared_ptr<pm::Runnable> leaf(int id, Cycle* cycle) {
  return pm::make_runnable("leaf-" + std::to_string(id), [cycle](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    if (cycle->started.fetch_add(1) + 1 == cycle->target) cycle->root->request_shutdown();
    for (;;) {
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
      auto wait = t.async_wait(asio::deferred);
      auto op = co_await ctx.tick(std::move(wait));
      if (op.is_control() && op.control().is_shutdown()) co_return;
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  long cycles = 10000;
  int services = 100;
  double tolerance = 5.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--cycles")
      cycles = std::atol(argv[i + 1]);
    else if (arg == "--services")
      services = std::atoi(argv[i + 1]);
    else if (arg == "--tolerance")
      tolerance = std::atof(argv[i + 1]);
  }
  if (services < 10) services = 10;

  Cycle cycle;
  cycle.target = services;
  // A two-level tree: ten managers under the root, the leaves spread over them.
  auto root = pm::ProcessManagerBuilder().name("soak").build();
  cycle.root = root->process_handle();
  for (int g = 0; g < 10; ++g) {
    auto group = pm::ProcessManagerBuilder().name("group-" + std::to_string(g)).build();
    for (int i = g; i < services; i += 10) group->insert(leaf(i, &cycle));
    root->insert(group);
  }

  asio::io_context io(1);
  long done = 0;
  long first_rss = 0;
  bool failed = false;
  std::function<void()> next = [&] {
    cycle.started = 0;
    asio::co_spawn(asio::make_strand(io), root->process_start(), [&](std::exception_ptr e) {
      if (e) {
        failed = true;
        return;
      }
      if (++done == 1) first_rss = rss_kib();
      if (done < cycles) asio::post(io, next);
    });
  };
  next();
  io.run();
  const long end_rss = rss_kib();
  const long allowed = first_rss + static_cast<long>(static_cast<double>(first_rss) * tolerance / 100.0) + services * 4;
  std::printf("{\"cycles\":%ld,\"services\":%d,\"rss_first_kib\":%ld,\"rss_end_kib\":%ld,\"growth_pct\":%.2f}\n", done,
              services, first_rss, end_rss,
              first_rss > 0 ? 100.0 * static_cast<double>(end_rss - first_rss) / static_cast<double>(first_rss) : 0.0);
  if (failed || done != cycles) {
    std::fprintf(stderr, "soak: a cycle failed after %ld cycles\n", done);
    return 1;
  }
  if (!rss_is_meaningful) {
    std::fprintf(stderr, "soak: built with a sanitizer, RSS not checked (LeakSanitizer checks leaks at exit)\n");
    return 0;
  }
  if (end_rss > allowed) {
    std::fprintf(stderr, "soak: memory grew from %ld KiB to %ld KiB (allowed %ld)\n", first_rss, end_rss, allowed);
    return 1;
  }
  return 0;
}
