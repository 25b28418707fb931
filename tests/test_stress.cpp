// Randomized fault injection: random trees of services that finish, fail,
// fail inside a reload handler, ignore shutdown, stop slowly, block their
// thread and add children, under storms of messages from foreign threads
// while shutdown is requested. Every run is checked against what each
// service recorded. PM_STRESS_RUNS sets the number of runs (default 20),
// PM_STRESS_SEED replays one seed; a failing run prints its seed.
#include <processmanager/process_manager.hpp>

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;

enum class Kind { idle, finish, fail, fail_on_reload, ignore_shutdown, slow_shutdown, blocker, adder };

/// A message sent straight to one leaf by its one sender thread: the leaf
/// must see a gap-free prefix of these, in order.
struct Direct {
  std::uint64_t seq;
};

struct LeafStats {
  std::string path;
  Kind kind{};
  int ticks_before_end = 0;  // finish / fail: after this many ticks
  std::atomic<int> started{0};
  std::atomic<int> ended{0};
  std::atomic<int> shutdowns{0};  // shutdown messages the service read
  std::atomic<int> asked{0};      // shutdown messages handed to its handle
  std::atomic<bool> threw{false};
  std::atomic<bool> ended_on_own{false};  // finished or threw, not stopped
  std::atomic<bool> ended_by_shutdown{false};
  std::mutex mu;
  std::vector<std::uint64_t> direct_seen;
  std::uint64_t direct_sent_phase1 = 0;  // written by its sender before the stop
  std::uint64_t direct_sent = 0;
};

struct World;

/// The leaf's handle: counts the shutdowns it is handed, then passes every
/// message (and readiness) on to the guard. "Asked to stop exactly once"
/// is checked here, where the asking happens: a leaf cancelled after its
/// grace period may never get to read the message it was handed.
class CountingHandle final : public pm::ProcessControlHandler {
 public:
  CountingHandle(std::shared_ptr<pm::ProcessControlHandler> inner, std::shared_ptr<LeafStats> stats)
      : inner_(std::move(inner)), stats_(std::move(stats)) {}
  void control(pm::RuntimeControlMessage msg) override {
    if (msg.is_shutdown()) stats_->asked.fetch_add(1);
    inner_->control(std::move(msg));
  }
  bool watch_readiness(std::function<void(bool)> on_ready) override {
    return inner_->watch_readiness(std::move(on_ready));
  }

 private:
  std::shared_ptr<pm::ProcessControlHandler> inner_;
  std::shared_ptr<LeafStats> stats_;
};

class Leaf final : public pm::Runnable {
 public:
  Leaf(std::shared_ptr<LeafStats> stats, World* world, std::weak_ptr<pm::ProcessManager> parent)
      : stats_(std::move(stats)),
        world_(world),
        parent_(std::move(parent)),
        guard_(stats_->path),
        handle_(std::make_shared<CountingHandle>(guard_.handle(), stats_)) {}
  asio::awaitable<void> process_start() override;
  std::string process_name() const override { return stats_->path.substr(stats_->path.rfind('/') + 1); }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return handle_; }

 private:
  std::shared_ptr<LeafStats> stats_;
  World* world_;
  std::weak_ptr<pm::ProcessManager> parent_;
  pm::RuntimeGuard guard_;
  std::shared_ptr<CountingHandle> handle_;
};

struct World {
  explicit World(std::uint64_t seed) : rng(seed) {}
  std::mt19937_64 rng;
  std::mutex mu;  // leaves, weak_refs and rng after the build (adders)
  std::vector<std::shared_ptr<LeafStats>> leaves;
  std::vector<std::shared_ptr<pm::ProcessControlHandler>> handles;  // one per leaf, same order
  std::vector<std::shared_ptr<pm::ProcessControlHandler>> manager_handles;
  std::vector<std::weak_ptr<const void>> weak_refs;  // every runnable: must all expire
  int next_id = 0;
  bool failures_allowed = false;
  std::atomic<int> add_refused{0};

