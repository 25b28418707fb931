// Load scenarios: the library beside bare Asio doing the same work, in the
// same run. Prints one JSON object per line on stdout and nothing else;
// progress goes to stderr.
//
//   pm_load [--n 1000,10000,100000] [--threads 1,2] [--scenario NAME|all] [--repeat R] [--prefault]
//           [--sharded]
//
// With --sharded, a run on several threads gives each thread an io_context
// of its own, made one set of shards (pm::shard_across): the library's
// managers deal their children across them, the baseline deals its
// coroutines the same way, and those rows carry "sharded":true. Churn and
// restart are not sharded.
//
// With --repeat R each figure is the median of R runs, pm and baseline
// taking turns. Timed figures carry "ms" (wall) and "cpu_ms" (the
// process's CPU time over the same interval); memory carries
// "bytes_per_service", restart "per_s". A scenario whose outcome is not
// the expected one (a failure that did not fail, say) prints no figure and
// makes the program exit 1.
//
// Each baseline does the same work by hand: services that await a one-hour
// timer as a deferred operation, messages set on the service's executor
// before its wait is cancelled, one more service that throws for failure.
// Nothing polls: each phase starts from the event that ends the one before.
//
// Each (scenario, impl, n, threads) runs in a forked child process, so that
// one measurement's heap and RSS never colour the next.
#include <processmanager/processmanager.hpp>

#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace asio = pm::asio;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

long rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return -1;
}

/// A moment, by the wall (steady) clock and by the process's CPU clock:
/// every timed figure reports both, so that a harness thread burning CPU
/// beside the measured ones would show.
struct Stamp {
  clock_type::time_point wall{};
  double cpu_ms = 0;
  static Stamp now() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return Stamp{clock_type::now(), static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6};
  }
};

/// The JSON fields of a timed figure: wall and CPU milliseconds.
std::string timed(const Stamp& from, const Stamp& to) {
  std::ostringstream out;
  out << "\"ms\":" << std::chrono::duration<double, std::milli>(to.wall - from.wall).count()
      << ",\"cpu_ms\":" << (to.cpu_ms - from.cpu_ms);
  return out.str();
}

std::string bytes_field(long before, std::size_t n) {
  // append, not "literal" + to_string(): g++ -O3 warns falsely (-Wrestrict) on that.
  return std::string("\"bytes_per_service\":")
      .append(std::to_string(static_cast<long>(static_cast<double>(rss_bytes() - before) / static_cast<double>(n))));
}

/// Marks the moment the n-th of n events happened, then runs `then` (if
/// set) on the thread of that event. The scenarios move from phase to
/// phase this way: no thread polls the io_context being measured.
struct Countdown {
  explicit Countdown(std::size_t n_) : n(n_) {}
  void hit() {
    if (count.fetch_add(1) + 1 != n) return;
    at = Stamp::now();
    if (then) then();
  }
  std::size_t n;
  std::atomic<std::size_t> count{0};
  Stamp at;  // written by the last hit, read by `then` or after the io threads are joined
  std::function<void()> then;
};

void run_io(asio::io_context& io, std::size_t threads) {
  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < threads; ++i) pool.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : pool) t.join();
}

/// An io_context whose handlers can be shut down before it is destroyed:
/// the shards of a set refer to each other.
struct Shard : asio::io_context {
  using asio::execution_context::shutdown;
  using asio::io_context::io_context;
};

