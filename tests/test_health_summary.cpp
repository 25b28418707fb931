// ProcessManager::health(): what /livez, /readyz and the systemd notifier
// read. It must agree with status() (counts, stale paths) at any depth and
// through supervisors, and must not read heartbeats while none can be stale.
#include <processmanager/processmanager.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "lifecycle_support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ChildOptions;
using pm::ChildState;
using pm::HealthSummary;
using pm::ProcessManagerBuilder;
using pm::RestartOptions;
using pm::Strategy;
using pm::test::Beating;
using pm::test::Behaviour;
using pm::test::Counted;
using pm::test::Journal;
using pm::test::Probe;
using pm::test::Running;
using pm::test::send;

/// Elapsed time is the subject of the heartbeat tests: this only bounds it
/// from below (past a timeout) and synchronises with no other thread.
void let_time_pass(std::chrono::milliseconds d) { std::this_thread::sleep_for(d); }

TEST(health_summary, counts_the_services_of_nested_managers_but_not_the_managers) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<Probe>("a", j);
  auto b = std::make_shared<Probe>("b", j);
  auto c = std::make_shared<Probe>("c", j, Behaviour{.defer_ready = true});
  auto inner = ProcessManagerBuilder().name("inner").pre_insert(b).pre_insert(c).build();
  auto root = ProcessManagerBuilder().name("root").pre_insert(a).pre_insert(inner).build();

  HealthSummary h = root->health();
  EXPECT_EQ(h.state, ChildState::stopped);  // before its run
  EXPECT_EQ(h.services, 0u);

  Running run(root);
  ASSERT_TRUE(j->wait_for("start c"));
  ASSERT_TRUE(j->wait_for("start a"));
  ASSERT_TRUE(j->wait_for("start b"));
  h = root->health();
  EXPECT_FALSE(h.ready);
  EXPECT_EQ(h.services, 3u);
  EXPECT_EQ(h.running, 3u);
  EXPECT_EQ(h.stale, 0u);
  EXPECT_TRUE(h.stale_paths.empty());

  send(c, 1);
  ASSERT_TRUE(run.wait_ready());
  h = root->health();
  EXPECT_TRUE(h.ready);
  EXPECT_EQ(h.state, ChildState::ready);
  EXPECT_EQ(h.ready_services, 3u);
  EXPECT_EQ(inner->health().services, 2u);  // a nested manager answers for its own subtree

  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  h = root->health();
  EXPECT_EQ(h.state, ChildState::stopped);
  EXPECT_EQ(h.services, 0u);
  EXPECT_FALSE(h.ready);
}

TEST(health_summary, names_stale_children_at_any_depth_and_through_a_supervisor_as_status_does) {
  auto j = std::make_shared<Journal>();
  auto deep = std::make_shared<Beating>("deep", j);
  auto top = std::make_shared<Beating>("top", j);
  auto supervised = std::make_shared<Beating>("supervised", j);
  auto fresh = std::make_shared<Probe>("fresh", j);
  const ChildOptions soon{.heartbeat_timeout = 20ms};
  auto lower = ProcessManagerBuilder().name("lower").pre_insert(deep, soon).build();
  auto middle = ProcessManagerBuilder().name("middle").pre_insert(lower).build();
  auto wrapped = ProcessManagerBuilder().name("wrapped").pre_insert(supervised, soon).build();
  auto root = ProcessManagerBuilder()
                  .name("root")
                  .pre_insert(top, soon)
                  .pre_insert(middle)
                  .pre_insert(std::make_shared<pm::RestartSupervisor>(wrapped))
                  .pre_insert(fresh, ChildOptions{.heartbeat_timeout = std::chrono::hours(1)})
                  .build();
  Running run(root);
  ASSERT_TRUE(run.wait_ready());
  let_time_pass(30ms);
  const HealthSummary h = root->health();
  const auto expected = pm::stale_paths(root->status());
  ASSERT_EQ(expected.size(), 3u);
  auto sorted = expected;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(h.stale_paths, sorted);
  EXPECT_EQ(h.stale, 3u);
  EXPECT_EQ(h.services, 4u) << "top, deep, supervised, fresh";

  // Fresh beats: none stale any more, whoever reads.
  const auto later = std::chrono::steady_clock::now() + std::chrono::hours(1);
  for (const auto& b : {deep, top, supervised}) b->beats().set(later);
  EXPECT_EQ(root->health().stale, 0u);
  EXPECT_TRUE(pm::stale_paths(root->status()).empty());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_summary, reads_no_heartbeat_while_none_can_be_stale) {
  std::atomic<int> reads{0};
  ProcessManagerBuilder b;
  b.name("m");
  constexpr int n = 200;
  for (int i = 0; i < n; ++i) b.pre_insert(std::make_shared<Counted>(reads), ChildOptions{.heartbeat_timeout = 1h});
  auto m = b.build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(m->health().stale, 0u);
  EXPECT_EQ(reads.load(), 0) << "an hour cannot have passed: no heartbeat needs reading";
  (void)m->status();
  EXPECT_EQ(reads.load(), n) << "status() reads them all (it shows each child's staleness)";
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

/// A service behind a handle that says it supervises the service's own
/// handle (as RestartSupervisor's does), counting how often it is asked.
class Supervised final : public pm::Runnable {
 public:
  class Handle final : public pm::ProcessControlHandler, public pm::detail::Supervising {
   public:
    Handle(std::shared_ptr<pm::ProcessControlHandler> inner, std::atomic<int>& asked)
        : inner_(std::move(inner)), asked_(asked) {}
    void control(pm::RuntimeControlMessage msg) override { inner_->control(std::move(msg)); }
    bool watch_readiness(std::function<void(bool)> fn) override { return inner_->watch_readiness(std::move(fn)); }
    std::shared_ptr<pm::ProcessControlHandler> supervised_handle() const override {
      asked_.fetch_add(1);
      return inner_;
    }
    std::size_t supervised_restarts() const noexcept override { return 0; }
    std::shared_ptr<pm::Runnable> supervised_runnable() const override { return nullptr; }

   private:
    std::shared_ptr<pm::ProcessControlHandler> inner_;
    std::atomic<int>& asked_;
  };
  explicit Supervised(std::atomic<int>& asked)
      : probe_("supervised", std::make_shared<Journal>()),
        handle_(std::make_shared<Handle>(probe_.process_handle(), asked)) {}
  asio::awaitable<void> process_start() override { return probe_.process_start(); }
  std::string process_name() const override { return probe_.process_name(); }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return handle_; }

 private:
  Probe probe_;
  std::shared_ptr<Handle> handle_;
};

