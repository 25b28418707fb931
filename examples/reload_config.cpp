// Recipe: reload with a typed payload, validated before it is applied, and
// the sender learns who accepted, who refused and why.
//
// A reload is two custom control messages sent to a manager's handle, which
// hands each one to every child (and down nested managers):
//
//   phase 1, Prepare: each service checks the config against its own rules
//            and votes; a yes stages it, a no keeps the old config.
//   phase 2, Decision: commit when every addressed service voted yes within
//            the deadline, abort otherwise; committing services apply the
//            staged config and confirm.
//
// With Apply::each_valid there is one phase: every service that finds the
// config valid applies it at once, and the others keep theirs.
//
//   reload_config --self-test   runs a tree of 3 services through 4 reloads
//                               and checks every answer (exit 0)
#include <processmanager/processmanager.hpp>

#include <boost/asio/experimental/concurrent_channel.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace asio = pm::asio;
using namespace std::chrono_literals;

// ------------------------------------------------ the reusable piece (copy it)
namespace reload {

/// A service's answer.
struct Reply {
  std::string service;
  bool accepted = false;
  std::string reason{};  // why it refused
};

/// Gathers the replies of the named services; shared by the sender and
/// every copy of the message, so a service may answer from any thread, and
/// late, after the sender has stopped listening (the answer is dropped).
class ReplyCollector {
 public:
  explicit ReplyCollector(std::vector<std::string> expected) : expected_(std::move(expected)) {}

  void reply(Reply r) {
    std::shared_ptr<Wake> wake;
    {
      std::lock_guard lock(mu_);
      const auto named = [&r](const auto& x) { return x == r.service; };
      const auto same = [&r](const Reply& x) { return x.service == r.service; };
      if (closed_ || std::none_of(expected_.begin(), expected_.end(), named) ||
          std::any_of(replies_.begin(), replies_.end(), same)) {
        return;
      }
      replies_.push_back(std::move(r));
      if (replies_.size() < expected_.size()) return;
      closed_ = true;
      wake = wake_.lock();
    }
    if (wake) wake->try_send(boost::system::error_code{});
  }

  /// The replies once every expected service has answered, or those that
  /// came by `deadline`; none is taken after that.
  asio::awaitable<std::vector<Reply>> collect(std::chrono::steady_clock::time_point deadline) {
    const auto ex = co_await asio::this_coro::executor;
    // The frame owns the channel; the collector only points at it, so a
    // collector kept in a message in some inbox never outlives the
    // io_context with an Asio object in it.
    auto wake = std::make_shared<Wake>(ex, 1);
    bool done = false;
    {
      std::lock_guard lock(mu_);
      done = closed_ || replies_.size() == expected_.size();  // all in already, or none expected
      wake_ = wake;
    }
    if (!done) {
      asio::steady_timer timer(ex, deadline);
      timer.async_wait([weak = std::weak_ptr<Wake>(wake)](boost::system::error_code ec) {
        if (auto w = weak.lock(); w && !ec) w->try_send(boost::system::error_code{});
      });
      boost::system::error_code ec;
      co_await wake->async_receive(asio::redirect_error(asio::use_awaitable, ec));
      timer.cancel();
    }
    std::lock_guard lock(mu_);
    closed_ = true;
    co_return replies_;
  }

 private:
  using Wake = asio::experimental::concurrent_channel<void(boost::system::error_code)>;
  std::mutex mu_;
  const std::vector<std::string> expected_;
  std::vector<Reply> replies_;
  bool closed_ = false;
  std::weak_ptr<Wake> wake_;
};

enum class Apply {
  all_or_nothing,  // two phases: applied everywhere, or nowhere
  each_valid,      // one phase: applied wherever it is valid
};

/// Phase 1: check `config`; stage it (all_or_nothing) or apply it
/// (each_valid); vote.
template <class Config>
struct Prepare {
  std::uint64_t id;
  Config config;
  Apply mode;
  std::shared_ptr<ReplyCollector> votes;
};

/// Phase 2: apply (commit) or drop (abort) what `id` staged; a commit is
/// confirmed through `acks`.
template <class Config>
struct Decision {
  std::uint64_t id;
  bool commit;
  std::shared_ptr<ReplyCollector> acks;
};

/// A service's config and its rules. Keep it outside the service's run (a
/// shared_ptr the service captures) so that a restart keeps what was
/// applied, and what was staged for a decision still in the inbox.
template <class Config>
class ConfigSlot {
 public:
  /// Why `config` cannot be used here; empty when it can.
  using Check = std::function<std::string(const Config&)>;

