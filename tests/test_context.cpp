#include <processmanager/context.hpp>

#include <gtest/gtest.h>

#include "support.hpp"

namespace {

namespace asio = pm::asio;
using pm::RuntimeContext;
using pm::test::run_coro;

TEST(context, a_lambda_service_ticks_and_its_captures_outlive_every_run) {
  auto seen = std::make_shared<std::vector<std::string>>();
  std::string prefix = "got:";
  auto svc = pm::make_runnable("lambda", [seen, prefix](RuntimeContext& ctx) -> asio::awaitable<void> {
    for (;;) {
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
      auto op = co_await ctx.tick(t.async_wait(asio::deferred));
      if (op.is_next()) continue;
      // The captures are read after suspensions: they live in the runnable.
      seen->push_back(prefix + std::string(pm::to_string(op.control().kind())));
      if (op.control().is_shutdown()) co_return;
    }
  });
  EXPECT_EQ(svc->process_name(), "lambda");
  auto h = svc->process_handle();
  h->request_reload();
  h->request_shutdown();
  run_coro(svc->process_start());
  // A second run of the same runnable works too.
  h->request_shutdown();
  run_coro(svc->process_start());
  ASSERT_EQ(seen->size(), 3u);
  EXPECT_EQ((*seen)[0], "got:reload");
  EXPECT_EQ((*seen)[1], "got:shutdown");
  EXPECT_EQ((*seen)[2], "got:shutdown");
}

TEST(context, next_control_waits_for_control_only) {
  auto svc = pm::make_runnable("waiter", [](RuntimeContext& ctx) -> asio::awaitable<void> {
    auto h = ctx.handle();
    auto ex = co_await asio::this_coro::executor;
    asio::post(ex, [h] { h->control(pm::RuntimeControlMessage::custom(5)); });
    auto msg = co_await ctx.next_control();
    if (msg.custom_if<int>() == nullptr || *msg.custom_if<int>() != 5) throw std::runtime_error("wrong message");
  });
  EXPECT_NO_THROW(run_coro(svc->process_start()));
}

TEST(context, an_empty_body_is_rejected_with_invalid_argument) {
  EXPECT_THROW(pm::make_runnable("empty", nullptr), std::invalid_argument);
}

TEST(context, tick_outside_a_run_throws_logic_error_naming_the_service) {
  RuntimeContext ctx("orphan", [](RuntimeContext&) -> asio::awaitable<void> { co_return; });
  try {
    (void)ctx.next_control();
    FAIL() << "no throw";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("orphan"), std::string::npos);
  }
}

TEST(context, an_exception_in_the_body_propagates) {
  auto svc = pm::make_runnable("thrower", [](RuntimeContext&) -> asio::awaitable<void> {
    throw std::runtime_error("bad config");
    co_return;
  });
  EXPECT_THROW(run_coro(svc->process_start()), std::runtime_error);
}

}  // namespace
