#include <processmanager/process_manager.hpp>

#include <gtest/gtest.h>

#include <mutex>
#include <thread>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ProcessError;
using pm::ProcessManager;
using pm::ProcessManagerBuilder;
using pm::test::FailingService;
using pm::test::IdleService;
using pm::test::run_coro;
using pm::test::run_io;

/// Runs `manager` and, once `ready` says so, calls `then` on the io thread.
/// Returns the exception process_start() ended with (null on success).
std::exception_ptr run_manager(asio::io_context& io, const std::shared_ptr<ProcessManager>& manager,
                               std::size_t threads = 1, std::function<void()> once_started = {}) {
  std::exception_ptr error;
  bool done = false;
  asio::cancellation_signal sig;
  asio::co_spawn(asio::make_strand(io), manager->process_start(),
                 asio::bind_cancellation_slot(sig.slot(), [&](std::exception_ptr e) {
                   error = e;
                   done = true;
                 }));
  if (once_started) asio::post(io, once_started);
  run_io(io, threads);
  EXPECT_TRUE(done) << "the manager did not complete";
  return error;
}

/// Waits, on the io_context, until `pred` holds; then runs `then`.
asio::awaitable<void> when(std::function<bool()> pred, std::function<void()> then) {
  asio::steady_timer t(co_await asio::this_coro::executor);
  while (!pred()) {
    // Polling a test predicate, not the library: a 1 ms re-check.
    t.expires_after(1ms);
    co_await t.async_wait(asio::use_awaitable);
  }
  then();
}

template <class... S>
bool all_started(const std::shared_ptr<S>&... s) {
  return ((s->started.load() > 0) && ...);
}

TEST(process_manager, with_no_children_completes_at_once) {
  asio::io_context io;
  auto m = ProcessManagerBuilder().name("empty").build();
  EXPECT_EQ(run_manager(io, m), nullptr);
  EXPECT_FALSE(m->is_running());
}

TEST(process_manager, default_name_and_grace_period) {
  ProcessManager a;
  ProcessManager b;
  EXPECT_EQ(a.process_name().rfind("process-manager-", 0), 0u);
  EXPECT_NE(a.process_name(), b.process_name());
  EXPECT_EQ(a.shutdown_grace_period(), std::chrono::seconds(30));
  EXPECT_TRUE(a.auto_cleanup());
}

