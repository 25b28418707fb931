#include <processmanager/builtin/restart.hpp>

#include <gtest/gtest.h>

#include <limits>
#include <random>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::RestartOptions;
using pm::RestartPolicy;
using pm::RestartSupervisor;
using pm::test::run_coro;

/// Fails its first `failures` runs; then idles until shutdown (or, with
/// `return_normally`, returns at once for its first `failures` runs).
class Flaky : public pm::Runnable {
 public:
  explicit Flaky(int failures, bool return_normally = false) : failures_(failures), return_normally_(return_normally) {}
  asio::awaitable<void> process_start() override {
    auto ticker = co_await guard_.runtime_ticker();
    const int run = runs.fetch_add(1) + 1;
    if (run <= failures_) {
      if (return_normally_) co_return;
      throw std::runtime_error("flaky run " + std::to_string(run));
    }
    for (;;) {
      auto msg = co_await ticker.next_control();
      if (msg.is_reload()) reloads.fetch_add(1);
      if (msg.is_shutdown()) co_return;
    }
  }
  std::string process_name() const override { return "worker"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

  std::atomic<int> runs{0};
  std::atomic<int> reloads{0};

 private:
  int failures_;
  bool return_normally_;
  pm::RuntimeGuard guard_{"worker"};
};

RestartOptions fast(RestartPolicy policy = RestartPolicy::transient) {
  RestartOptions o;
  o.policy = policy;
  o.backoff.initial = 1ms;
  o.backoff.factor = 2.0;
  o.backoff.max = 50ms;
  o.max_restarts = 5;
  o.window = std::chrono::seconds(60);
  return o;
}

/// Runs `sup` under a manager; once the child has run `runs` times (and is
/// idling), `then` runs on the io thread. Returns the manager's error.
std::exception_ptr supervise(const std::shared_ptr<RestartSupervisor>& sup, const std::shared_ptr<Flaky>& child,
                             int runs, std::function<void(pm::ProcessManager&)> then) {
  asio::io_context io;
  auto m = pm::ProcessManagerBuilder().name("root").pre_insert(sup).build();
  std::exception_ptr error;
  bool done = false;
  asio::co_spawn(asio::make_strand(io), m->process_start(), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  std::function<void()> check = [&] {
    if (done) return;
    if (child->runs < runs) {
      asio::post(io, check);
      return;
    }
    then(*m);
  };
  if (then) asio::post(io, check);
  pm::test::run_io(io);
  EXPECT_TRUE(done);
  return error;
}

TEST(backoff, grows_by_its_factor_up_to_its_cap_and_jitter_stays_within_the_wait) {
  const pm::Backoff b{.initial = 100ms, .factor = 2.0, .max = 1s, .jitter = false};
  const std::vector<std::chrono::nanoseconds> expected{100ms, 200ms, 400ms, 800ms, 1s, 1s};
  for (std::uint32_t k = 1; k <= expected.size(); ++k) EXPECT_EQ(pm::backoff_delay(b, k), expected[k - 1]) << k;
  EXPECT_EQ(pm::backoff_delay(b, 100000), 1s);  // factor^k overflows; the cap holds
  EXPECT_EQ(pm::backoff_delay(pm::Backoff{.initial = 50ms, .factor = 1.0, .max = 1s}, 7), 50ms);
  EXPECT_EQ(pm::backoff_delay(pm::Backoff{.initial = 0ms}, 3), 0ms);
  const pm::Backoff jittered{.initial = 100ms, .factor = 2.0, .max = 1s, .jitter = true};
  bool below = false;
  for (int i = 0; i < 200; ++i) {
    const auto d = pm::backoff_delay(jittered, 3);
    EXPECT_GE(d.count(), 0);
    EXPECT_LE(d, 400ms);
    below = below || d < 400ms;
  }
  EXPECT_TRUE(below);  // full jitter: 200 draws from [0, 400 ms] are not all the maximum
}

// The backoff against a model in exact integer arithmetic: the wait is
// initial * factor^(k-1) capped at max and raised to min; jitter draws from
// [min, that]. Factors are whole numbers so that the model needs no doubles.
TEST(backoff, a_floor_holds_under_every_wait_jittered_or_not_against_a_model) {
  std::mt19937_64 rng(20261202);
  auto pick = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  for (int round = 0; round < 5000; ++round) {
    const std::int64_t initial = pick(0, 3) == 0 ? 0 : pick(0, 1'000'000);
    const std::int64_t cap = initial + (pick(0, 3) == 0 ? 0 : pick(0, 100'000'000));
    const std::int64_t floor = pick(0, 2) == 0 ? 0 : pick(0, cap);
    const auto factor = static_cast<std::int64_t>(pick(1, 4));
    // Past 1024, 2^(k-1) overflows a double: the growth saturates there.
    const auto attempt = static_cast<std::uint32_t>(pick(0, 9) == 0 ? pick(1000, 3000) : pick(1, 80));
    const pm::Backoff b{.initial = std::chrono::nanoseconds(initial),
                        .factor = static_cast<double>(factor),
                        .max = std::chrono::nanoseconds(cap),
                        .jitter = pick(0, 1) == 1,
                        .min = std::chrono::nanoseconds(floor)};
    std::int64_t expected = initial;
    for (std::uint32_t k = 1; k < attempt && expected < cap; ++k) expected *= factor;
    expected = std::max(std::min(expected, cap), floor);
    const auto got = pm::backoff_delay(b, attempt).count();
    const std::string what = std::string("initial ")
                                 .append(std::to_string(initial))
                                 .append(" factor ")
                                 .append(std::to_string(factor))
                                 .append(" max ")
                                 .append(std::to_string(cap))
                                 .append(" min ")
                                 .append(std::to_string(floor))
                                 .append(" attempt ")
                                 .append(std::to_string(attempt));
    if (b.jitter) {
      ASSERT_GE(got, floor) << what;
      ASSERT_LE(got, expected) << what;
    } else {
      ASSERT_EQ(got, expected) << what;
    }
    EXPECT_NO_THROW(pm::validate(RestartOptions{.backoff = b}, "svc")) << what;
  }
}

TEST(backoff, jitter_with_a_floor_spreads_over_the_whole_range_and_a_floor_at_the_cap_pins_it) {
  const pm::Backoff b{.initial = 100ms, .factor = 2.0, .max = 1s, .jitter = true, .min = 300ms};
  bool low = false;
  bool high = false;
  for (int i = 0; i < 2000; ++i) {
    const auto d = pm::backoff_delay(b, 3);  // in [300 ms, 400 ms]
    ASSERT_GE(d, 300ms);
    ASSERT_LE(d, 400ms);
    low = low || d < 320ms;
    high = high || d > 380ms;
  }
  EXPECT_TRUE(low && high);
  // Nothing grows from zero, however far factor^k overflows (2^1024 is
  // infinite in a double, and 0 times that is NaN): the floor, or nothing.
  for (const double factor : {2.0, 10.0, std::numeric_limits<double>::infinity()}) {
    for (const std::uint32_t k : {2u, 1024u, 1025u, 100000u, std::numeric_limits<std::uint32_t>::max()}) {
      EXPECT_EQ(pm::backoff_delay(pm::Backoff{.initial = 0ms, .factor = factor, .max = 30s}, k), 0ms)
          << factor << " " << k;
      EXPECT_EQ(
          pm::backoff_delay(pm::Backoff{.initial = 0ms, .factor = factor, .max = 30s, .jitter = true, .min = 5ms}, k),
          5ms)
          << factor << " " << k;
    }
  }
  // A floor above the grown wait raises it, jitter or not.
  EXPECT_EQ(pm::backoff_delay(pm::Backoff{.initial = 10ms, .max = 1s, .min = 50ms}, 1), 50ms);
  EXPECT_EQ(pm::backoff_delay(pm::Backoff{.initial = 10ms, .max = 1s, .jitter = true, .min = 50ms}, 1), 50ms);
  EXPECT_EQ(pm::backoff_delay(pm::Backoff{.initial = 1s, .max = 1s, .jitter = true, .min = 1s}, 9), 1s);
  // Out of range: validate names the service; backoff_delay alone still
  // never waits above the cap or below zero.
  EXPECT_EQ(pm::backoff_delay(pm::Backoff{.initial = 10ms, .max = 20ms, .min = 1h}, 1), 20ms);
  EXPECT_EQ(pm::backoff_delay(pm::Backoff{.initial = 10ms, .max = 20ms, .min = -1h}, 1), 10ms);
  for (const auto& bad :
       {pm::Backoff{.initial = 10ms, .max = 20ms, .min = 21ms}, pm::Backoff{.initial = 10ms, .max = 20ms, .min = -1ns},
        pm::Backoff{.initial = 0ms, .max = 0ms, .min = std::chrono::nanoseconds::max()}}) {
    try {
      pm::validate(RestartOptions{.backoff = bad}, "api/cache");
      ADD_FAILURE() << "accepted min " << bad.min.count();
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("api/cache"), std::string::npos) << e.what();
    }
  }
}

TEST(restart_intensity, unlimited_never_gives_up_and_keeps_no_books_while_zero_gives_up_at_once) {
  pm::RestartIntensity forever(RestartOptions::unlimited, std::chrono::nanoseconds::max());
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100000; ++i) ASSERT_TRUE(forever.record(t0));
  pm::RestartIntensity none(0, 1s);
  EXPECT_FALSE(none.record(t0));
  const auto o = RestartOptions::forever();
  EXPECT_EQ(o.max_restarts, RestartOptions::unlimited);
  EXPECT_EQ(o.policy, RestartPolicy::transient);
  EXPECT_EQ(RestartOptions::forever({}, RestartPolicy::permanent).policy, RestartPolicy::permanent);
  EXPECT_NO_THROW(pm::validate(o, "svc"));
}