  int rand(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

  Kind pick_kind(bool allow_adder) {
    const int r = rand(0, 99);
    if (failures_allowed && r < 2) return Kind::fail;
    if (failures_allowed && r < 4) return Kind::fail_on_reload;
    if (r < 10) return Kind::finish;
    if (r < 14) return Kind::ignore_shutdown;
    if (r < 24) return Kind::slow_shutdown;
    if (r < 29) return Kind::blocker;
    if (allow_adder && r < 33) return Kind::adder;
    return Kind::idle;
  }

  std::shared_ptr<Leaf> make_leaf(const std::string& parent_path, const std::weak_ptr<pm::ProcessManager>& parent,
                                  Kind kind) {
    auto stats = std::make_shared<LeafStats>();
    stats->path = parent_path + "/l" + std::to_string(next_id++);
    stats->kind = kind;
    stats->ticks_before_end = rand(1, 20);
    auto leaf = std::make_shared<Leaf>(stats, this, parent);
    leaves.push_back(stats);
    handles.push_back(leaf->process_handle());
    weak_refs.emplace_back(leaf);
    return leaf;
  }

  std::shared_ptr<pm::ProcessManager> make_manager(const std::string& name, const std::string& parent_path, int depth,
                                                   int& budget) {
    auto m = pm::ProcessManagerBuilder()
                 .name(name)
                 .shutdown_grace_period(std::chrono::milliseconds(rand(20, 60)))
                 .abandon_timeout(std::chrono::seconds(30))
                 .build();
    const std::string path = parent_path.empty() ? name : parent_path + "/" + name;
    manager_handles.push_back(m->process_handle());
    weak_refs.emplace_back(m);
    const int children = rand(1, 10);
    for (int i = 0; i < children && budget > 0; ++i) {
      if (depth < 4 && rand(0, 99) < 25) {
        // append, not "m" + to_string(...): g++ 12 -O3 warns -Wrestrict there (GCC PR 105329).
        m->insert(make_manager(std::string("m").append(std::to_string(next_id++)), path, depth + 1, budget));
      } else {
        --budget;
        m->insert(make_leaf(path, m, pick_kind(true)));
      }
    }
    return m;
  }
};

asio::awaitable<void> Leaf::process_start() {
  LeafStats& s = *stats_;
  s.started.fetch_add(1);
  struct Ended {
    LeafStats& s;
    ~Ended() { s.ended.fetch_add(1); }
  } ended{s};
  auto ex = co_await asio::this_coro::executor;
  auto ticker = co_await guard_.runtime_ticker();
  if (s.kind == Kind::adder) {
    int count = 0;
    {
      std::lock_guard lock(world_->mu);
      count = world_->rand(1, 3);
    }
    for (int i = 0; i < count; ++i) {
      auto parent = parent_.lock();
      if (!parent) break;
      std::shared_ptr<Leaf> child;
      {
        std::lock_guard lock(world_->mu);
        child = world_->make_leaf(s.path.substr(0, s.path.rfind('/')), parent_,
                                  world_->rand(0, 1) == 0 ? Kind::idle : Kind::finish);
      }
      try {
        parent->add(child);
      } catch (const std::logic_error&) {
        world_->add_refused.fetch_add(1);
      }
    }
  }
  const bool timed = s.kind == Kind::finish || s.kind == Kind::fail || s.kind == Kind::blocker;
  asio::steady_timer timer(ex);
  int ticks = 0;
  for (;;) {
    timer.expires_after(timed ? std::chrono::milliseconds(1) : std::chrono::milliseconds(3600000));
    auto wait = timer.async_wait(asio::deferred);
    auto op = co_await ticker.tick(std::move(wait));
    if (op.is_next()) {
      ++ticks;
      if (s.kind == Kind::finish && ticks >= s.ticks_before_end) {
        s.ended_on_own = true;
        co_return;
      }
      if (s.kind == Kind::fail && ticks >= s.ticks_before_end) {
        s.ended_on_own = true;
        s.threw = true;
        throw std::runtime_error("injected failure in " + s.path);
      }
      // Injected fault: this service blocks its thread (not a wait).
      if (s.kind == Kind::blocker) std::this_thread::sleep_for(std::chrono::microseconds(300));
      continue;
    }
    const auto& msg = op.control();
    if (const auto* d = msg.custom_if<Direct>()) {
      std::lock_guard lock(s.mu);
      s.direct_seen.push_back(d->seq);
      continue;
    }
    if (msg.is_reload() && s.kind == Kind::fail_on_reload) {
      s.ended_on_own = true;
      s.threw = true;
      throw std::runtime_error("injected failure in the reload handler of " + s.path);
    }
    if (msg.is_shutdown()) {
      s.shutdowns.fetch_add(1);
      if (s.kind == Kind::ignore_shutdown) continue;  // the grace period will end it
      if (s.kind == Kind::slow_shutdown) {
        asio::steady_timer slow(ex, std::chrono::milliseconds(3));
        co_await slow.async_wait(asio::use_awaitable);
      }
      s.ended_by_shutdown = true;
      co_return;
    }
  }
}

/// One random run; returns how many invariant checks it made.
int run_once(std::uint64_t seed) {
  SCOPED_TRACE("stress seed " + std::to_string(seed) + " (replay with PM_STRESS_SEED=" + std::to_string(seed) + ")");
  int checks = 0;
  auto world = std::make_unique<World>(seed);
  world->failures_allowed = world->rand(0, 1) == 1;
  const auto threads = static_cast<std::size_t>(world->rand(1, 4));
  int budget = world->rand(1, 500);
  auto root = world->make_manager("root", "", 1, budget);
  // Drawn before the tree runs: from then on adders share the generator.
  const int phase1 = world->rand(0, 300);
  const int phase2 = world->rand(0, 300);

  std::exception_ptr error;
  bool done = false;
  asio::io_context io(static_cast<int>(threads));
  asio::cancellation_signal sig;
  asio::co_spawn(asio::make_strand(io), root->process_start(),
                 asio::bind_cancellation_slot(sig.slot(), [&](std::exception_ptr e) {
                   error = e;
                   done = true;
                 }));
  std::thread io_runner([&] { pm::test::run_io(io, threads); });

  // Two storm threads, each the only sender of direct messages to its half
  // of the (initial) leaves, plus reloads and customs to anything.
  std::vector<std::shared_ptr<LeafStats>> leaves;
  std::vector<std::shared_ptr<pm::ProcessControlHandler>> handles;
  {
    std::lock_guard lock(world->mu);
    leaves = world->leaves;
    handles = world->handles;
  }
  const auto managers = world->manager_handles;
  auto storm = [&](int which, int count, bool first_phase, std::uint64_t storm_seed) {
    std::mt19937_64 r(storm_seed);
    for (int i = 0; i < count; ++i) {
      const auto pick = std::uniform_int_distribution<std::size_t>(0, leaves.size() - 1)(r);
      const int what = std::uniform_int_distribution<int>(0, 9)(r);
      if (what < 6 && pick % 2 == static_cast<std::size_t>(which)) {
        auto& s = *leaves[pick];
        handles[pick]->control(pm::RuntimeControlMessage::custom(Direct{s.direct_sent}));
        ++s.direct_sent;
        if (first_phase) s.direct_sent_phase1 = s.direct_sent;
      } else if (what < 8 && !managers.empty()) {
        managers[std::uniform_int_distribution<std::size_t>(0, managers.size() - 1)(r)]->control(
            pm::RuntimeControlMessage::custom(i));
      } else {
        handles[pick]->request_reload();
      }
    }
  };
  if (!leaves.empty()) {
    std::thread a(storm, 0, phase1, true, seed * 3 + 1);
    std::thread b(storm, 1, phase1, true, seed * 3 + 2);
    a.join();
    b.join();
  }
  // The stop, raced by the second phase of the storm.
  std::thread stopper([&] { root->process_handle()->request_shutdown(); });
  if (!leaves.empty()) {
    std::thread a(storm, 0, phase2, false, seed * 5 + 1);
    std::thread b(storm, 1, phase2, false, seed * 5 + 2);
    a.join();
    b.join();
  }
  stopper.join();
  io_runner.join();

  // 1. The root completed.
  ++checks;
  EXPECT_TRUE(done) << "the root did not complete";
  if (!done) return checks;

  // 2. ProcessError exactly when some service failed; failures are exactly
  //    the services that threw, each once, and the first is one of them.
  std::set<std::string> threw;
  {
    std::lock_guard lock(world->mu);
    leaves = world->leaves;  // with the dynamically added ones
  }
  for (const auto& s : leaves)
    if (s->threw) threw.insert(s->path);
  ++checks;
  EXPECT_EQ(error != nullptr, !threw.empty());
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const pm::ProcessError& e) {
      std::multiset<std::string> reported;
      for (const auto& f : e.failures()) reported.insert(f.process_name);
      checks += 2;
      EXPECT_EQ(std::set<std::string>(reported.begin(), reported.end()), threw);
      EXPECT_EQ(reported.size(), threw.size()) << "a failure was reported twice";
      ++checks;
      EXPECT_EQ(threw.count(e.process_name()), 1u) << e.process_name();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a ProcessError: " << e.what();
    }
  }
  ++checks;
  EXPECT_EQ(world->add_refused, 0);

  // 3. Every service started once and ended once; one not ended on its own
  //    was asked to stop exactly once, and one that ended by a shutdown
  //    read exactly one (a service cancelled after its grace period may
  //    not have got to read the one it was handed).
  for (const auto& s : leaves) {
    checks += 4;
    EXPECT_EQ(s->started, 1) << s->path;
    EXPECT_EQ(s->ended, 1) << s->path;
    EXPECT_LE(s->shutdowns, s->asked) << s->path;
    if (s->ended_on_own) {
      EXPECT_LE(s->asked, 1) << s->path;
    } else {
      EXPECT_EQ(s->asked, 1) << s->path << " (kind " << static_cast<int>(s->kind) << ")";
      if (s->ended_by_shutdown) {
        EXPECT_EQ(s->shutdowns, 1) << s->path;
      }
    }
    // 4. Direct messages: a gap-free prefix, in order; with no failure in
    //    the run, a service that read its shutdown saw all sent before it.
    std::lock_guard lock(s->mu);
    ++checks;
    for (std::size_t i = 0; i < s->direct_seen.size(); ++i) {
      if (s->direct_seen[i] != i) {
        ADD_FAILURE() << s->path << ": direct message " << i << " was " << s->direct_seen[i];
        break;
      }
    }
    if (!error && s->ended_by_shutdown) {
      ++checks;
      EXPECT_GE(s->direct_seen.size(), s->direct_sent_phase1) << s->path;
    }
  }

  // 5. Nothing leaked: once the tree is dropped, every runnable is gone.
  const auto weak_refs = world->weak_refs;
  root.reset();
  world.reset();
  for (const auto& w : weak_refs) {
    ++checks;
    EXPECT_TRUE(w.expired()) << "a runnable outlived its tree";
  }
  return checks;
}

TEST(stress, random_trees_with_injected_faults_keep_every_invariant) {
  std::vector<std::uint64_t> seeds;
  if (const char* one = std::getenv("PM_STRESS_SEED")) {
    seeds.push_back(std::strtoull(one, nullptr, 10));
  } else {
    const char* runs_env = std::getenv("PM_STRESS_RUNS");
    const int runs = runs_env != nullptr ? std::atoi(runs_env) : 20;
    std::random_device rd;
    const std::uint64_t base = (static_cast<std::uint64_t>(rd()) << 20) ^ static_cast<std::uint64_t>(rd());
    for (int i = 0; i < runs; ++i) seeds.push_back(base + static_cast<std::uint64_t>(i));
  }
  long checks = 0;
  for (auto seed : seeds) {
    checks += run_once(seed);
    if (HasFailure()) break;  // the failing seed is in the trace above
  }
  std::printf("stress: %zu runs, %ld invariant checks, seeds %llu..%llu\n", seeds.size(), checks,
              static_cast<unsigned long long>(seeds.front()), static_cast<unsigned long long>(seeds.back()));
}

}  // namespace
