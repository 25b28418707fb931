#include <processmanager/runtime_guard.hpp>

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
using pm::RuntimeControlMessage;
using pm::RuntimeGuard;
using pm::test::run_coro;
namespace asio = pm::asio;

asio::awaitable<int> forty_two() { co_return 42; }

asio::awaitable<int> wait_then(std::chrono::milliseconds d, int v) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
  co_return v;
}

asio::awaitable<void> throw_in_awaitable() {
  auto ex = co_await asio::this_coro::executor;
  co_await asio::post(ex, asio::use_awaitable);
  throw std::runtime_error("work failed");
}

TEST(runtime_guard, messages_sent_before_the_ticker_are_delivered_first_in_order) {
  RuntimeGuard guard("early");
  guard.handle()->request_reload();
  guard.handle()->control(RuntimeControlMessage::custom(7));
  guard.handle()->request_shutdown();
  auto kinds = run_coro([](RuntimeGuard* g) -> asio::awaitable<std::vector<pm::ControlKind>> {
    std::vector<pm::ControlKind> out;
    auto ex = co_await asio::this_coro::executor;
    auto ticker = co_await g->runtime_ticker();
    for (;;) {
      auto op = co_await ticker.tick(asio::post(ex, asio::deferred));
      if (op.is_next()) continue;
      out.push_back(op.control().kind());
      if (op.control().is_shutdown()) break;
    }
    co_return out;
  }(&guard));
  ASSERT_EQ(kinds.size(), 3u);
  EXPECT_EQ(kinds[0], pm::ControlKind::reload);
  EXPECT_EQ(kinds[1], pm::ControlKind::custom);
  EXPECT_EQ(kinds[2], pm::ControlKind::shutdown);
}

// The inbox keeps its oldest message inline and the rest in a vector: sends
// and takes interleaved in every pattern must still come out in order.
TEST(runtime_guard, interleaved_sends_and_takes_keep_fifo_order) {
  RuntimeGuard guard("fifo");
  auto h = guard.handle();
  // How many messages to send before each take; 0 means "take only".
  const std::vector<int> pattern{1, 0, 3, 0, 1, 0, 0, 0, 2, 1, 0, 0, 0, 70, 0, 5, 0, 0, 0, 0};
  const int total = 83;
  auto got = run_coro([](RuntimeGuard* g, std::shared_ptr<pm::ProcessControlHandler> handle, std::vector<int> steps,
                         int count) -> asio::awaitable<std::vector<int>> {
    std::vector<int> out;
    auto ex = co_await asio::this_coro::executor;
    auto ticker = co_await g->runtime_ticker();
    int sent = 0;
    std::size_t step = 0;
    while (static_cast<int>(out.size()) < count) {
      const int burst = step < steps.size() ? steps[step++] : 0;
      for (int i = 0; i < burst; ++i) handle->control(RuntimeControlMessage::custom(sent++));
      auto op = co_await ticker.tick(asio::post(ex, asio::deferred));
      if (op.is_control()) out.push_back(*op.control().custom_if<int>());
    }
    co_return out;
  }(&guard, h, pattern, total));
  ASSERT_EQ(got.size(), static_cast<std::size_t>(total));
  for (int i = 0; i < total; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], i);
}

TEST(runtime_guard, work_that_finishes_first_yields_its_result) {
  RuntimeGuard guard;
  auto v = run_coro([](RuntimeGuard* g) -> asio::awaitable<int> {
    auto ticker = co_await g->runtime_ticker();
    asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
    auto a = co_await ticker.tick(t.async_wait(asio::deferred));
    EXPECT_TRUE(a.is_next());
    auto b = co_await ticker.tick(forty_two());
    EXPECT_TRUE(b.is_next());
    auto c = co_await ticker.tick(wait_then(1ms, 8));
    co_return b.next() + c.next();
  }(&guard));
  EXPECT_EQ(v, 50);
}