/// Where a figure runs: one io_context shared by every thread, or, with
/// --sharded, one per thread made one set of shards (pm::shard_across),
/// as pm::run(root, {.threads = n, .sharded = true}) runs a tree.
class Pool {
 public:
  Pool(std::size_t threads, bool sharded) : threads_(threads) {
    const std::size_t count = sharded && threads > 1 ? threads : 1;
    for (std::size_t i = 0; i < count; ++i)
      io_.push_back(std::make_unique<Shard>(count > 1 ? 1 : static_cast<int>(threads)));
    if (count > 1) {
      std::vector<asio::io_context*> all;
      for (auto& c : io_) all.push_back(c.get());
      pm::shard_across(all);
    }
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() {
    for (auto& c : io_) c->shutdown();
  }

  /// The io_context the tree (or the scenario's driver) runs on.
  asio::io_context& main() { return *io_.front(); }

  /// For the bare side: the i-th coroutine's executor. Sharded, the shards
  /// in turn, as the library deals children; on one io_context run by
  /// several threads, a strand each, as the library gives each child.
  asio::any_io_executor bare_executor(std::size_t i) {
    if (io_.size() > 1) return io_[i % io_.size()]->get_executor();
    if (threads_ > 1) return asio::make_strand(main());
    return main().get_executor();
  }

  /// How many io_contexts the bare side's services are dealt across, when
  /// they run on them directly (no strands); 0 when each has a strand.
  std::size_t plain_contexts() const { return io_.size() > 1 || threads_ == 1 ? io_.size() : 0; }

  /// Runs until the main io_context runs out of work, and every shard with it.
  void run() {
    if (io_.size() == 1) {
      run_io(main(), threads_);
      return;
    }
    // The other shards wait for work until the main one is done (a tree
    // holds work on every shard while it runs), then run out themselves.
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> hold;
    std::vector<std::thread> pool;
    for (std::size_t i = 1; i < io_.size(); ++i) {
      hold.emplace_back(io_[i]->get_executor());
      pool.emplace_back([&c = *io_[i]] { c.run(); });
    }
    main().run();
    hold.clear();
    for (auto& t : pool) t.join();
  }

 private:
  std::size_t threads_;
  std::vector<std::unique_ptr<Shard>> io_;
};

// ------------------------------------------------------------------ the pm side

/// The service of the scenarios: a ticker, then tick on a one-hour timer.
class IdleService final : public pm::Runnable {
 public:
  IdleService(Countdown* in_loop, Countdown* reloaded) : in_loop_(in_loop), reloaded_(reloaded) {}
  asio::awaitable<void> process_start() override {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    in_loop_->hit();
    for (;;) {
      timer.expires_after(1h);
      auto wait = timer.async_wait(asio::deferred);
      auto op = co_await ticker.tick(wait);
      if (op.is_next()) continue;
      if (op.control().is_shutdown()) co_return;
      if (op.control().is_reload() && reloaded_ != nullptr) reloaded_->hit();
    }
  }
  std::string process_name() const override { return "idle"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

 private:
  Countdown* in_loop_;
  Countdown* reloaded_;
  pm::RuntimeGuard guard_;
};

struct PmTree {
  PmTree(std::size_t n, Countdown* in_loop, Countdown* reloaded) {
    pm::ProcessManagerBuilder b;
    b.name("load");
    for (std::size_t i = 0; i < n; ++i) b.pre_insert(std::make_shared<IdleService>(in_loop, reloaded));
    manager = b.build();
  }
  std::shared_ptr<pm::ProcessManager> manager;
};

/// startup: until the n-th service's first tick. shutdown: a stop of the
/// whole tree until process_start() returns, without an error. failure:
/// one more service throws on a message; until process_start() returns
/// with that error, every other service stopped. reload: until every
/// service has taken the reload. An outcome that is not the expected one
/// fails the figure (an empty result).
std::string pm_scenario(const std::string& scenario, std::size_t n, std::size_t threads, bool sharded) {
  Pool where(threads, sharded);
  asio::io_context& io = where.main();
  Countdown in_loop(n);
  Countdown reloaded(n);
  const long rss0 = rss_bytes();
  PmTree tree(n, &in_loop, &reloaded);
  std::shared_ptr<pm::Runnable> failing;
  auto fail_handle = std::shared_ptr<pm::ProcessControlHandler>();
  if (scenario == "failure") {
    failing = pm::make_runnable("failing", [](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
      for (;;) {
        auto msg = co_await ctx.next_control();
        if (msg.is_custom()) throw std::runtime_error("injected");
        if (msg.is_shutdown()) co_return;
      }
    });
    fail_handle = failing->process_handle();
    tree.manager->insert(failing);
  }
  Stamp t0;
  Stamp t1;
  std::exception_ptr error;
  std::string result;
  auto handle = tree.manager->process_handle();
  // Posted rather than run inside the n-th service's tick.
  in_loop.then = [&] {
    asio::post(io, [&] {
      if (scenario == "startup") {
        result = timed(t0, in_loop.at);
        handle->request_shutdown();
      } else if (scenario == "memory") {
        result = bytes_field(rss0, n);
        handle->request_shutdown();
      } else if (scenario == "shutdown") {
        t0 = Stamp::now();
        asio::co_spawn(io, handle->shutdown(), asio::detached);
      } else if (scenario == "failure") {
        t0 = Stamp::now();
        fail_handle->control(pm::RuntimeControlMessage::custom(1));
      } else if (scenario == "reload") {
        t0 = Stamp::now();
        asio::co_spawn(io, handle->reload(), asio::detached);
      }
    });
  };
  reloaded.then = [&] {
    result = timed(t0, reloaded.at);
    asio::post(io, [&] { handle->request_shutdown(); });
  };
  t0 = Stamp::now();
  asio::co_spawn(asio::make_strand(io), tree.manager->process_start(), [&](const std::exception_ptr& e) {
    t1 = Stamp::now();
    error = e;
  });
  where.run();
  if (scenario == "failure") {
    if (!error) return {};
    try {
      std::rethrow_exception(error);
    } catch (const pm::ProcessError&) {
      return timed(t0, t1);
    } catch (...) {
      return {};
    }
  }
  if (error) return {};
  if (scenario == "shutdown") return timed(t0, t1);
  return result;
}

/// Adds n children that end at once to a running manager; until the n-th
/// has ended.
std::string pm_churn(std::size_t n, std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  auto keeper = std::make_shared<pm::IdleProcess>();
  auto manager = pm::ProcessManagerBuilder().name("churn").pre_insert(keeper).build();
  Countdown ended(n);
  std::vector<std::shared_ptr<pm::Runnable>> children;
  children.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    children.push_back(pm::make_runnable("quick", [&ended](pm::RuntimeContext&) -> asio::awaitable<void> {
      ended.hit();
      co_return;
    }));
  }
  Stamp t0;
  std::string result;
  ended.then = [&] {
    result = timed(t0, ended.at);
    asio::post(io, [&] { manager->process_handle()->request_shutdown(); });
  };
  asio::co_spawn(asio::make_strand(io), manager->process_start(), asio::detached);
  // The manager is running once its keeper has its ticker; waited for on a
  // timer, not by spinning, and before the clock starts.
  auto started = std::make_shared<asio::steady_timer>(io);
  std::function<void()> wait_running = [&] {
    if (!manager->is_running()) {
      started->expires_after(100us);
      started->async_wait([&](boost::system::error_code) { wait_running(); });
      return;
    }
    t0 = Stamp::now();
    for (auto& c : children) manager->add(c);
  };
  asio::post(io, wait_running);
  run_io(io, threads);
  return result;
}

/// The restart scenario with the library's log lines off ("restart", the
/// baseline logs nothing either), or through the default sink at its
/// default level ("restart-logged": a WARN line per restart, written to
/// stderr, which this child process points at /dev/null).
std::string pm_restart(std::size_t threads, bool logged) {
  if (logged) {
    if (std::FILE* null = std::fopen("/dev/null", "w")) dup2(fileno(null), STDERR_FILENO);
    pm::set_log_level(pm::LogLevel::info);
  } else {
    pm::set_log_level(std::nullopt);
  }
  asio::io_context io(static_cast<int>(threads));
  auto runs = std::make_shared<std::atomic<std::size_t>>(0);
  auto flaky = pm::make_runnable("flaky", [runs](pm::RuntimeContext&) -> asio::awaitable<void> {
    runs->fetch_add(1);
    throw std::runtime_error("again");
    co_return;
  });
  pm::RestartOptions options;
  options.backoff = {.initial = 0ns, .factor = 1.0, .max = 0ns, .jitter = false};
  options.max_restarts = 1u << 30;
  options.window = 1s;
  auto sup = std::make_shared<pm::RestartSupervisor>(flaky, options);
  auto manager = pm::ProcessManagerBuilder().name("restart").pre_insert(sup).build();
  const auto t0 = clock_type::now();
  asio::co_spawn(asio::make_strand(io), manager->process_start(), asio::detached);
  double per_s = 0;
  asio::steady_timer window(io, 500ms);
  window.async_wait([&](boost::system::error_code) {
    const auto elapsed = clock_type::now() - t0;
    per_s = static_cast<double>(sup->restarts()) / std::chrono::duration<double>(elapsed).count();
    manager->process_handle()->request_shutdown();
  });
  run_io(io, threads);
  return std::string("\"per_s\":").append(std::to_string(static_cast<long>(per_s)));
}

// ------------------------------------------------------------- the bare Asio side

/// A message to a bare service, set on its executor before its timer wait
/// is cancelled: what the library's inbox and wake-up do, by hand.
enum class Message { none, reload, stop, fail };

struct BareWaiter {
  asio::steady_timer* timer = nullptr;
  asio::any_io_executor ex;
  Message message = Message::none;  // on ex
};

void send(BareWaiter& w, Message m) {
  asio::post(w.ex, [&w, m] {
    w.message = m;
    w.timer->cancel();
  });
}

/// The bare service: the library's IdleService loop without the library. A
/// one-hour timer awaited as a deferred operation, as the tick awaits it;
/// a reload is counted and the wait goes on; a stop ends it; `fail` throws.
asio::awaitable<void> bare_idle(Countdown* in_loop, Countdown* reloaded, Countdown* ended, BareWaiter* slot) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  slot->timer = &timer;
  in_loop->hit();
  for (;;) {
    timer.expires_after(1h);
    co_await timer.async_wait(asio::as_tuple(asio::deferred));  // aborted by a message, or the hour is up
    const Message m = std::exchange(slot->message, Message::none);
    if (m == Message::reload) {
      reloaded->hit();
    } else if (m == Message::fail) {
      throw std::runtime_error("injected");
    } else if (m == Message::stop) {
      break;
    }
  }
  ended->hit();
}