TEST(health_summary, looks_through_a_supervisor_of_a_plain_service_once) {
  // A supervisor may supervise a manager, so health() must look through
  // it; once it is seen to supervise a plain service, it is a leaf for good.
  std::atomic<int> asked{0};
  ProcessManagerBuilder b;
  b.name("m");
  constexpr int n = 100;
  for (int i = 0; i < n; ++i) b.pre_insert(std::make_shared<Supervised>(asked));
  auto m = b.build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(m->health().services, static_cast<std::size_t>(n));
  EXPECT_EQ(asked.load(), n);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_summary, a_child_that_never_beats_is_stale_from_its_start_and_again_after_a_restart) {
  auto j = std::make_shared<Journal>();
  auto silent = std::make_shared<Beating>("silent", j);
  RestartOptions again;
  again.backoff = {.initial = 0ns, .factor = 1.0, .max = 0ns, .jitter = false};
  auto m = ProcessManagerBuilder()
               .name("m")
               .strategy(Strategy::one_for_one)
               .pre_insert(silent, ChildOptions{.restart = again, .heartbeat_timeout = 300ms})
               .build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start silent"));
  let_time_pass(350ms);
  EXPECT_EQ(m->health().stale_paths, std::vector<std::string>{"m/silent"});

  // Restarted: its clock starts again at the new start, so it is fresh, and
  // it goes stale again once its timeout has passed since then.
  send(silent, 2);
  ASSERT_TRUE(j->wait_for("start silent", 2));
  ASSERT_TRUE(run.wait_ready());
  EXPECT_EQ(m->health().stale, 0u);
  let_time_pass(350ms);
  EXPECT_EQ(m->health().stale_paths, std::vector<std::string>{"m/silent"});
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health_summary, a_stopping_child_is_not_stale_and_a_timeout_of_forever_never_runs_out) {
  auto j = std::make_shared<Journal>();
  auto silent = std::make_shared<Beating>("silent", j);
  auto patient = std::make_shared<Beating>("patient", j);
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder()
               .name("m")
               .start_order(pm::StartOrder::sequential)
               .pre_insert(silent, ChildOptions{.heartbeat_timeout = 20ms})
               .pre_insert(patient, ChildOptions{.heartbeat_timeout = std::chrono::nanoseconds::max()})
               .pre_insert(stubborn, ChildOptions{.shutdown_timeout = pm::test::hang_guard})
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  let_time_pass(30ms);
  EXPECT_EQ(m->health().stale_paths, std::vector<std::string>{"m/silent"});
  // The stop holds on the stubborn child (last in, first told); the others
  // still run, and the silent one is still stale.
  run.stop();
  ASSERT_TRUE(j->wait_for("stop stubborn"));
  HealthSummary h = m->health();
  EXPECT_EQ(h.state, ChildState::stopping);
  EXPECT_EQ(h.stale_paths, std::vector<std::string>{"m/silent"});
  send(stubborn, 3);
  ASSERT_TRUE(j->wait_for("stop silent"));
  // Told to stop, it is not expected to beat.
  EXPECT_EQ(m->health().stale, 0u);
  EXPECT_EQ(run.finish(), nullptr);
  h = m->health();
  EXPECT_EQ(h.state, ChildState::stopped);
  EXPECT_EQ(h.stale, 0u);
}

}  // namespace