TEST(runtime_guard, a_control_message_cancels_a_long_timer_and_wins) {
  RuntimeGuard guard("sleeper");
  auto handle = guard.handle();
  std::thread sender;
  auto got = run_coro(
      [](RuntimeGuard* g, std::shared_ptr<pm::ProcessControlHandler> h,
         std::thread* t) -> asio::awaitable<std::string> {
        auto ticker = co_await g->runtime_ticker();
        asio::steady_timer timer(co_await asio::this_coro::executor, std::chrono::hours(1));
        // Sent from a thread that runs no io_context, racing the tick's start.
        *t = std::thread([h] { h->control(RuntimeControlMessage::custom(std::string("hello"))); });
        auto op = co_await ticker.tick(timer.async_wait(asio::deferred));
        const auto* text = op.control().custom_if<std::string>();
        co_return text != nullptr ? *text : std::string("<not the custom message>");
      }(&guard, handle, &sender),
      2);
  sender.join();
  EXPECT_EQ(got, "hello");
}

TEST(runtime_guard, a_control_message_cancels_a_waiting_awaitable) {
  RuntimeGuard guard;
  auto handle = guard.handle();
  auto got = run_coro([](RuntimeGuard* g, std::shared_ptr<pm::ProcessControlHandler> h) -> asio::awaitable<bool> {
    auto ex = co_await asio::this_coro::executor;
    auto ticker = co_await g->runtime_ticker();
    asio::post(ex, [h] { h->request_reload(); });
    auto op = co_await ticker.tick(wait_then(std::chrono::hours(1), 1));
    // The coroutine itself is not left cancelled: it can keep awaiting.
    co_await asio::post(ex, asio::use_awaitable);
    co_return op.is_control() && op.control().is_reload();
  }(&guard, handle));
  EXPECT_TRUE(got);
}

TEST(runtime_guard, work_errors_throw_as_use_awaitable_would) {
  RuntimeGuard guard;
  EXPECT_THROW(run_coro([](RuntimeGuard* g) -> asio::awaitable<void> {
                 auto ticker = co_await g->runtime_ticker();
                 co_await ticker.tick(throw_in_awaitable());
               }(&guard)),
               std::runtime_error);
  // An aborted timer that *we* did not cancel is a work error.
  try {
    run_coro([](RuntimeGuard* g) -> asio::awaitable<void> {
      auto ticker = co_await g->runtime_ticker();
      auto ex = co_await asio::this_coro::executor;
      asio::steady_timer t(ex, std::chrono::hours(1));
      asio::post(ex, [&t] { t.cancel(); });
      co_await ticker.tick(t.async_wait(asio::deferred));
    }(&guard));
    FAIL() << "no throw";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), asio::error::operation_aborted);
  }
}

TEST(runtime_guard, read_results_come_back_as_the_byte_count) {
  RuntimeGuard guard;
  auto n = run_coro([](RuntimeGuard* g) -> asio::awaitable<std::size_t> {
    auto ex = co_await asio::this_coro::executor;
    asio::local::stream_protocol::socket a(ex), b(ex);
    asio::local::connect_pair(a, b);
    auto ticker = co_await g->runtime_ticker();
    co_await asio::async_write(a, asio::buffer("abcd", 4), asio::use_awaitable);
    std::array<char, 16> buf{};
    auto op = co_await ticker.tick(b.async_read_some(asio::buffer(buf), asio::deferred));
    co_return op.next();
  }(&guard));
  EXPECT_EQ(n, 4u);
}

TEST(runtime_guard, a_second_live_ticker_throws_and_a_new_one_after_the_old_died_works) {
  RuntimeGuard guard("single");
  run_coro([](RuntimeGuard* g) -> asio::awaitable<void> {
    {
      auto first = co_await g->runtime_ticker();
      EXPECT_TRUE(g->is_running());
      bool threw = false;
      try {
        auto second = co_await g->runtime_ticker();
      } catch (const std::logic_error& e) {
        threw = std::string(e.what()).find("single") != std::string::npos;
      }
      EXPECT_TRUE(threw);
    }
    EXPECT_FALSE(g->is_running());
    g->handle()->request_reload();  // kept for the next ticker
    auto again = co_await g->runtime_ticker();
    auto msg = co_await again.next_control();
    EXPECT_TRUE(msg.is_reload());
  }(&guard));
}