/// The baselines, each doing the pm scenario's work by hand. shutdown: a
/// stop sent to every service, until the last has ended. failure: one more
/// service throws on a message; its error is kept, every other service is
/// stopped, until the last has ended with the error in hand. reload: a
/// reload sent to every service, until the last has taken it.
std::string bare_scenario(const std::string& scenario, std::size_t n, std::size_t threads, bool sharded) {
  Pool where(threads, sharded);
  asio::io_context& io = where.main();
  const bool failure = scenario == "failure";
  Countdown in_loop(failure ? n + 1 : n);
  Countdown reloaded(n);
  Countdown ended(n);
  // Read before the baseline's own bookkeeping (a waiter per coroutine) is
  // allocated, as the library's (a child record per service) is counted.
  const long rss0 = rss_bytes();
  std::vector<BareWaiter> waiters(failure ? n + 1 : n);
  std::string result;
  Stamp t0;
  std::exception_ptr error;
  // As the library fans a message out: every service on a plain io_context
  // executor is woken by one handler per io_context; one on a strand by a
  // post of its own.
  const std::size_t contexts = where.plain_contexts();
  auto send_all = [&](Message m) {
    if (contexts == 0) {
      for (std::size_t i = 0; i < n; ++i) send(waiters[i], m);
      return;
    }
    for (std::size_t k = 0; k < contexts && k < n; ++k) {
      asio::post(waiters[k].ex, [&waiters, n, m, k, contexts] {
        for (std::size_t i = k; i < n; i += contexts) {
          waiters[i].message = m;
          waiters[i].timer->cancel();
        }
      });
    }
  };
  in_loop.then = [&] {
    asio::post(io, [&] {
      if (scenario == "startup") {
        result = timed(t0, in_loop.at);
        send_all(Message::stop);
      } else if (scenario == "memory") {
        result = bytes_field(rss0, n);
        send_all(Message::stop);
      } else if (scenario == "shutdown") {
        t0 = Stamp::now();
        send_all(Message::stop);
      } else if (failure) {
        t0 = Stamp::now();
        send(waiters[n], Message::fail);
      } else if (scenario == "reload") {
        t0 = Stamp::now();
        send_all(Message::reload);
      }
    });
  };
  reloaded.then = [&] {
    result = timed(t0, reloaded.at);
    asio::post(io, [&] { send_all(Message::stop); });
  };
  ended.then = [&] {
    if (scenario == "shutdown" || failure) result = timed(t0, ended.at);
  };
  t0 = Stamp::now();
  for (std::size_t i = 0; i < waiters.size(); ++i) {
    waiters[i].ex = where.bare_executor(i);
    // Created where it runs, as the library calls process_start() on the
    // child's executor: the frame comes from that thread's malloc arena.
    asio::post(waiters[i].ex, [&, i] {
      if (failure && i == n) {
        asio::co_spawn(waiters[i].ex, bare_idle(&in_loop, &reloaded, &ended, &waiters[i]),
                       [&](const std::exception_ptr& e) {
                         error = e;
                         send_all(Message::stop);
                       });
      } else {
        asio::co_spawn(waiters[i].ex, bare_idle(&in_loop, &reloaded, &ended, &waiters[i]), asio::detached);
      }
    });
  }
  where.run();
  if (failure && !error) return {};
  return result;
}

