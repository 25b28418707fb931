#include <processmanager/builtin/interval.hpp>

#include <gtest/gtest.h>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::Interval;
using pm::MissedTickBehavior;
using pm::test::run_coro;
using clock_type = Interval::clock;

asio::awaitable<void> busy_for(std::chrono::milliseconds d) {
  // Being late on purpose: the behaviour under test is what the interval
  // does about ticks it could not deliver.
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
}

TEST(interval, first_tick_is_immediate_then_one_per_period) {
  auto ticks = run_coro([]() -> asio::awaitable<std::vector<clock_type::time_point>> {
    Interval iv(co_await asio::this_coro::executor, 5ms);
    std::vector<clock_type::time_point> at;
    const auto before = clock_type::now();
    for (int i = 0; i < 4; ++i) at.push_back(co_await iv.tick(asio::use_awaitable));
    EXPECT_LE(at[0], before + 1ms);
    co_return at;
  }());
  ASSERT_EQ(ticks.size(), 4u);
  for (std::size_t i = 1; i < ticks.size(); ++i) EXPECT_EQ(ticks[i] - ticks[i - 1], 5ms);
}

TEST(interval, burst_delivers_every_missed_tick_on_the_original_schedule) {
  auto ticks = run_coro([]() -> asio::awaitable<std::vector<clock_type::time_point>> {
    Interval iv(co_await asio::this_coro::executor, 10ms, MissedTickBehavior::burst);
    std::vector<clock_type::time_point> at;
    at.push_back(co_await iv.tick(asio::use_awaitable));
    co_await busy_for(35ms);
    for (int i = 0; i < 4; ++i) at.push_back(co_await iv.tick(asio::use_awaitable));
    co_return at;
  }());
  for (std::size_t i = 1; i < ticks.size(); ++i) EXPECT_EQ(ticks[i] - ticks[0], (10ms * static_cast<int>(i)));
}

TEST(interval, delay_schedules_the_next_tick_one_period_after_the_late_one) {
  run_coro([]() -> asio::awaitable<void> {
    Interval iv(co_await asio::this_coro::executor, 10ms, MissedTickBehavior::delay);
    const auto t0 = co_await iv.tick(asio::use_awaitable);
    co_await busy_for(35ms);
    const auto late = co_await iv.tick(asio::use_awaitable);  // scheduled t0+10, delivered at ~t0+35
    const auto delivered = clock_type::now();
    const auto next = co_await iv.tick(asio::use_awaitable);
    EXPECT_EQ(late - t0, 10ms);
    EXPECT_GE(next, t0 + 45ms);
    EXPECT_LE(next, delivered + 10ms);
  }());
}

TEST(interval, skip_drops_missed_ticks_and_keeps_the_phase) {
  run_coro([]() -> asio::awaitable<void> {
    Interval iv(co_await asio::this_coro::executor, 10ms, MissedTickBehavior::skip);
    const auto t0 = co_await iv.tick(asio::use_awaitable);
    co_await busy_for(35ms);
    (void)co_await iv.tick(asio::use_awaitable);  // the late one
    const auto next = co_await iv.tick(asio::use_awaitable);
    EXPECT_GT(next, t0 + 35ms);
    EXPECT_EQ((next - t0) % 10ms, clock_type::duration::zero());
  }());
}

TEST(interval, races_in_a_ticker_and_a_control_message_keeps_the_schedule) {
  pm::RuntimeGuard guard;
  run_coro([](pm::RuntimeGuard* g) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    Interval iv(ex, std::chrono::hours(1));
    auto ticker = co_await g->runtime_ticker();
    auto first = co_await ticker.tick(iv.tick(asio::deferred));
    EXPECT_TRUE(first.is_next());  // the immediate first tick
    auto h = g->handle();
    asio::post(ex, [h] { h->request_reload(); });
    auto second = co_await ticker.tick(iv.tick(asio::deferred));
    EXPECT_TRUE(second.is_control() && second.control().is_reload());
  }(&guard));
}

TEST(interval, a_non_positive_period_is_rejected) {
  asio::io_context io;
  EXPECT_THROW(Interval(io.get_executor(), 0ms), std::invalid_argument);
}

}  // namespace