  ConfigSlot(std::string service, Config initial, Check check)
      : service_(std::move(service)), check_(std::move(check)), current_(std::move(initial)) {}

  /// Answers a reload message and returns true; false for any other
  /// message. Called by the service itself, between two pieces of work.
  bool handle(const pm::RuntimeControlMessage& msg) {
    if (const auto* p = msg.custom_if<Prepare<Config>>()) {
      std::string why = check_(p->config);
      if (why.empty() && p->mode == Apply::each_valid) set(p->config);
      if (why.empty() && p->mode == Apply::all_or_nothing) staged_.emplace(p->id, p->config);
      p->votes->reply({service_, why.empty(), std::move(why)});
      return true;
    }
    if (const auto* d = msg.custom_if<Decision<Config>>()) {
      if (!staged_ || staged_->first != d->id) return true;  // it voted no, or a newer prepare replaced it
      if (d->commit) set(staged_->second);
      staged_.reset();
      if (d->acks) d->acks->reply({service_, true});
      return true;
    }
    return false;
  }

  /// The config in force (any thread).
  Config current() const {
    std::lock_guard lock(mu_);
    return current_;
  }
  const std::string& service() const { return service_; }

 private:
  void set(const Config& c) {
    std::lock_guard lock(mu_);
    current_ = c;
  }
  const std::string service_;
  const Check check_;
  mutable std::mutex mu_;
  Config current_;
  std::optional<std::pair<std::uint64_t, Config>> staged_;  // the service's own thread only
};

enum class Vote { accepted, refused, no_answer };

struct Result {
  std::string service;
  Vote vote = Vote::no_answer;
  bool applied = false;
  std::string reason{};
  friend bool operator==(const Result&, const Result&) = default;
};

struct Outcome {
  // all_or_nothing: every service voted yes, and the commit was sent (see
  // each `applied`); each_valid: every service applied it.
  bool committed = false;
  std::vector<Result> services;
};

/// Sends `config` to `to` (a manager's handle reaches all its services)
/// and tells what each of `services` did with it. Each phase waits for
/// every answer or `wait`, whichever is first. Call it from a coroutine on a
/// strand (every service is on one), not from a service it addresses.
template <class Config>
asio::awaitable<Outcome> send_config(std::shared_ptr<pm::ProcessControlHandler> to, std::vector<std::string> services,
                                     Config config, std::chrono::milliseconds wait,
                                     Apply mode = Apply::all_or_nothing) {
  static std::atomic<std::uint64_t> last_id{0};
  const std::uint64_t id = ++last_id;
  auto votes = std::make_shared<ReplyCollector>(services);
  to->control(pm::RuntimeControlMessage::custom(Prepare<Config>{id, std::move(config), mode, votes}));
  const auto voting_ends = std::chrono::steady_clock::now() + wait;
  const std::vector<Reply> ballots = co_await votes->collect(voting_ends);

  Outcome out;
  std::vector<std::string> yes;
  for (const auto& name : services) {
    Result r{name, Vote::no_answer, false,
             std::string("no answer within ").append(std::to_string(wait.count())).append(" ms")};
    for (const auto& b : ballots) {
      if (b.service != name) continue;
      r = Result{name, b.accepted ? Vote::accepted : Vote::refused, b.accepted && mode == Apply::each_valid, b.reason};
      if (b.accepted) yes.push_back(name);
    }
    out.services.push_back(std::move(r));
  }
  out.committed = yes.size() == services.size();
  if (mode == Apply::each_valid) co_return out;

  // Phase 2. An abort needs no answer: a service that staged drops it, one
  // that has not even voted yet (restarting) finds prepare and abort in
  // its inbox, in that order, and ends with its old config.
  if (!out.committed) {
    to->control(pm::RuntimeControlMessage::custom(Decision<Config>{id, false, nullptr}));
    for (auto& r : out.services) {
      if (r.vote == Vote::accepted) r.reason = "aborted: not every service accepted";
    }
    co_return out;
  }
  auto acks = std::make_shared<ReplyCollector>(yes);
  to->control(pm::RuntimeControlMessage::custom(Decision<Config>{id, true, acks}));
  const auto commit_ends = std::chrono::steady_clock::now() + wait;
  const std::vector<Reply> done = co_await acks->collect(commit_ends);
  for (auto& r : out.services) {
    r.applied = std::any_of(done.begin(), done.end(), [&r](const Reply& a) { return a.service == r.service; });
    // In doubt: it may have crashed in between; the commit waits in its
    // inbox and its slot applies it when it runs again.
    if (!r.applied) r.reason = "commit sent, not confirmed in time";
  }
  co_return out;
}

}  // namespace reload
// ------------------------------------------------- end of the reusable piece