TEST(restart_supervisor, retry_forever_in_one_line_outlasts_any_intensity_with_no_wait) {
  // 3,000 failures in a row with no wait at all: far past any window a
  // limited intensity could count, and the supervisor still restarts.
  auto child = std::make_shared<Flaky>(3000);
  auto sup = std::make_shared<RestartSupervisor>(child, RestartOptions::forever({.initial = 0ms, .max = 0ms}));
  EXPECT_EQ(supervise(sup, child, 3001, [](pm::ProcessManager& m) { m.process_handle()->request_shutdown(); }),
            nullptr);
  EXPECT_EQ(sup->restarts(), 3000u);
  EXPECT_EQ(child->runs, 3001);
}

TEST(restart_supervisor, a_backoff_floor_is_waited_even_under_full_jitter) {
  auto child = std::make_shared<Flaky>(6);
  auto sup = std::make_shared<RestartSupervisor>(
      child, RestartOptions::forever({.initial = 2ms, .factor = 2.0, .max = 40ms, .jitter = true, .min = 2ms}));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(supervise(sup, child, 7, [](pm::ProcessManager& m) { m.process_handle()->request_shutdown(); }), nullptr);
  // Six waits of at least 2 ms each happened, whatever the draws were.
  EXPECT_GE(std::chrono::steady_clock::now() - start, 12ms);
  EXPECT_GE(sup->last_backoff(), 2ms);
  EXPECT_LE(sup->last_backoff(), 40ms);
}