std::string bare_churn(std::size_t n, std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  Countdown ended(n);
  const Stamp t0 = Stamp::now();
  for (std::size_t i = 0; i < n; ++i) {
    auto ex = threads > 1 ? asio::any_io_executor(asio::make_strand(io)) : asio::any_io_executor(io.get_executor());
    asio::co_spawn(
        ex,
        [](Countdown* e) -> asio::awaitable<void> {
          e->hit();
          co_return;
        }(&ended),
        asio::detached);
  }
  run_io(io, threads);
  return timed(t0, ended.at);
}

std::string bare_restart(std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  std::size_t count = 0;
  double per_s = 0;
  asio::co_spawn(
      io,
      [](std::size_t* c, double* rate) -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        const auto t0 = clock_type::now();
        while (clock_type::now() - t0 < 500ms) {
          auto fail = []() -> asio::awaitable<void> {
            throw std::runtime_error("again");
            co_return;
          };
          auto [e] = co_await asio::co_spawn(ex, fail(), asio::as_tuple(asio::use_awaitable));
          if (e) ++*c;
        }
        *rate = static_cast<double>(*c) / std::chrono::duration<double>(clock_type::now() - t0).count();
      }(&count, &per_s),
      asio::detached);
  run_io(io, threads);
  return std::string("\"per_s\":").append(std::to_string(static_cast<long>(per_s)));
}

