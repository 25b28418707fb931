// Micro benchmarks: each pair runs the same loop with and without the
// library in one binary, so their ratio holds on a noisy machine.
#include <processmanager/processmanager.hpp>

#include <benchmark/benchmark.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <thread>

namespace asio = pm::asio;

namespace {

asio::awaitable<int> trivial() { co_return 1; }

// Runs `body(state)` as a coroutine on a one-thread io_context, spawned with
// a cancellation slot as ProcessManager spawns every child.
template <class Body>
void run_in_coroutine(benchmark::State& state, Body body) {
  asio::io_context io(1);
  asio::cancellation_signal sig;
  asio::co_spawn(io, body(state), asio::bind_cancellation_slot(sig.slot(), asio::detached));
  io.run();
}

void BM_RawPost(benchmark::State& state) {
  run_in_coroutine(state, [](benchmark::State& st) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    for (auto _ : st) co_await asio::post(ex, asio::use_awaitable);
  });
}

// The tick's like-for-like baseline: the tick awaits a deferred post as an
// async operation, with no coroutine frame of use_awaitable's around it.
void BM_RawPostDeferred(benchmark::State& state) {
  run_in_coroutine(state, [](benchmark::State& st) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    for (auto _ : st) co_await asio::post(ex, asio::deferred);
  });
}

void BM_TickPost(benchmark::State& state) {
  pm::RuntimeGuard guard;
  run_in_coroutine(state, [&guard](benchmark::State& st) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    auto ticker = co_await guard.runtime_ticker();
    for (auto _ : st) {
      auto op = co_await ticker.tick(asio::post(ex, asio::deferred));
      benchmark::DoNotOptimize(op.is_next());
    }
  });
}

void BM_RawAwaitable(benchmark::State& state) {
  run_in_coroutine(state, [](benchmark::State& st) -> asio::awaitable<void> {
    for (auto _ : st) benchmark::DoNotOptimize(co_await trivial());
  });
}

void BM_TickAwaitable(benchmark::State& state) {
  pm::RuntimeGuard guard;
  run_in_coroutine(state, [&guard](benchmark::State& st) -> asio::awaitable<void> {
    auto ticker = co_await guard.runtime_ticker();
    for (auto _ : st) {
      auto op = co_await ticker.tick(trivial());
      benchmark::DoNotOptimize(op.next());
    }
  });
}

void BM_RawCrossThreadPost(benchmark::State& state) {
  asio::io_context io(1);
  auto work = asio::make_work_guard(io);
  std::thread runner([&io] { io.run(); });
  std::atomic<std::uint64_t> done{0};
  std::uint64_t sent = 0;
  for (auto _ : state) {
    ++sent;
    asio::post(io, [&done] { done.fetch_add(1, std::memory_order_release); });
    while (done.load(std::memory_order_acquire) != sent) {
    }
  }
  work.reset();
  runner.join();
}

// BM_ControlRoundTrip's like-for-like baseline: what a bare Asio service
// racing a timer against a message does. The sender queues the message
// under a mutex and posts a cancel of the service's timer wait; the
// service wakes with operation_aborted, takes the message and waits again.
void BM_RawTimerCancelRoundTrip(benchmark::State& state) {
  asio::io_context io(1);
  asio::steady_timer timer(io, std::chrono::hours(1));
  std::mutex mu;
  std::deque<pm::RuntimeControlMessage> inbox;  // under mu
  std::atomic<std::uint64_t> seen{0};
  std::atomic<bool> ready{false};
  std::atomic<bool> stop{false};
  asio::cancellation_signal sig;
  // Arguments, not captures: a coroutine lambda's captures die with the
  // closure, before the coroutine ends.
  struct Shared {
    asio::steady_timer& timer;
    std::mutex& mu;
    std::deque<pm::RuntimeControlMessage>& inbox;
    std::atomic<std::uint64_t>& seen;
    std::atomic<bool>& ready;
    std::atomic<bool>& stop;
  };
  asio::co_spawn(
      io,
      [](Shared sh) -> asio::awaitable<void> {
        sh.ready.store(true);
        while (!sh.stop.load(std::memory_order_relaxed)) {
          auto [ec] = co_await sh.timer.async_wait(asio::as_tuple(asio::deferred));
          if (ec != asio::error::operation_aborted) continue;
          std::lock_guard lock(sh.mu);
          while (!sh.inbox.empty()) {
            sh.inbox.pop_front();
            sh.seen.fetch_add(1, std::memory_order_release);
          }
        }
      }(Shared{timer, mu, inbox, seen, ready, stop}),
      asio::bind_cancellation_slot(sig.slot(), asio::detached));
  std::thread runner([&io] { io.run(); });
  while (!ready.load()) std::this_thread::yield();
  const auto msg = pm::RuntimeControlMessage::reload();
  std::uint64_t sent = 0;
  for (auto _ : state) {
    ++sent;
    {
      std::lock_guard lock(mu);
      inbox.push_back(msg);
    }
    asio::post(io, [&timer] { timer.cancel(); });
    while (seen.load(std::memory_order_acquire) != sent) {
    }
  }
  stop.store(true);
  asio::post(io, [&timer] { timer.cancel(); });
  runner.join();
}