TEST(process_manager, shutdown_reaches_every_child_and_completes_once_all_stopped) {
  asio::io_context io;
  auto a = std::make_shared<IdleService>("a");
  auto b = std::make_shared<IdleService>("b");
  auto m = ProcessManagerBuilder().name("root").pre_insert(a).pre_insert(b).build();
  bool all_stopped_when_returned = false;
  asio::co_spawn(io,
                 when([&] { return all_started(a, b); },
                      [&] {
                        asio::co_spawn(
                            io,
                            [](std::shared_ptr<ProcessManager> mgr, std::shared_ptr<IdleService> x,
                               std::shared_ptr<IdleService> y, bool* ok) -> asio::awaitable<void> {
                              auto handle = mgr->process_handle();
                              co_await handle->shutdown();
                              *ok = x->stopped == 1 && y->stopped == 1;
                            }(m, a, b, &all_stopped_when_returned),
                            asio::detached);
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, m, 2), nullptr);
  EXPECT_TRUE(all_stopped_when_returned);
  EXPECT_EQ(a->shutdowns, 1);
  EXPECT_EQ(b->shutdowns, 1);
}

TEST(process_manager, children_run_in_parallel_on_their_own_strands) {
  // Each child waits, blocking its thread, until the other has started: only
  // possible when they run at the same time on different threads.
  std::atomic<int> arrived{0};
  auto rendezvous = [&arrived](pm::RuntimeContext&) -> asio::awaitable<void> {
    arrived.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + pm::test::hang_guard;
    while (arrived.load() < 2) {
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("no parallelism");
      std::this_thread::yield();
    }
    co_return;
  };
  auto m = ProcessManagerBuilder()
               .pre_insert(pm::make_runnable("left", rendezvous))
               .pre_insert(pm::make_runnable("right", rendezvous))
               .build();
  asio::io_context io(2);
  EXPECT_EQ(run_manager(io, m, 2), nullptr);
  EXPECT_EQ(arrived, 2);
}

TEST(process_manager, first_failure_stops_the_others_and_throws_process_error_with_path_and_cause) {
  asio::io_context io;
  auto a = std::make_shared<IdleService>("a");
  auto b = std::make_shared<IdleService>("b");
  auto m = ProcessManagerBuilder()
               .name("root")
               .pre_insert(a)
               .pre_insert(std::make_shared<FailingService>("bad", "kaboom"))
               .pre_insert(b)
               .build();
  auto error = run_manager(io, m, 2);
  ASSERT_TRUE(error);
  try {
    std::rethrow_exception(error);
  } catch (const ProcessError& e) {
    EXPECT_EQ(e.process_name(), "root/bad");
    EXPECT_EQ(pm::describe(e.cause()), "kaboom");
    EXPECT_EQ(e.failures().size(), 1u);
    EXPECT_NE(std::string(e.what()).find("root/bad"), std::string::npos);
  }
  EXPECT_EQ(a->shutdowns, 1);
  EXPECT_EQ(b->shutdowns, 1);
  EXPECT_EQ(a->stopped, 1);
  EXPECT_EQ(b->stopped, 1);
}

TEST(process_manager, every_failure_is_kept_the_first_one_first) {
  // "second" fails only when it receives the shutdown that the first
  // failure causes: so the order is certain.
  struct FailOnShutdown : pm::Runnable {
    pm::RuntimeGuard guard{"second"};
    asio::awaitable<void> process_start() override {
      auto ticker = co_await guard.runtime_ticker();
      auto msg = co_await ticker.next_control();
      throw std::runtime_error("failed while stopping: " + std::string(pm::to_string(msg.kind())));
    }
    std::string process_name() const override { return "second"; }
    std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard.handle(); }
  };
  asio::io_context io;
  auto m = ProcessManagerBuilder()
               .name("root")
               .pre_insert(std::make_shared<FailOnShutdown>())
               .pre_insert(std::make_shared<FailingService>("first", "first failure"))
               .build();
  auto error = run_manager(io, m, 2);
  try {
    std::rethrow_exception(error);
  } catch (const ProcessError& e) {
    ASSERT_EQ(e.failures().size(), 2u);
    EXPECT_EQ(e.failures()[0].process_name, "root/first");
    EXPECT_EQ(e.failures()[1].process_name, "root/second");
    EXPECT_EQ(pm::describe(e.failures()[1].cause), "failed while stopping: shutdown");
  }
}