TEST(restart_supervisor, restarts_a_failing_child_with_exponential_backoff) {
  auto child = std::make_shared<Flaky>(3);
  auto sup = std::make_shared<RestartSupervisor>(child, fast());
  EXPECT_EQ(sup->process_name(), "worker");
  auto error = supervise(sup, child, 4, [](pm::ProcessManager& m) { m.process_handle()->request_shutdown(); });
  EXPECT_EQ(error, nullptr);
  EXPECT_EQ(sup->restarts(), 3u);
  EXPECT_EQ(sup->last_backoff(), 4ms);  // 1, 2, 4
  EXPECT_EQ(child->runs, 4);
}

TEST(restart_supervisor, gives_up_after_intensity_exceeded_naming_the_child_and_the_last_cause) {
  auto child = std::make_shared<Flaky>(1000);
  auto opts = fast();
  opts.max_restarts = 3;
  auto sup = std::make_shared<RestartSupervisor>(child, opts);
  auto error = supervise(sup, child, 0, {});
  ASSERT_TRUE(error);
  try {
    std::rethrow_exception(error);
  } catch (const pm::ProcessError& e) {
    EXPECT_EQ(e.process_name(), "root/worker");
    EXPECT_NE(e.reason().find("restart intensity exceeded"), std::string::npos) << e.reason();
    EXPECT_NE(std::string(e.what()).find("restart intensity exceeded"), std::string::npos) << e.what();
    EXPECT_EQ(pm::describe(e.cause()), "flaky run 4");
  }
  EXPECT_EQ(sup->restarts(), 3u);
  EXPECT_EQ(child->runs, 4);
}