void BM_ControlRoundTrip(benchmark::State& state) {
  asio::io_context io(1);
  pm::RuntimeGuard guard;
  std::atomic<std::uint64_t> seen{0};
  std::atomic<bool> ready{false};
  asio::cancellation_signal sig;
  asio::co_spawn(
      io,
      [](pm::RuntimeGuard& g, std::atomic<std::uint64_t>& count, std::atomic<bool>& is_ready) -> asio::awaitable<void> {
        asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
        auto ticker = co_await g.runtime_ticker();
        is_ready.store(true);
        for (;;) {
          auto op = co_await ticker.tick(t.async_wait(asio::deferred));
          if (op.is_control()) {
            if (op.control().is_shutdown()) co_return;
            count.fetch_add(1, std::memory_order_release);
          }
        }
      }(guard, seen, ready),
      asio::bind_cancellation_slot(sig.slot(), asio::detached));
  std::thread runner([&io] { io.run(); });
  while (!ready.load()) std::this_thread::yield();
  auto handle = guard.handle();
  const auto msg = pm::RuntimeControlMessage::reload();
  std::uint64_t sent = 0;
  for (auto _ : state) {
    ++sent;
    handle->control(msg);
    while (seen.load(std::memory_order_acquire) != sent) {
    }
  }
  handle->request_shutdown();
  runner.join();
}

asio::awaitable<void> sub_task() { co_return; }

// A sub-task's whole life: spawned, run, completed. Run in batches of 64 so
// that io_context::run()'s own entry and exit are spread thin, the same on
// both sides; the io_context runs on one thread, as a service's strand does.
template <class Spawn>
void spawn_batches(benchmark::State& state, asio::io_context& io, Spawn spawn) {
  std::size_t pending = 0;
  for (auto _ : state) {
    spawn();
    if (++pending == 64) {
      io.run();
      io.restart();
      pending = 0;
    }
  }
  io.run();
}

// The least a sub-task that can be cancelled needs: a signal of its own,
// bound to its co_spawn, and a completion handler that owns it (the
// TaskScope pays exactly that, plus its books).
void BM_RawCoSpawn(benchmark::State& state) {
  asio::io_context io(1);
  std::uint64_t ended = 0;
  spawn_batches(state, io, [&io, &ended] {
    auto sig = std::make_shared<asio::cancellation_signal>();
    auto& ref = *sig;
    asio::co_spawn(io, sub_task(),
                   asio::bind_cancellation_slot(ref.slot(), [&ended, sig = std::move(sig)](std::exception_ptr e) {
                     if (!e) ++ended;
                   }));
  });
  if (ended != static_cast<std::uint64_t>(state.iterations())) state.SkipWithError("sub-tasks lost");
}

// A fire-and-forget co_spawn, which cannot be cancelled or joined (information).
void BM_RawCoSpawnDetached(benchmark::State& state) {
  asio::io_context io(1);
  spawn_batches(state, io, [&io] { asio::co_spawn(io, sub_task(), asio::detached); });
}

void BM_ScopeSpawn(benchmark::State& state) {
  asio::io_context io(1);
  pm::TaskScope scope(io.get_executor(), {.name = "bench"});
  spawn_batches(state, io, [&scope] { scope.spawn(sub_task()); });
  if (scope.running() != 0 || scope.spawned() != static_cast<std::uint64_t>(state.iterations()))
    state.SkipWithError("sub-tasks lost");
}

}  // namespace

BENCHMARK(BM_RawPost);
BENCHMARK(BM_RawPostDeferred);
BENCHMARK(BM_TickPost);
BENCHMARK(BM_RawAwaitable);
BENCHMARK(BM_TickAwaitable);
BENCHMARK(BM_RawCrossThreadPost)->UseRealTime();
BENCHMARK(BM_RawTimerCancelRoundTrip)->UseRealTime();
BENCHMARK(BM_ControlRoundTrip)->UseRealTime();
BENCHMARK(BM_RawCoSpawn);
BENCHMARK(BM_RawCoSpawnDetached);
BENCHMARK(BM_ScopeSpawn);

BENCHMARK_MAIN();