/// Heap bytes touched up front per service under --prefault: more than
/// either side allocates per service, so that neither takes a first-touch
/// page fault while it is timed.
constexpr std::size_t prefault_per_service = 4096;

/// Touches `bytes` of the main heap and frees them without giving the
/// pages back: later allocations on this thread find them mapped. First
/// touches cost about 20 us a page on this kind of virtual machine and
/// otherwise make most of a 100k start-up (docs/performance.md).
void prefault_heap(std::size_t bytes) {
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // pieces stay in the heap, below mmap's threshold
  constexpr std::size_t piece = 64 << 10;
  std::vector<void*> pieces;
  pieces.reserve(bytes / piece + 1);
  for (std::size_t done = 0; done < bytes; done += piece) {
    void* p = std::malloc(piece);
    if (p == nullptr) break;
    std::memset(p, 1, piece);
    pieces.push_back(p);
  }
  for (void* p : pieces) std::free(p);
}

std::vector<std::size_t> parse_list(const std::string& text) {
  std::vector<std::size_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoul(item));
  return out;
}

/// Runs one measurement in a child process; returns its JSON line.
std::string isolated(const std::function<std::string()>& measure) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const std::string body = measure();
    const ssize_t ignored = write(fds[1], body.data(), body.size());
    (void)ignored;
    _exit(0);
  }
  close(fds[1]);
  std::string body;
  char buf[256];
  ssize_t got = 0;
  while ((got = read(fds[0], buf, sizeof buf)) > 0) body.append(buf, static_cast<std::size_t>(got));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? body : std::string();
}

/// One measurement: its JSON key ("ms", "bytes_per_service", "per_s"), its
/// value, and the field as printed.
struct Sample {
  std::string key;
  double value = 0;
  std::string field;
};