TEST(runtime_guard, twenty_thousand_messages_from_a_foreign_thread_arrive_in_order_while_work_completes) {
  constexpr int count = 20000;
  RuntimeGuard guard("counter");
  auto handle = guard.handle();
  asio::io_context io(4);
  std::thread sender;
  auto body = [](RuntimeGuard* g, std::shared_ptr<pm::ProcessControlHandler> h,
                 std::thread* t) -> asio::awaitable<int> {
    auto ex = co_await asio::this_coro::executor;
    auto ticker = co_await g->runtime_ticker();
    *t = std::thread([h] {
      for (int i = 0; i < count; ++i) h->control(RuntimeControlMessage::custom(i));
    });
    int expected = 0;
    int work = 0;
    while (expected < count) {
      // Work that always completes, so messages keep racing its completion.
      auto op = co_await ticker.tick(asio::post(ex, asio::deferred));
      if (op.is_next()) {
        ++work;
        continue;
      }
      const int* v = op.control().custom_if<int>();
      if (v == nullptr || *v != expected) co_return -1;
      ++expected;
    }
    co_return expected;
  };
  auto got = run_coro(io, body(&guard, handle, &sender), 4);
  sender.join();
  EXPECT_EQ(got, count);
}

TEST(runtime_guard, terminal_cancellation_of_the_caller_reaches_the_work) {
  RuntimeGuard guard;
  asio::io_context io;
  asio::cancellation_signal sig;
  std::exception_ptr error;
  asio::co_spawn(
      io,
      [](RuntimeGuard* g) -> asio::awaitable<void> {
        auto ticker = co_await g->runtime_ticker();
        asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
        co_await ticker.tick(t.async_wait(asio::deferred));
      }(&guard),
      asio::bind_cancellation_slot(sig.slot(), [&](std::exception_ptr e) { error = e; }));
  asio::post(io, [&] { sig.emit(asio::cancellation_type::terminal); });
  pm::test::run_io(io);
  ASSERT_TRUE(error);
  EXPECT_TRUE(pm::detail::is_operation_aborted(error));
}

TEST(runtime_guard, without_a_parent_slot_control_still_cancels_timers_and_awaitables) {
  RuntimeGuard guard;
  auto h = guard.handle();
  asio::io_context io;
  int controls = 0;
  asio::co_spawn(
      io,
      [](RuntimeGuard* g, std::shared_ptr<pm::ProcessControlHandler> handle, int* seen) -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto ticker = co_await g->runtime_ticker();
        asio::steady_timer t(ex, std::chrono::hours(1));
        asio::post(ex, [handle] { handle->request_reload(); });
        auto a = co_await ticker.tick(t.async_wait(asio::deferred));
        if (a.is_control()) ++*seen;
        asio::post(ex, [handle] { handle->request_reload(); });
        auto b = co_await ticker.tick(wait_then(std::chrono::hours(1), 3));
        if (b.is_control()) ++*seen;
        auto c = co_await ticker.tick(forty_two());
        if (c.is_next() && c.next() == 42) ++*seen;
      }(&guard, h, &controls),
      asio::detached);
  pm::test::run_io(io);
  EXPECT_EQ(controls, 3);
}

TEST(runtime_guard, a_handle_outliving_its_io_context_is_harmless) {
  auto guard = std::make_unique<RuntimeGuard>();
  auto h = guard->handle();
  {
    asio::io_context io;
    asio::co_spawn(
        io,
        [](RuntimeGuard* g) -> asio::awaitable<void> {
          auto ticker = co_await g->runtime_ticker();
          asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
          co_await ticker.tick(t.async_wait(asio::deferred));
        }(guard.get()),
        asio::detached);
    io.run_for(10ms);  // the io_context dies with the service suspended in tick
  }
  h->request_shutdown();
  h->request_reload();
  guard.reset();
  h->request_reload();
  SUCCEED();
}

TEST(runtime_guard, a_moved_from_ticker_throws_logic_error) {
  RuntimeGuard guard;
  run_coro([](RuntimeGuard* g) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    auto a = co_await g->runtime_ticker();
    auto b = std::move(a);
    bool threw = false;
    try {
      // NOLINTNEXTLINE(bugprone-use-after-move): the misuse is the point
      co_await a.tick(asio::post(ex, asio::deferred));
    } catch (const std::logic_error&) {
      threw = true;
    }
    EXPECT_TRUE(threw);
    EXPECT_TRUE(g->is_running());
  }(&guard));
}

}  // namespace