namespace {

struct Config {
  int max_connections = 100;
  std::chrono::milliseconds timeout{1000};
  std::string log_level = "info";
  friend bool operator==(const Config&, const Config&) = default;
};

std::string check_http(const Config& c) {
  if (c.max_connections >= 1 && c.max_connections <= 10000) return {};
  return std::string("max_connections ").append(std::to_string(c.max_connections)).append(" is outside 1..10000");
}
std::string check_cache(const Config& c) {
  if (c.timeout <= 5s) return {};
  return std::string("timeout ").append(std::to_string(c.timeout.count())).append(" ms is above 5000 ms");
}
std::string check_logger(const Config& c) {
  for (const char* known : {"debug", "info", "warn", "error"}) {
    if (c.log_level == known) return {};
  }
  return std::string("unknown log level '").append(c.log_level).append("'");
}

struct Crash {};  // the self-test's way to make a service fail

using Slot = reload::ConfigSlot<Config>;

std::shared_ptr<pm::Runnable> service(std::shared_ptr<Slot> slot) {
  return pm::make_runnable(slot->service(), [slot](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    for (;;) {
      const auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
      if (slot->handle(msg)) continue;  // a reload: answered
      if (msg.custom_if<Crash>() != nullptr) throw std::runtime_error("crashed on request");
    }
  });
}

const char* to_string(reload::Vote v) {
  return v == reload::Vote::accepted ? "accepted" : v == reload::Vote::refused ? "refused" : "no answer";
}

/// Prints the outcome as a table; true when it is exactly `expected`.
bool report(const char* title, const reload::Outcome& got, bool committed,
            const std::vector<reload::Result>& expected) {
  std::printf("%s: %s\n  %-8s %-10s %-7s %s\n", title, got.committed ? "committed" : "not applied everywhere",
              "service", "vote", "applied", "reason");
  for (const auto& r : got.services) {
    std::printf("  %-8s %-10s %-7s %s\n", r.service.c_str(), to_string(r.vote), r.applied ? "yes" : "no",
                r.reason.empty() ? "-" : r.reason.c_str());
  }
  const bool ok = got.committed == committed && got.services == expected;
  if (!ok) std::printf("self-test: FAILED: %s is not as expected\n", title);
  return ok;
}

using reload::Vote;

/// The four reloads, in order; true when every answer and every config in
/// force is as expected. Runs on a strand of the tree's io_context.
asio::awaitable<bool> self_test(std::shared_ptr<pm::ProcessManager> root, std::vector<std::shared_ptr<Slot>> slots,
                                std::shared_ptr<pm::Runnable> logger,
                                std::shared_ptr<reload::ReplyCollector> restarted) {
  if (!co_await root->wait_ready(10s)) {
    std::printf("self-test: FAILED: the tree did not become ready\n");
    co_return false;
  }
  const auto to = root->process_handle();
  const std::vector<std::string> names{"http", "cache", "logger"};
  const auto in_force = [&slots](const Config& http, const Config& cache, const Config& logger) {
    return slots[0]->current() == http && slots[1]->current() == cache && slots[2]->current() == logger;
  };
  const Config v1{500, 2000ms, "debug"};
  const Config bad{0, 9000ms, "warn"};
  const Config v2{800, 1000ms, "error"};
  const std::string http_no = "max_connections 0 is outside 1..10000";
  const std::string cache_no = "timeout 9000 ms is above 5000 ms";
  const std::string aborted = "aborted: not every service accepted";

  // 1. Valid everywhere: committed, applied by all three.
  // (GCC 12: the call's by-value arguments are temporaries; keep them out
  // of the co_await's full-expression.)
  auto sending = reload::send_config(to, names, v1, 5000ms);
  auto out = co_await std::move(sending);
  if (!report("reload 1 (all or nothing, valid)", out, true,
              {{"http", Vote::accepted, true}, {"cache", Vote::accepted, true}, {"logger", Vote::accepted, true}}) ||
      !in_force(v1, v1, v1)) {
    co_return false;
  }
  // 2. Invalid for two: aborted, so the logger, which accepted, keeps v1 too.
  sending = reload::send_config(to, names, bad, 5000ms);
  out = co_await std::move(sending);
  if (!report("reload 2 (all or nothing, invalid for two)", out, false,
              {{"http", Vote::refused, false, http_no},
               {"cache", Vote::refused, false, cache_no},
               {"logger", Vote::accepted, false, aborted}}) ||
      !in_force(v1, v1, v1)) {
    co_return false;
  }
  // 3. The same in one phase: the logger applies it, the others refuse.
  sending = reload::send_config(to, names, bad, 5000ms, reload::Apply::each_valid);
  out = co_await std::move(sending);
  if (!report("reload 3 (each valid, invalid for two)", out, false,
              {{"http", Vote::refused, false, http_no},
               {"cache", Vote::refused, false, cache_no},
               {"logger", Vote::accepted, true}}) ||
      !in_force(v1, v1, bad)) {
    co_return false;
  }
  // 4. The logger crashes and waits out a long restart backoff: it cannot
  // answer, so nobody applies v2. The restart event, not a sleep, says when.
  auto h = logger->process_handle();
  h->control(pm::RuntimeControlMessage::custom(Crash{}));
  const auto restart_by = std::chrono::steady_clock::now() + 10s;
  const auto restarts = co_await restarted->collect(restart_by);
  const pm::ChildStatus status = root->status();
  const pm::ChildStatus* state = status.find("logger");
  if (restarts.size() != 1 || state == nullptr || state->state != pm::ChildState::restarting) {
    std::printf("self-test: FAILED: the logger is not waiting for its restart\n");
    co_return false;
  }
  sending = reload::send_config(to, names, v2, 300ms);
  out = co_await std::move(sending);
  if (!report("reload 4 (all or nothing, logger restarting)", out, false,
              {{"http", Vote::accepted, false, aborted},
               {"cache", Vote::accepted, false, aborted},
               {"logger", Vote::no_answer, false, "no answer within 300 ms"}}) ||
      !in_force(v1, v1, bad)) {
    co_return false;
  }
  co_return true;
}

int run_self_test() {
  auto make_slot = [](const char* name, Slot::Check check) {
    return std::make_shared<Slot>(name, Config{}, std::move(check));
  };
  const std::vector<std::shared_ptr<Slot>> slots{make_slot("http", check_http), make_slot("cache", check_cache),
                                                 make_slot("logger", check_logger)};
  auto logger = service(slots[2]);
  auto restarted = std::make_shared<reload::ReplyCollector>(std::vector<std::string>{"app/logger"});
  auto root = pm::ProcessManagerBuilder()
                  .name("app")
                  .on_event([restarted](const pm::Event& e) {
                    if (e.kind == pm::EventKind::restart) restarted->reply({e.path, true});
                  })
                  .pre_insert(service(slots[0]))
                  .pre_insert(service(slots[1]))
                  .pre_insert(logger, {.restart = {{.backoff = {.initial = 60s, .max = 60s}}}})
                  .build();

  asio::io_context io(2);
  auto tree = asio::co_spawn(io, root->process_start(), asio::use_future);
  auto checks = asio::co_spawn(asio::make_strand(io), self_test(root, slots, logger, restarted), asio::use_future);
  std::thread second([&io] { io.run(); });
  // The checks end first; then the tree is stopped, which must not wait
  // out the logger's 60 s backoff.
  std::chrono::steady_clock::duration stop_took{};
  std::thread stopper([&] {
    checks.wait();
    const auto asked = std::chrono::steady_clock::now();
    root->shutdown_blocking();
    stop_took = std::chrono::steady_clock::now() - asked;
  });
  io.run();
  second.join();
  stopper.join();
  bool passed = false;
  try {
    passed = checks.get();
    tree.get();
    if (stop_took > 5s) {
      std::printf("self-test: FAILED: the stop waited for the restart backoff\n");
      passed = false;
    }
  } catch (const std::exception& e) {
    std::printf("self-test: FAILED: %s\n", e.what());
    passed = false;
  }
  std::printf("self-test: reload_config %s, exit %d\n", passed ? "passed" : "failed", passed ? 0 : 1);
  return passed ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc > 1 && std::string(argv[1]) == "--self-test") return run_self_test();
  std::fprintf(stderr, "usage: reload_config --self-test\n");
  return 2;
}