std::optional<Sample> parse_sample(const std::string& body) {
  const auto colon = body.find(':');
  if (body.empty() || colon == std::string::npos) return std::nullopt;
  return Sample{body.substr(0, colon), std::strtod(body.c_str() + colon + 1, nullptr), body};
}

std::string median_of(std::vector<Sample> samples) {
  std::sort(samples.begin(), samples.end(), [](const Sample& a, const Sample& b) { return a.value < b.value; });
  return samples[(samples.size() - 1) / 2].field;
}

const char* impl_name(bool is_pm) { return is_pm ? "pm" : "asio-baseline"; }

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> ns{1000, 10000, 100000};
  std::vector<std::size_t> thread_counts{1, 2};
  std::string which = "all";
  std::size_t repeat = 1;
  bool prefault = false;
  bool sharded = false;
  for (int i = 1; i < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--prefault" || arg == "--sharded") {
      (arg == "--prefault" ? prefault : sharded) = true;
      --i;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s: %s needs a value\n", argv[0], arg.c_str());
      return 2;
    }
    if (arg == "--n")
      ns = parse_list(argv[i + 1]);
    else if (arg == "--threads")
      thread_counts = parse_list(argv[i + 1]);
    else if (arg == "--scenario")
      which = argv[i + 1];
    else if (arg == "--repeat")
      repeat = std::max<std::size_t>(1, std::stoul(argv[i + 1]));
    else {
      std::fprintf(stderr,
                   "usage: %s [--n 1000,10000,100000] [--threads 1,2] [--scenario NAME|all] [--repeat R] [--prefault] "
                   "[--sharded]\n",
                   argv[0]);
      return 2;
    }
  }
  const std::vector<std::string> scenarios{"startup", "shutdown", "failure",        "reload",
                                           "memory",  "restart",  "restart-logged", "churn"};
  for (const auto& scenario : scenarios) {
    if (which != "all" && which != scenario) continue;
    const bool restart = scenario == "restart" || scenario == "restart-logged";
    // Sharding spreads a tree's services over threads: churn and restart
    // have one service, or one manager's strand, to measure.
    if (sharded && (restart || scenario == "churn")) continue;
    for (const std::size_t threads : thread_counts) {
      const std::vector<std::size_t> sizes = restart ? std::vector<std::size_t>{1} : ns;
      for (const std::size_t n : sizes) {
        // The two impls take turns, so that a spell of machine noise hits
        // both; each prints the median of its repetitions.
        std::vector<Sample> samples[2];
        for (std::size_t rep = 0; rep < repeat; ++rep) {
          for (int k = 0; k < 2; ++k) {
            const bool is_pm = k == 0;
            std::fprintf(stderr, "pm_load: %s %s n=%zu threads=%zu (%zu/%zu)\n", scenario.c_str(), impl_name(is_pm), n,
                         threads, rep + 1, repeat);
            const std::string body = isolated([&]() -> std::string {
              if (prefault) prefault_heap(n * prefault_per_service);
              if (scenario == "churn") return is_pm ? pm_churn(n, threads) : bare_churn(n, threads);
              if (restart) return is_pm ? pm_restart(threads, scenario == "restart-logged") : bare_restart(threads);
              return is_pm ? pm_scenario(scenario, n, threads, sharded) : bare_scenario(scenario, n, threads, sharded);
            });
            const auto sample = parse_sample(body);
            if (!sample) {
              std::fprintf(stderr, "pm_load: %s %s n=%zu threads=%zu failed\n", scenario.c_str(), impl_name(is_pm), n,
                           threads);
              return 1;
            }
            samples[k].push_back(*sample);
          }
        }
        for (int k = 0; k < 2; ++k) {
          std::printf("{\"scenario\":\"%s\",\"impl\":\"%s\",\"n\":%zu,\"threads\":%zu,%s%s%s}\n", scenario.c_str(),
                      impl_name(k == 0), n, threads, prefault ? "\"prefault\":true," : "",
                      sharded && threads > 1 ? "\"sharded\":true," : "", median_of(samples[k]).c_str());
        }
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