TEST(restart_supervisor, transient_does_not_restart_a_normal_end_and_permanent_does) {
  auto once = std::make_shared<Flaky>(1, /*return_normally=*/true);
  auto transient = std::make_shared<RestartSupervisor>(once, fast(RestartPolicy::transient));
  EXPECT_NO_THROW(run_coro(transient->process_start()));
  EXPECT_EQ(transient->restarts(), 0u);
  EXPECT_EQ(once->runs, 1);

  auto twice = std::make_shared<Flaky>(2, /*return_normally=*/true);
  auto permanent = std::make_shared<RestartSupervisor>(twice, fast(RestartPolicy::permanent));
  EXPECT_EQ(supervise(permanent, twice, 3, [](pm::ProcessManager& m) { m.process_handle()->request_shutdown(); }),
            nullptr);
  EXPECT_EQ(permanent->restarts(), 2u);
}

TEST(restart_supervisor, temporary_never_restarts_and_passes_the_failure_on) {
  auto child = std::make_shared<Flaky>(1);
  auto sup = std::make_shared<RestartSupervisor>(child, fast(RestartPolicy::temporary));
  EXPECT_THROW(run_coro(sup->process_start()), std::runtime_error);
  EXPECT_EQ(sup->restarts(), 0u);
  EXPECT_EQ(child->runs, 1);
}

TEST(restart_supervisor, shutdown_ends_a_pending_backoff_at_once) {
  auto child = std::make_shared<Flaky>(1000);
  auto opts = fast();
  opts.backoff.initial = std::chrono::hours(1);
  opts.backoff.max = std::chrono::hours(1);
  auto sup = std::make_shared<RestartSupervisor>(child, opts);
  auto m = pm::ProcessManagerBuilder().pre_insert(sup).build();
  asio::io_context io;
  bool done = false;
  asio::co_spawn(asio::make_strand(io), m->process_start(), [&](std::exception_ptr e) {
    EXPECT_EQ(e, nullptr);
    done = true;
  });
  std::function<void()> check = [&] {
    if (sup->restarts() < 1) {
      asio::post(io, check);
      return;
    }
    m->process_handle()->request_shutdown();  // during the one-hour backoff
  };
  asio::post(io, check);
  pm::test::run_io(io);  // the hang guard fails the test if the backoff is waited out
  EXPECT_TRUE(done);
  EXPECT_EQ(child->runs, 1);
}

TEST(restart_supervisor, reload_reaches_the_current_child) {
  auto child = std::make_shared<Flaky>(2);
  auto sup = std::make_shared<RestartSupervisor>(child, fast());
  EXPECT_EQ(supervise(sup, child, 3,
                      [](pm::ProcessManager& m) {
                        m.process_handle()->request_reload();
                        m.process_handle()->request_shutdown();
                      }),
            nullptr);
  EXPECT_EQ(child->reloads, 1);
}