// The guard's four-byte mutex (detail/compact_mutex.hpp). A plain counter
// under it: a lost exclusion loses increments, and TSan sees a missing
// acquire/release as a race on the counter.
TEST(compact_mutex, excludes_and_wakes_every_sleeper_under_contention) {
  pm::detail::CompactMutex mu;
  std::size_t counter = 0;  // guarded by mu
  constexpr std::size_t threads = 4;
  constexpr std::size_t rounds = 50000;
  std::atomic<std::size_t> arrived{0};
  std::vector<std::thread> pool;
  mu.lock();  // every thread starts by queueing behind this: the slow path, and the wake-up
  for (std::size_t t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      arrived.fetch_add(1);
      for (std::size_t i = 0; i < rounds; ++i) {
        std::lock_guard lock(mu);
        ++counter;
        if (i % 1024 == 0) std::this_thread::yield();  // held across a yield: others spin out and sleep
      }
    });
  }
  while (arrived.load() < threads) std::this_thread::yield();
  for (int i = 0; i < 1000; ++i) std::this_thread::yield();
  ++counter;
  mu.unlock();
  for (auto& t : pool) t.join();
  std::lock_guard lock(mu);
  EXPECT_EQ(counter, threads * rounds + 1);
}

TEST(compact_mutex, try_lock_fails_while_held_and_succeeds_once_free) {
  pm::detail::CompactMutex mu;
  ASSERT_TRUE(mu.try_lock());
  bool other = true;
  std::thread([&] { other = mu.try_lock(); }).join();
  EXPECT_FALSE(other);
  mu.unlock();
  std::thread([&] {
    other = mu.try_lock();
    if (other) mu.unlock();
  }).join();
  EXPECT_TRUE(other);
}

// Without a parent slot, the work is bound to the guard's own signal. Asio
// clears a relay slot after each completion but not this one: the finished
// operation's handler stayed, pointing into its I/O object or holding its
// executor, and a later wake-up called it (found by an adversarial review).
TEST(runtime_guard, without_a_parent_slot_a_finished_tick_leaves_no_handler_behind) {
  RuntimeGuard guard;
  auto state = std::dynamic_pointer_cast<pm::detail::GuardState>(guard.handle());
  ASSERT_TRUE(state);
  std::vector<std::string> left;
  bool finished = false;
  asio::io_context io;
  asio::co_spawn(
      io,
      [](RuntimeGuard* g, pm::detail::GuardState* s, std::vector<std::string>* out,
         bool* done) -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto ticker = co_await g->runtime_ticker();
        auto check = [&](const char* what) {
          if (s->own_signal().slot().has_handler()) out->emplace_back(what);
        };
        {
          asio::steady_timer t(ex, std::chrono::seconds(0));
          co_await ticker.tick(t.async_wait(asio::deferred));
          check("timer");
        }
        co_await ticker.tick(wait_then(0ms, 1));
        check("awaitable");
        co_await ticker.tick(asio::co_spawn(ex, wait_then(0ms, 1), asio::deferred));
        check("co_spawn(deferred)");
        co_await ticker.tick(asio::post(ex, asio::deferred));
        check("post");
        *done = true;
      }(&guard, state.get(), &left, &finished),
      asio::detached);
  pm::test::run_io(io);
  EXPECT_TRUE(finished);
  for (const auto& what : left) ADD_FAILURE() << "a handler was left on the guard's signal after " << what;
}

// The same handler, holding a copy of a strand, outlived the io_context:
// the guard's destruction then freed the strand into a dead service (ASan:
// heap-use-after-free). And a message after a timer died called the
// timer's cancellation into freed memory.
TEST(runtime_guard, without_a_parent_slot_a_guard_outlives_its_io_context_and_its_dead_work) {
  auto guard = std::make_unique<RuntimeGuard>();
  auto h = guard->handle();
  bool done = false;
  {
    asio::io_context io;
    asio::co_spawn(
        asio::make_strand(io),
        [](RuntimeGuard* g, std::shared_ptr<pm::ProcessControlHandler> handle, bool* d) -> asio::awaitable<void> {
          auto ex = co_await asio::this_coro::executor;
          auto ticker = co_await g->runtime_ticker();
          auto r = co_await ticker.tick(wait_then(0ms, 1));
          {
            auto t = std::make_unique<asio::steady_timer>(ex, std::chrono::seconds(0));
            co_await ticker.tick(t->async_wait(asio::deferred));
          }  // the timer is gone; a message now must not reach its cancellation
          handle->request_reload();
          auto m = co_await ticker.tick(asio::post(ex, asio::deferred));
          *d = r.is_next() && m.is_control();
        }(guard.get(), h, &done),
        asio::detached);
    pm::test::run_io(io);
  }
  EXPECT_TRUE(done);
  guard.reset();
  h->request_shutdown();
}