TEST(process_manager, a_normal_return_ends_only_that_child) {
  asio::io_context io;
  auto idle = std::make_shared<IdleService>("idle");
  auto quick = pm::make_runnable("quick", [](pm::RuntimeContext&) -> asio::awaitable<void> { co_return; });
  auto m = ProcessManagerBuilder().pre_insert(idle).pre_insert(quick).build();
  asio::co_spawn(io,
                 when([&] { return all_started(idle) && m->child_count() == 1; },
                      [&] {
                        EXPECT_EQ(idle->stopped, 0);
                        m->process_handle()->request_shutdown();
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, m), nullptr);
  EXPECT_EQ(idle->stopped, 1);
}

TEST(process_manager, auto_cleanup_off_keeps_finished_children_in_the_books) {
  asio::io_context io;
  auto idle = std::make_shared<IdleService>("idle");
  auto quick = pm::make_runnable("quick", [](pm::RuntimeContext&) -> asio::awaitable<void> { co_return; });
  auto m = ProcessManagerBuilder().auto_cleanup(false).pre_insert(idle).pre_insert(quick).build();
  std::size_t seen = 0;
  asio::co_spawn(io,
                 when([&] { return all_started(idle) && m->running_count() == 1; },
                      [&] {
                        seen = m->child_count();  // idle running + quick finished
                        m->process_handle()->request_shutdown();
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, m), nullptr);
  EXPECT_EQ(seen, 2u);
}

TEST(process_manager, nested_managers_pass_reload_and_shutdown_to_the_leaves) {
  asio::io_context io(4);
  auto w1 = std::make_shared<IdleService>("w1");
  auto w2 = std::make_shared<IdleService>("w2");
  auto top = std::make_shared<IdleService>("top");
  auto inner = ProcessManagerBuilder().name("inner").pre_insert(w1).pre_insert(w2).build();
  auto mid = ProcessManagerBuilder().name("mid").pre_insert(inner).build();
  auto root = ProcessManagerBuilder().name("root").pre_insert(mid).pre_insert(top).build();
  asio::co_spawn(io,
                 when([&] { return all_started(w1, w2, top); },
                      [&] {
                        auto h = root->process_handle();
                        h->request_reload();
                        h->control(pm::RuntimeControlMessage::custom(1));
                        asio::co_spawn(io,
                                       when([&] { return w1->customs == 1 && w2->customs == 1 && top->customs == 1; },
                                            [&] { root->process_handle()->request_shutdown(); }),
                                       asio::detached);
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, root, 4), nullptr);
  for (const auto& s : {w1, w2, top}) {
    EXPECT_EQ(s->reloads, 1) << s->process_name();
    EXPECT_EQ(s->shutdowns, 1) << s->process_name();
    EXPECT_EQ(s->stopped, 1) << s->process_name();
  }
}

TEST(process_manager, a_leaf_failure_names_the_whole_path) {
  asio::io_context io(2);
  auto sibling = std::make_shared<IdleService>("cache");
  auto db = ProcessManagerBuilder()
                .name("db")
                .pre_insert(std::make_shared<IdleService>("reader"))
                .pre_insert(std::make_shared<FailingService>("writer", "disk full"))
                .build();
  auto root = ProcessManagerBuilder().name("root").pre_insert(db).pre_insert(sibling).build();
  auto error = run_manager(io, root, 2);
  try {
    std::rethrow_exception(error);
  } catch (const ProcessError& e) {
    EXPECT_EQ(e.process_name(), "root/db/writer");
    EXPECT_EQ(pm::describe(e.cause()), "disk full");
    EXPECT_THROW(std::rethrow_exception(e.cause()), std::runtime_error);
  }
  EXPECT_EQ(sibling->stopped, 1);
}

TEST(process_manager, a_child_that_ignores_shutdown_is_cancelled_after_the_grace_period) {
  asio::io_context io;
  auto stubborn = std::make_shared<IdleService>("stubborn", /*ignore_shutdown=*/true);
  auto polite = std::make_shared<IdleService>("polite");
  auto m = ProcessManagerBuilder().shutdown_grace_period(200ms).pre_insert(stubborn).pre_insert(polite).build();
  std::chrono::steady_clock::time_point asked;
  asio::co_spawn(io,
                 when([&] { return all_started(stubborn, polite); },
                      [&] {
                        asked = std::chrono::steady_clock::now();
                        m->process_handle()->request_shutdown();
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, m), nullptr);
  const auto took = std::chrono::steady_clock::now() - asked;
  EXPECT_GE(took, 200ms);  // it did wait for the grace period...
  EXPECT_EQ(stubborn->shutdowns, 1);
  EXPECT_EQ(stubborn->stopped, 0);  // ...and then cancelled it mid-loop
  EXPECT_EQ(polite->stopped, 1);
}

TEST(process_manager, a_child_that_ignores_even_cancellation_is_abandoned_and_the_manager_completes) {
  asio::io_context io;
  std::atomic<bool> stop_spinning{false};
  auto deaf = pm::make_runnable("deaf", [&stop_spinning](pm::RuntimeContext&) -> asio::awaitable<void> {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto ex = co_await asio::this_coro::executor;
    while (!stop_spinning) co_await asio::post(ex, asio::use_awaitable);
  });
  auto m = ProcessManagerBuilder().shutdown_grace_period(50ms).abandon_timeout(50ms).pre_insert(deaf).build();
  bool done = false;
  asio::co_spawn(asio::make_strand(io), m->process_start(), [&](std::exception_ptr) {
    done = true;
    stop_spinning = true;  // let the abandoned coroutine end so the io_context drains
  });
  asio::post(io, [&] { m->process_handle()->request_shutdown(); });
  run_io(io);
  EXPECT_TRUE(done);
}

TEST(process_manager, two_hundred_children_on_four_threads_with_one_failing) {
  asio::io_context io(4);
  std::vector<std::shared_ptr<IdleService>> idle;
  ProcessManagerBuilder b;
  b.name("big");
  for (int i = 0; i < 200; ++i) {
    if (i == 137) {
      b.pre_insert(std::make_shared<FailingService>("bad-137", "broken", /*on_trigger=*/true));
      continue;
    }
    // append, not "s" + to_string(i): g++ 12 -O3 warns -Wrestrict there (GCC PR 105329).
    idle.push_back(std::make_shared<IdleService>(std::string("s").append(std::to_string(i))));
    b.pre_insert(idle.back());
  }
  auto m = b.build();
  asio::co_spawn(io,
                 when(
                     [&] {
                       for (const auto& s : idle)
                         if (s->started == 0) return false;
                       return true;
                     },
                     [&] { m->process_handle()->control(pm::RuntimeControlMessage::custom(0)); }),
                 asio::detached);
  auto error = run_manager(io, m, 4);
  try {
    std::rethrow_exception(error);
  } catch (const ProcessError& e) {
    EXPECT_EQ(e.process_name(), "big/bad-137");
    EXPECT_EQ(e.failures().size(), 1u);
  }
  for (const auto& s : idle) {
    EXPECT_EQ(s->stopped, 1) << s->process_name();
    EXPECT_EQ(s->shutdowns, 1) << s->process_name();
  }
}

TEST(process_manager, add_while_running_starts_the_child_at_once) {
  asio::io_context io(2);
  auto first = std::make_shared<IdleService>("first");
  auto late = std::make_shared<IdleService>("late");
  auto m = ProcessManagerBuilder().pre_insert(first).build();
  asio::co_spawn(io,
                 when([&] { return all_started(first); },
                      [&] {
                        std::thread adder([&] { m->add(late); });  // from a foreign thread
                        adder.join();
                        asio::co_spawn(
                            io,
                            when([&] { return all_started(late); }, [&] { m->process_handle()->request_shutdown(); }),
                            asio::detached);
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, m, 2), nullptr);
  EXPECT_EQ(late->stopped, 1);
}

TEST(process_manager, add_during_shutdown_starts_the_child_and_stops_it_at_once) {
  asio::io_context io;
  auto stubborn = std::make_shared<IdleService>("stubborn", true);
  auto late = std::make_shared<IdleService>("late");
  auto m = ProcessManagerBuilder().shutdown_grace_period(100ms).pre_insert(stubborn).build();
  asio::co_spawn(io,
                 when([&] { return all_started(stubborn); },
                      [&] {
                        m->process_handle()->request_shutdown();
                        m->add(late);  // the stubborn child keeps the manager in its shutdown
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, m), nullptr);
  EXPECT_EQ(late->started, 1);
  EXPECT_EQ(late->shutdowns, 1);
  EXPECT_EQ(late->stopped, 1);
}

TEST(process_manager, misuse_throws_named_errors) {
  auto m = ProcessManagerBuilder().name("orders").build();
  try {
    m->add(std::make_shared<IdleService>());
    FAIL() << "add before start did not throw";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("orders"), std::string::npos);
  }
  EXPECT_THROW(m->insert(nullptr), std::invalid_argument);
  EXPECT_THROW(ProcessManagerBuilder().pre_insert(nullptr), std::invalid_argument);

  auto idle = std::make_shared<IdleService>();
  m->insert(idle);
  asio::io_context io;
  bool insert_threw = false;
  bool second_start_threw = false;
  bool null_add_threw = false;
  asio::co_spawn(io,
                 when([&] { return all_started(idle); },
                      [&] {
                        try {
                          m->insert(std::make_shared<IdleService>());
                        } catch (const std::logic_error& e) {
                          insert_threw = std::string(e.what()).find("orders") != std::string::npos;
                        }
                        try {
                          m->add(nullptr);
                        } catch (const std::invalid_argument&) {
                          null_add_threw = true;
                        }
                        asio::co_spawn(io, m->process_start(), [&](std::exception_ptr e) {
                          try {
                            if (e) std::rethrow_exception(e);
                          } catch (const std::logic_error& le) {
                            second_start_threw = std::string(le.what()).find("orders") != std::string::npos;
                          }
                          m->process_handle()->request_shutdown();
                        });
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, m), nullptr);
  EXPECT_TRUE(insert_threw);
  EXPECT_TRUE(second_start_threw);
  EXPECT_TRUE(null_add_threw);
}

TEST(process_manager, a_child_with_a_null_handle_fails_by_name) {
  struct NoHandle : pm::Runnable {
    asio::awaitable<void> process_start() override { co_return; }
    std::string process_name() const override { return "nohandle"; }
    std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return nullptr; }
  };
  asio::io_context io;
  auto m = ProcessManagerBuilder().name("root").pre_insert(std::make_shared<NoHandle>()).build();
  auto error = run_manager(io, m);
  try {
    std::rethrow_exception(error);
  } catch (const ProcessError& e) {
    EXPECT_EQ(e.process_name(), "root/nohandle");
    EXPECT_THROW(std::rethrow_exception(e.cause()), std::invalid_argument);
  }
}

TEST(process_manager, messages_sent_before_start_are_delivered_to_the_children) {
  asio::io_context io;
  auto a = std::make_shared<IdleService>("a");
  auto m = ProcessManagerBuilder().pre_insert(a).build();
  m->process_handle()->request_reload();
  m->process_handle()->request_shutdown();
  EXPECT_EQ(run_manager(io, m), nullptr);
  EXPECT_EQ(a->reloads, 1);
  EXPECT_EQ(a->stopped, 1);
}

TEST(process_manager, a_manager_can_run_again_after_it_ended) {
  auto a = std::make_shared<IdleService>("a");
  auto m = ProcessManagerBuilder().pre_insert(a).build();
  for (int round = 1; round <= 2; ++round) {
    asio::io_context io;
    m->process_handle()->request_shutdown();
    EXPECT_EQ(run_manager(io, m), nullptr);
    EXPECT_EQ(a->stopped, round);
  }
}

TEST(process_manager, child_exceptions_never_escape_into_the_io_context) {
  asio::io_context io;
  auto m = ProcessManagerBuilder().pre_insert(std::make_shared<FailingService>("x")).build();
  asio::co_spawn(io, m->process_start(), [](std::exception_ptr) {});
  EXPECT_NO_THROW(io.run());
}

TEST(process_manager, destroying_a_manager_whose_io_context_was_stopped_mid_run) {
  // Manager first, then the io_context.
  {
    asio::io_context io;
    auto a = std::make_shared<IdleService>("a");
    auto m = ProcessManagerBuilder().pre_insert(a).pre_insert(std::make_shared<IdleService>("b")).build();
    auto h = m->process_handle();
    asio::co_spawn(asio::make_strand(io), m->process_start(), asio::detached);
    asio::co_spawn(io, when([&] { return all_started(a); }, [&] { io.stop(); }), asio::detached);
    io.run();
    m.reset();
    a.reset();
    h->request_shutdown();  // a handle of a dead run is harmless
  }
  // The io_context first, then the manager and its handle.
  {
    auto a = std::make_shared<IdleService>("a");
    auto m = ProcessManagerBuilder().pre_insert(a).build();
    auto h = m->process_handle();
    {
      asio::io_context io;
      asio::co_spawn(asio::make_strand(io), m->process_start(), asio::detached);
      asio::co_spawn(io, when([&] { return all_started(a); }, [&] { io.stop(); }), asio::detached);
      io.run();
    }
    EXPECT_FALSE(m->is_running());
    h->request_reload();
    h->request_shutdown();
    m.reset();
  }
  SUCCEED();
}

TEST(process_manager, terminal_cancellation_of_the_manager_cancels_every_child_at_once) {
  asio::io_context io;
  auto a = std::make_shared<IdleService>("a", true);
  auto b = std::make_shared<IdleService>("b", true);
  auto m = ProcessManagerBuilder().shutdown_grace_period(std::chrono::hours(1)).pre_insert(a).pre_insert(b).build();
  asio::cancellation_signal sig;
  bool done = false;
  auto strand = asio::make_strand(io);
  asio::co_spawn(strand, m->process_start(), asio::bind_cancellation_slot(sig.slot(), [&](std::exception_ptr e) {
                   done = true;
                   EXPECT_EQ(e, nullptr);
                 }));
  asio::co_spawn(io,
                 when([&] { return all_started(a, b); },
                      [&] { asio::post(strand, [&] { sig.emit(asio::cancellation_type::terminal); }); }),
                 asio::detached);
  run_io(io);
  EXPECT_TRUE(done);
  EXPECT_EQ(a->stopped, 0);
  EXPECT_EQ(b->stopped, 0);
}

TEST(process_manager, a_child_holding_its_own_managers_handle_does_not_keep_the_tree_alive) {
  std::weak_ptr<ProcessManager> weak_manager;
  std::weak_ptr<pm::Runnable> weak_child;
  {
    auto m = ProcessManagerBuilder().name("self-stopping").build();
    auto handle = m->process_handle();
    auto child = pm::make_runnable("stopper", [handle](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
      handle->request_shutdown();  // stops its own tree, this child included
      auto msg = co_await ctx.next_control();
      if (!msg.is_shutdown()) throw std::runtime_error("expected shutdown");
    });
    m->insert(child);
    weak_manager = m;
    weak_child = child;
    asio::io_context io;
    EXPECT_EQ(run_manager(io, m), nullptr);
  }
  EXPECT_TRUE(weak_manager.expired());
  EXPECT_TRUE(weak_child.expired());
}

TEST(process_manager, a_handle_outliving_its_manager_does_nothing) {
  std::shared_ptr<pm::ProcessControlHandler> handle;
  {
    auto m = ProcessManagerBuilder().build();
    handle = m->process_handle();
  }
  handle->request_reload();
  run_coro([](std::shared_ptr<pm::ProcessControlHandler> h) -> asio::awaitable<void> {
    co_await h->shutdown();  // completes at once: nothing left to stop
    co_await h->reload();
  }(handle));
}

TEST(process_manager, a_second_shutdown_is_not_passed_on) {
  asio::io_context io;
  auto stubborn = std::make_shared<IdleService>("stubborn", true);
  auto m = ProcessManagerBuilder().shutdown_grace_period(50ms).pre_insert(stubborn).build();
  asio::co_spawn(io,
                 when([&] { return all_started(stubborn); },
                      [&] {
                        m->process_handle()->request_shutdown();
                        m->process_handle()->request_shutdown();
                      }),
                 asio::detached);
  EXPECT_EQ(run_manager(io, m), nullptr);
  EXPECT_EQ(stubborn->shutdowns, 1);
}

// Regression (found by the stress test): a nested manager told to stop
// before it started passed the shutdown on twice, once from its kept
// messages and once because it started in the stopping state.
TEST(process_manager, a_manager_stopped_before_it_starts_tells_each_child_once) {
  asio::io_context io;
  auto stubborn = std::make_shared<IdleService>("stubborn", true);
  auto inner = ProcessManagerBuilder().name("inner").shutdown_grace_period(50ms).pre_insert(stubborn).build();
  inner->process_handle()->request_shutdown();
  EXPECT_EQ(run_manager(io, inner), nullptr);
  EXPECT_EQ(stubborn->shutdowns, 1);
}

}  // namespace

namespace {

/// Records whether each child ran on a strand or on the bare io_context.
std::vector<bool> children_on_strands(asio::io_context& io, std::size_t threads) {
  auto on_strand = std::make_shared<std::vector<bool>>();
  auto mu = std::make_shared<std::mutex>();
  ProcessManagerBuilder b;
  b.name("exec");
  for (int i = 0; i < 3; ++i) {
    b.pre_insert(pm::make_runnable("probe", [on_strand, mu](pm::RuntimeContext&) -> asio::awaitable<void> {
      auto ex = co_await asio::this_coro::executor;
      std::lock_guard lock(*mu);
      on_strand->push_back(ex.target<asio::io_context::executor_type>() == nullptr);
    }));
  }
  EXPECT_EQ(run_manager(io, b.build(), threads), nullptr);
  return *on_strand;
}

}  // namespace

// An io_context promised one thread (concurrency hint 1) serialises its
// handlers already: children run on it directly, sparing a strand each.
TEST(process_manager, children_skip_strands_only_on_a_single_threaded_io_context) {
  asio::io_context one(1);
  EXPECT_EQ(children_on_strands(one, 1), std::vector<bool>({false, false, false}));
  // In the suite's sharded mode the children dealt to the other shards (one
  // thread each) run there without strands: test_shards.cpp checks that.
  if (pm::test::test_shards() > 1) GTEST_SKIP() << "sharded: children on the other shards need no strand";
  asio::io_context two(2);
  EXPECT_EQ(children_on_strands(two, 2), std::vector<bool>({true, true, true}));
  asio::io_context unhinted;
  EXPECT_EQ(children_on_strands(unhinted, 1), std::vector<bool>({true, true, true}));
}