TEST(restart_supervisor, a_long_enough_run_resets_the_backoff) {
  auto child = std::make_shared<Flaky>(3);
  auto opts = fast();
  opts.reset_after = 0ns;  // every run counts as long enough
  auto sup = std::make_shared<RestartSupervisor>(child, opts);
  EXPECT_EQ(supervise(sup, child, 4, [](pm::ProcessManager& m) { m.process_handle()->request_shutdown(); }), nullptr);
  EXPECT_EQ(sup->restarts(), 3u);
  EXPECT_EQ(sup->last_backoff(), 1ms);
}

TEST(restart_supervisor, full_jitter_stays_within_the_computed_backoff) {
  auto child = std::make_shared<Flaky>(4);
  auto opts = fast();
  opts.backoff.jitter = true;
  auto sup = std::make_shared<RestartSupervisor>(child, opts);
  EXPECT_EQ(supervise(sup, child, 5, [](pm::ProcessManager& m) { m.process_handle()->request_shutdown(); }), nullptr);
  EXPECT_LE(sup->last_backoff(), 8ms);
  EXPECT_GE(sup->last_backoff(), 0ms);
}

TEST(restart_supervisor, bad_options_are_rejected_with_invalid_argument) {
  auto child = std::make_shared<Flaky>(0);
  auto opts = fast();
  opts.backoff.factor = 0.5;
  EXPECT_THROW(RestartSupervisor(child, opts), std::invalid_argument);
  EXPECT_THROW(RestartSupervisor(nullptr), std::invalid_argument);
}

TEST(restart_supervisor, its_hook_hears_each_restart_and_the_give_up_before_the_run_completes) {
  // A standalone supervisor (no manager around it): its restarts and its
  // give-up reach its own hook, in order, all before process_start() ends.
  auto child = std::make_shared<Flaky>(1000);
  auto opts = fast();
  opts.max_restarts = 2;
  auto sup = std::make_shared<RestartSupervisor>(child, opts);
  std::vector<pm::Event> seen;  // the run is on one thread: the hook's and ours
  sup->on_event([&seen](const pm::Event& e) {
    seen.push_back(e);
    throw std::runtime_error("a hook that throws stops nothing");
  });
  EXPECT_THROW(run_coro(sup->process_start()), pm::ProcessError);
  ASSERT_EQ(seen.size(), 3u);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(seen[i].kind, pm::EventKind::restart);
    EXPECT_EQ(seen[i].path, "worker");
    EXPECT_EQ(seen[i].detail, "failed");
    EXPECT_EQ(pm::describe(seen[i].cause), "flaky run " + std::to_string(i + 1));
    EXPECT_EQ(seen[i].backoff, i == 0 ? 1ms : 2ms);
    EXPECT_NE(seen[i].time, std::chrono::system_clock::time_point{});
  }
  EXPECT_EQ(seen[2].kind, pm::EventKind::give_up);
  EXPECT_NE(seen[2].detail.find("restart intensity exceeded"), std::string::npos) << seen[2].detail;
  EXPECT_EQ(pm::describe(seen[2].cause), "flaky run 3");
  EXPECT_EQ(sup->restarts(), 2u);
}

TEST(restart_supervisor, its_hook_hears_a_permanent_childs_normal_end_and_may_be_removed) {
  auto child = std::make_shared<Flaky>(2, /*return_normally=*/true);
  auto sup = std::make_shared<RestartSupervisor>(child, fast(RestartPolicy::permanent));
  std::vector<pm::Event> seen;
  sup->on_event([&seen, &sup](const pm::Event& e) {
    seen.push_back(e);
    sup->on_event(nullptr);  // calls back in: taken outside the lock
  });
  auto error = supervise(sup, child, 3, [](pm::ProcessManager& m) { m.process_handle()->request_shutdown(); });
  EXPECT_EQ(error, nullptr);
  ASSERT_EQ(seen.size(), 1u);  // the second restart found no hook
  EXPECT_EQ(seen[0].kind, pm::EventKind::restart);
  EXPECT_EQ(seen[0].cause, nullptr);
  EXPECT_EQ(seen[0].detail, "ended; permanent");
  EXPECT_EQ(sup->restarts(), 2u);
}

}  // namespace
