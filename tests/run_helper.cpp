// Started by test_run.cpp as a child process: runs a small tree under
// pm::run and reports what its services saw on stdout.
#include <processmanager/processmanager.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

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

// Prints "ready <name>", then blocks its io thread for an hour: a
// coroutine that calls a blocking sleep.
std::shared_ptr<pm::Runnable> sleeper(const std::string& name) {
  return pm::make_runnable(name, [name](pm::RuntimeContext&) -> asio::awaitable<void> {
    std::printf("ready %s\n", name.c_str());
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::hours(1));
    co_return;
  });
}

// A blocking service that ignores its stop token for an hour.
std::shared_ptr<pm::Runnable> deaf(const std::string& name) {
  return pm::make_blocking_runnable(name, [name](pm::BlockingContext&) {
    std::printf("ready %s\n", name.c_str());
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::hours(1));
  });
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "idle";
  // The modes whose executor may be stuck report the log on stdout too
  // ("log <message>"), so that the test can wait for a signal's receipt.
  const bool stuck = mode == "sleeper1" || mode == "sleeper2" || mode == "deaf";
  if (stuck) {
    pm::set_log_sink([](pm::LogLevel level, std::string_view path, std::string_view message) {
      std::fprintf(stderr, "%s %.*s: %.*s\n", std::string(pm::to_string(level)).c_str(), static_cast<int>(path.size()),
                   path.data(), static_cast<int>(message.size()), message.data());
      std::printf("log %.*s\n", static_cast<int>(message.size()), message.data());
      std::fflush(stdout);
    });
  }
  if (mode == "nofds") {
    // Every descriptor from the lowest free one on is refused: pm::run's
    // signal handling cannot start.
    const int lowest = dup(0);
    close(lowest);
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = static_cast<rlim_t>(lowest);
    setrlimit(RLIMIT_NOFILE, &limit);
  }
  auto builder = pm::ProcessManagerBuilder().name("root").shutdown_grace_period(std::chrono::hours(1));
  if (stuck)
    builder.shutdown_grace_period(std::chrono::milliseconds(100)).abandon_timeout(std::chrono::milliseconds(100));
  auto root = builder.pre_insert(worker("a", mode == "stubborn")).pre_insert(worker("b", false)).build();
  // On shard 1 in a sharded run: a coroutine that blocks the manager's own
  // shard stalls the manager too (RunOptions::sharded says so); the test is
  // of pm::run returning past a blocked io thread, not of that.
  if (mode == "sleeper1" || mode == "sleeper2") root->insert(sleeper("s"), pm::ChildOptions{.shard = 1});
  if (mode == "throwing-handler") {
    // A handler that throws out of io_context::run(): not a service's
    // failure, but the run's.
    root->insert(pm::make_runnable("poster", [](pm::RuntimeContext&) -> asio::awaitable<void> {
      asio::post(co_await asio::this_coro::executor, [] { throw std::runtime_error("handler blew up"); });
      co_return;
    }));
  }
  if (mode == "deaf") root->insert(deaf("p"));
  if (mode == "sleeper1") return pm::run(root, {.threads = 1, .handle_signals = true});
  if (mode == "fail") {
    auto db = pm::ProcessManagerBuilder().name("db").build();
    db->insert(pm::make_runnable("writer", [](pm::RuntimeContext&) -> asio::awaitable<void> {
      throw std::runtime_error("disk full");
      co_return;
    }));
    root->insert(db);
  }
  // PM_TEST_SHARDS: the suite's sharded mode runs these trees sharded too.
  const char* shards = std::getenv("PM_TEST_SHARDS");
  const bool sharded = shards != nullptr && std::strtol(shards, nullptr, 10) > 1;
  return pm::run(root, {.threads = 2, .handle_signals = true, .sharded = sharded});
}
