// Adversarial tests of issue 14's promises: checks of the user's own,
// routes of the user's own, /metrics (read with Debian's real parser) and
// structured logs, attacked as a hostile user or environment would.
// A test named DISABLED_ shows a promise that does not hold (yet).
#include <processmanager/health.hpp>
#include <processmanager/metrics.hpp>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "health_support.hpp"
#include "http_client.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::CheckKind;
using pm::ChildOptions;
using pm::HealthCheck;
using pm::HealthCheckResult;
using pm::HealthOptions;
using pm::ProcessManagerBuilder;
using pm::test::Behaviour;
using pm::test::body_of;
using pm::test::get;
using pm::test::Journal;
using pm::test::Probe;
using pm::test::Running;
using pm::test::send;
using pm::test::status_of;
using pm::test::health::Probed;
using pm::test::health::wait_until;

// ---------------------------------------------------------------------------
// Helpers

/// Runs `script` with Debian's /usr/bin/python3 over `inputs` (each written
/// to a file of its own, passed in order); what it printed, or "FAILED ..."
std::string run_python(const std::string& script, const std::vector<std::string>& inputs) {
  static std::atomic<int> serial{0};
  const auto dir = std::filesystem::temp_directory_path();
  const std::string stem =
      std::string("pm_adv14_").append(std::to_string(::getpid())) + std::string("_").append(std::to_string(serial++));
  std::vector<std::filesystem::path> files;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    files.push_back(dir / (stem + std::string("_").append(std::to_string(i)) + ".in"));
    std::ofstream(files.back(), std::ios::binary) << inputs[i];
  }
  const auto script_file = dir / (stem + ".py");
  const auto output = dir / (stem + ".out");
  { std::ofstream(script_file) << script; }
  std::string command = "/usr/bin/python3 " + script_file.string();
  for (const auto& f : files) command += " " + f.string();
  command += " > " + output.string() + " 2>&1";
  const int rc = std::system(command.c_str());
  std::ifstream in(output);
  std::string printed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& f : files) std::filesystem::remove(f);
  std::filesystem::remove(script_file);
  std::filesystem::remove(output);
  return rc == 0 ? printed : std::string("FAILED (").append(std::to_string(rc)) + ") " + printed;
}

/// Each document through Debian's Prometheus parser: one line per document,
/// "ok", or why not (the parser refused it, a family in two groups, a
/// series twice, a sample outside any family's group).
std::vector<std::string> prometheus_check(const std::vector<std::string>& docs) {
  const std::string script =
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "for path in sys.argv[1:]:\n"
      "    try:\n"
      "        text = open(path, 'rb').read().decode('utf-8')\n"
      "        errs = []\n"
      "        seen = set()\n"
      "        series = set()\n"
      "        for f in text_string_to_metric_families(text):\n"
      "            if f.name in seen: errs.append('family twice: ' + ascii(f.name))\n"
      "            seen.add(f.name)\n"
      "            if f.type == 'untyped' and f.documentation == '':\n"
      "                errs.append('a sample outside its family: ' + ascii(f.name))\n"
      "            for s in f.samples:\n"
      "                key = (s.name, tuple(sorted(s.labels.items())))\n"
      "                if key in series: errs.append('series twice: ' + ascii(key))\n"
      "                series.add(key)\n"
      "        print('ok' if not errs else 'BAD ' + '; '.join(errs[:4]))\n"
      "    except Exception as e:\n"
      "        print('FAILED ' + type(e).__name__ + ': ' + ascii(str(e))[:300])\n";
  const std::string out = run_python(script, docs);
  std::vector<std::string> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  if (lines.size() != docs.size()) return {"python printed: " + out};
  return lines;
}

/// The values of `family{...}` samples in a document, by their whole key.
std::multimap<std::string, double> samples_of(const std::string& doc, const std::string& family) {
  std::multimap<std::string, double> out;
  std::istringstream in(doc);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(family + "{", 0) != 0 && line.rfind(family + " ", 0) != 0) continue;
    const auto space = line.rfind(' ');
    out.emplace(line.substr(0, space), std::stod(line.substr(space + 1)));
  }
  return out;
}

std::string metrics_of(std::uint16_t port) {
  const std::string response = get(port, "/metrics");
  EXPECT_EQ(status_of(response), 200) << response.substr(0, 300);
  return body_of(response);
}

pm::RestartOptions quick_restart(pm::RestartPolicy policy = pm::RestartPolicy::transient) {
  pm::RestartOptions o;
  o.policy = policy;
  o.max_restarts = 1000;
  o.backoff = {.initial = 1ms, .factor = 1.0, .max = 1ms, .jitter = false};
  return o;
}

/// A server on a tree of its own; the tree is ready once it listens.
struct Served {
  std::shared_ptr<pm::ProcessManager> manager;
  Probed health;
  Running run;
  std::uint16_t port;
  explicit Served(HealthOptions options,
                  std::shared_ptr<pm::ProcessManager> m = ProcessManagerBuilder().name("app").build())
      : manager(std::move(m)), health(manager, std::move(options)), run(manager), port(health.port()) {}
  ~Served() {
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
};

/// A coroutine that polls `released` every 2 ms; with `deaf`, it ignores
/// cancellation meanwhile.
asio::awaitable<void> hang_until(std::shared_ptr<std::atomic<bool>> released, bool deaf) {
  if (deaf) {
    co_await asio::this_coro::reset_cancellation_state(
        [](asio::cancellation_type) { return asio::cancellation_type::none; });
  }
  asio::steady_timer tick(co_await asio::this_coro::executor);
  while (!*released) {
    tick.expires_after(2ms);
    auto [ec] = co_await tick.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
  }
}

struct Hang {
  std::shared_ptr<std::atomic<bool>> released = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<std::atomic<int>> runs = std::make_shared<std::atomic<int>>(0);
  std::shared_ptr<std::atomic<int>> ended = std::make_shared<std::atomic<int>>(0);
  HealthCheck check(std::string name, CheckKind kind, std::chrono::nanoseconds timeout, bool deaf) const {
    HealthCheck c;
    c.name = std::move(name);
    c.kind = kind;
    c.timeout = timeout;
    c.run = [released = released, runs = runs, ended = ended, deaf]() -> asio::awaitable<HealthCheckResult> {
      return [](auto released, auto runs, auto ended, bool deaf) -> asio::awaitable<HealthCheckResult> {
        ++*runs;
        co_await hang_until(released, deaf);
        ++*ended;
        co_return HealthCheckResult::healthy();
      }(released, runs, ended, deaf);
    };
    return c;
  }
  ~Hang() { *released = true; }
};

// ---------------------------------------------------------------------------
// Checks of the user's own

TEST(adversary14_checks, a_tiny_timeout_answers_at_once_and_a_huge_one_does_not_overflow) {
  Hang huge;
  HealthOptions options;
  options.checks.push_back(pm::make_check(
      "tiny", CheckKind::readiness, [] { return HealthCheckResult::healthy(); }, 1ns));
  options.checks.push_back(huge.check("huge", CheckKind::liveness, std::chrono::nanoseconds::max(), false));
  Served s(options);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  // 1 ns: passed (it answered before anyone looked) or timed out, at once.
  for (int i = 0; i < 20; ++i) {
    const std::string tiny = get(s.port, "/readyz");
    EXPECT_TRUE(status_of(tiny) == 200 ||
                (status_of(tiny) == 503 && body_of(tiny).find("timed out") != std::string::npos))
        << tiny;
  }
  // nanoseconds::max(): the deadline saturates, so the probe waits for the
  // check's own answer (not "timed out" at once from an overflowed deadline).
  pm::test::Client waiting(s.port);
  waiting.write("GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  ASSERT_TRUE(wait_until([&] { return huge.runs->load() == 1; }));
  *huge.released = true;
  const std::string answer = waiting.read_all();
  EXPECT_EQ(status_of(answer), 200) << answer;
}

TEST(adversary14_checks, a_check_that_throws_anything_fails_with_a_reason_and_the_server_goes_on) {
  HealthOptions options;
  options.checks.push_back(pm::make_check("int", CheckKind::readiness, []() -> HealthCheckResult { throw 42; }));
  HealthCheck early;
  early.name = "early";
  early.run = []() -> asio::awaitable<HealthCheckResult> { throw std::runtime_error("before the coroutine"); };
  options.checks.push_back(early);
  HealthCheck odd;
  odd.name = "odd";
  odd.run = []() -> asio::awaitable<HealthCheckResult> {
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    throw "a C string";
  };
  options.checks.push_back(odd);
  Served s(options);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  for (int i = 0; i < 3; ++i) {
    const std::string r = get(s.port, "/readyz?verbose");
    EXPECT_EQ(status_of(r), 503) << r;
    const std::string body = body_of(r);
    EXPECT_NE(body.find("[-]int failed: threw"), std::string::npos) << body;
    EXPECT_NE(body.find("[-]early failed: threw: before the coroutine"), std::string::npos) << body;
    EXPECT_NE(body.find("[-]odd failed: threw"), std::string::npos) << body;
  }
  EXPECT_EQ(status_of(get(s.port, "/livez")), 200);
}

/// A check that asks its own server's /readyz, which waits on this very
/// check's run: a cycle that only the timeout breaks.
asio::awaitable<HealthCheckResult> ask_own_readyz(std::shared_ptr<std::atomic<std::uint16_t>> port) {
  const auto ex = co_await asio::this_coro::executor;
  asio::ip::tcp::socket socket(ex);
  co_await socket.async_connect({asio::ip::make_address("127.0.0.1"), port->load()}, asio::use_awaitable);
  const std::string request = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  co_await asio::async_write(socket, asio::buffer(request), asio::use_awaitable);
  std::string answer;
  auto [ec, n] = co_await asio::async_read(socket, asio::dynamic_buffer(answer), asio::as_tuple(asio::use_awaitable));
  (void)n;
  if (answer.rfind("HTTP/1.1 200", 0) == 0) co_return HealthCheckResult::healthy();
  co_return HealthCheckResult::unhealthy("own readyz: " + answer.substr(0, answer.find('\r')));
}

TEST(adversary14_checks, a_check_that_probes_its_own_server_times_out_instead_of_deadlocking) {
  auto port = std::make_shared<std::atomic<std::uint16_t>>(0);
  HealthOptions options;
  HealthCheck self;
  self.name = "self";
  self.timeout = 300ms;
  self.run = [port] { return ask_own_readyz(port); };
  options.checks.push_back(self);
  Served s(options);
  ASSERT_NE(s.port, 0);
  port->store(s.port);
  ASSERT_TRUE(s.run.wait_ready());
  const auto began = std::chrono::steady_clock::now();
  const std::string r = get(s.port, "/readyz");
  EXPECT_LT(std::chrono::steady_clock::now() - began, 10s);
  EXPECT_EQ(status_of(r), 503) << r;
  EXPECT_EQ(status_of(get(s.port, "/livez")), 200) << "the server is not wedged";
  EXPECT_EQ(status_of(get(s.port, "/readyz")), 503) << "and the next probe answers too";
}

TEST(adversary14_checks, checks_that_call_back_into_the_tree_do_not_deadlock) {
  auto manager = ProcessManagerBuilder().name("app").build();
  std::weak_ptr<pm::ProcessManager> weak = manager;
  auto j = std::make_shared<Journal>();
  for (int i = 0; i < 50; ++i) manager->insert(std::make_shared<Probe>(std::string("p").append(std::to_string(i)), j));
  HealthOptions options;
  options.checks.push_back(pm::make_check("snapshot", CheckKind::readiness, [weak] {
    const auto m = weak.lock();
    if (!m) return HealthCheckResult::unhealthy("gone");
    const auto st = m->status();
    const auto h = m->health();
    return st.children.size() == 51 && h.services == 51 && m->is_running()
               ? HealthCheckResult::healthy()
               : HealthCheckResult::unhealthy(std::to_string(st.children.size()) + " children");
  }));
  HealthCheck waits;
  waits.name = "waits";
  waits.kind = CheckKind::liveness;
  waits.run = [weak]() -> asio::awaitable<HealthCheckResult> {
    return [](std::weak_ptr<pm::ProcessManager> w) -> asio::awaitable<HealthCheckResult> {
      const auto m = w.lock();
      if (!m) co_return HealthCheckResult::unhealthy("gone");
      const bool ready = co_await m->wait_ready(5s);
      co_return ready ? HealthCheckResult::healthy() : HealthCheckResult::unhealthy("not ready");
    }(weak);
  };
  options.checks.push_back(waits);
  Served s(options, manager);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  EXPECT_EQ(body_of(get(s.port, "/readyz?verbose")), "[+]tree ok\n[+]snapshot ok\nreadyz check passed\n");
  EXPECT_EQ(body_of(get(s.port, "/livez?verbose")), "[+]tree ok\n[+]waits ok\nlivez check passed\n");
}

TEST(adversary14_checks, a_check_that_stops_the_tree_lets_it_stop_cleanly) {
  auto manager = ProcessManagerBuilder().name("app").build();
  std::weak_ptr<pm::ProcessManager> weak = manager;
  HealthOptions options;
  options.checks.push_back(pm::make_check("quitter", CheckKind::readiness, [weak] {
    if (const auto m = weak.lock()) m->process_handle()->request_shutdown();
    return HealthCheckResult::healthy();
  }));
  Probed health(manager, options);
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  const std::string r = get(port, "/readyz");
  EXPECT_TRUE(r.empty() || status_of(r) == 200 || status_of(r) == 503) << r;
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(manager->health().state, pm::ChildState::stopped);
}

/// A check that calls wait_ready_blocking() on its tree, from a server on
/// shard `shard` (meaningful in sharded mode, PM_TEST_SHARDS=2).
void blocking_call_from_a_check(std::size_t shard) {
  auto manager = ProcessManagerBuilder().name("app").shutdown_grace_period(2s).abandon_timeout(2s).build();
  std::weak_ptr<pm::ProcessManager> weak = manager;
  HealthOptions options;
  std::promise<std::uint16_t> listening;
  options.on_listening = [&](std::uint16_t p) { listening.set_value(p); };
  options.checks.push_back(pm::make_check("blocks", CheckKind::readiness, [weak] {
    if (const auto m = weak.lock()) m->wait_ready_blocking(1s);
    return HealthCheckResult::healthy();
  }));
  auto server = std::make_shared<pm::HealthServer>(manager, options);
  manager->insert(server, ChildOptions{.shard = shard});
  manager->insert(std::make_shared<pm::test::IdleService>("idle"), ChildOptions{.shard = 1 - shard});
  Running run(manager);
  auto f = listening.get_future();
  ASSERT_EQ(f.wait_for(pm::test::hang_guard), std::future_status::ready);
  const auto port = f.get();
  ASSERT_TRUE(run.wait_ready());
  const std::string r = get(port, "/readyz");
  EXPECT_EQ(status_of(r), 503) << r;
  EXPECT_NE(body_of(r).find("threw: ProcessManager 'app': wait_ready_blocking()"), std::string::npos) << r;
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(adversary14_checks, a_check_calling_a_blocking_call_of_the_tree_is_refused) { blocking_call_from_a_check(0); }

TEST(adversary14_checks, a_check_calling_a_blocking_call_of_the_tree_from_another_shard_is_refused) {
  // Found (sharded mode only, PM_TEST_SHARDS=2): refuse_on_own_executor()
  // compares with the run's base executor only. On another shard of the
  // same run the blocking call is let through and blocks that shard's
  // thread (with shutdown_blocking(): until the grace period and the
  // abandon timeout pass, since the server on it cannot stop).
  blocking_call_from_a_check(1);
}

TEST(adversary14_checks, many_threads_probing_while_a_deaf_check_hangs_share_one_run_and_get_answers) {
  Hang h;
  HealthOptions options;
  options.max_connections = 256;
  options.checks.push_back(h.check("slow", CheckKind::readiness, 200ms, true));
  Served s(options);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  std::atomic<int> good{0};
  std::atomic<int> bad{0};
  std::mutex mu;
  std::string first_bad;
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        const std::string r = get(s.port, i % 2 == 0 ? "/readyz" : "/readyz?verbose");
        const std::string body = body_of(r);
        if (status_of(r) == 503 && body.find("timed out after 200 ms") != std::string::npos) {
          ++good;
        } else {
          ++bad;
          std::lock_guard lock(mu);
          if (first_bad.empty()) first_bad = r;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 160);
  EXPECT_EQ(bad.load(), 0) << first_bad;
  EXPECT_EQ(h.runs->load(), 1) << "one run, shared by every probe while it hangs";
  EXPECT_EQ(status_of(get(s.port, "/livez")), 200);
  *h.released = true;
  ASSERT_TRUE(wait_until([&] { return status_of(get(s.port, "/readyz")) == 200; }));
}

// ---------------------------------------------------------------------------
// Routes of the user's own

TEST(adversary14_routes, a_route_that_never_returns_does_not_hold_up_the_tree_stop) {
  // Found: the server's stop waits for every session to end, and a session
  // in a route handler is neither cancelled nor abandoned: the tree's stop
  // waits for the handler (here until the grace period, 1 h).
  auto released = std::make_shared<std::atomic<bool>>(false);
  auto entered = std::make_shared<std::atomic<int>>(0);
  HealthOptions options;
  options.routes.push_back({"/hang", [released, entered](pm::HealthRequest) -> asio::awaitable<pm::HealthResponse> {
                              return [](auto released, auto entered) -> asio::awaitable<pm::HealthResponse> {
                                ++*entered;
                                co_await hang_until(released, false);
                                co_return pm::HealthResponse{200, "text/plain", "released\n"};
                              }(released, entered);
                            }});
  auto manager = ProcessManagerBuilder().name("app").shutdown_grace_period(1h).build();
  Probed health(manager, options);
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  pm::test::Client c(port);
  c.write("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(wait_until([&] { return entered->load() == 1; }));
  run.stop();
  const auto until = std::chrono::steady_clock::now() + 10s;
  bool stopped = false;
  while (!(stopped = manager->health().state == pm::ChildState::stopped) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_TRUE(stopped) << "the tree's stop waits on a route handler";
  *released = true;
  EXPECT_EQ(run.finish(), nullptr);
}

asio::awaitable<pm::HealthResponse> answer_with(unsigned status, std::string body) {
  co_return pm::HealthResponse{status, "text/plain", std::move(body)};
}

TEST(adversary14_routes, a_huge_body_is_sent_whole_and_head_gives_its_length_only) {
  constexpr std::size_t size = std::size_t{48} << 20;
  HealthOptions options;
  options.routes.push_back({"/big", [](pm::HealthRequest) { return answer_with(200, std::string(size, 'x')); }});
  Served s(options);
  ASSERT_NE(s.port, 0);
  const std::string r = get(s.port, "/big");
  EXPECT_EQ(status_of(r), 200);
  EXPECT_EQ(body_of(r).size(), size);
  const std::string head = get(s.port, "/big", "HEAD");
  EXPECT_EQ(status_of(head), 200);
  EXPECT_EQ(body_of(head), "");
  EXPECT_NE(head.find(std::string("Content-Length: ").append(std::to_string(size))), std::string::npos) << head;
}

TEST(adversary14_routes, statuses_that_cannot_carry_a_body_or_are_not_final_get_an_answer) {
  // Found: HealthResponse allows 100 to 599. A 204 or 304 with a body makes
  // Beast's prepare_payload() throw: the client's connection is closed
  // unanswered. A 1xx is sent as if final: the client gets an interim
  // answer and then the connection ends.
  HealthOptions options;
  options.routes.push_back({"/nocontent", [](pm::HealthRequest) { return answer_with(204, "but a body"); }});
  options.routes.push_back({"/notmodified", [](pm::HealthRequest) { return answer_with(304, "but a body"); }});
  options.routes.push_back({"/continue", [](pm::HealthRequest) { return answer_with(100, ""); }});
  options.routes.push_back({"/switching", [](pm::HealthRequest) { return answer_with(101, ""); }});
  Served s(options);
  ASSERT_NE(s.port, 0);
  for (const char* path : {"/nocontent", "/notmodified", "/continue", "/switching"}) {
    const std::string r = get(s.port, path);
    EXPECT_GE(status_of(r), 200) << path << ": " << r;
  }
  EXPECT_EQ(status_of(get(s.port, "/livez")), 200);
}

TEST(adversary14_routes, a_content_type_with_a_line_break_cannot_inject_a_header) {
  // Found: HealthResponse::content_type goes into the header as it is: a
  // CR LF in it adds headers of the route's choosing (response splitting).
  HealthOptions options;
  options.routes.push_back({"/inject", [](pm::HealthRequest) -> asio::awaitable<pm::HealthResponse> {
                              co_return pm::HealthResponse{200, "text/plain\r\nX-Injected: yes", "body"};
                            }});
  Served s(options);
  ASSERT_NE(s.port, 0);
  const std::string r = get(s.port, "/inject");
  EXPECT_EQ(r.find("\r\nX-Injected: yes\r\n"), std::string::npos) << r;
  EXPECT_NE(status_of(r), -1) << "answered: " << r;
}

TEST(adversary14_routes, odd_methods_reach_a_route_and_are_refused_on_the_servers_paths) {
  HealthOptions options;
  options.routes.push_back({"/echo", [](pm::HealthRequest req) -> asio::awaitable<pm::HealthResponse> {
                              co_return pm::HealthResponse{200, "text/plain", req.method};
                            }});
  options.routes.push_back({"/weird", [](pm::HealthRequest) -> asio::awaitable<pm::HealthResponse> {
                              throw 7;
                              co_return pm::HealthResponse{};
                            }});
  Served s(options);
  ASSERT_NE(s.port, 0);
  for (const char* m : {"OPTIONS", "DELETE", "PATCH", "FOO"}) {
    EXPECT_EQ(body_of(get(s.port, "/echo", m)), m);
    for (const char* own : {"/metrics", "/status", "/readyz", "/livez"}) {
      const std::string r = get(s.port, own, m);
      EXPECT_EQ(status_of(r), 405) << m << " " << own << ": " << r;
      EXPECT_NE(r.find("Allow: GET, HEAD"), std::string::npos) << r;
    }
  }
  const std::string w = get(s.port, "/weird");
  EXPECT_EQ(status_of(w), 500);
  EXPECT_EQ(body_of(w), "route /weird failed: an exception not derived from std::exception\n");
  EXPECT_EQ(body_of(get(s.port, "/weird", "HEAD")), "");
}

// ---------------------------------------------------------------------------
// /metrics and MetricsWriter

TEST(adversary14_metrics, a_hook_that_calls_back_into_the_tree_is_served) {
  auto manager = ProcessManagerBuilder().name("app").build();
  std::weak_ptr<pm::ProcessManager> weak = manager;
  HealthOptions options;
  options.metrics = [weak](pm::MetricsWriter& w) {
    const auto m = weak.lock();
    if (!m) return;
    w.family("hook_children", "gauge", "children seen by the hook");
    w.sample("hook_children", static_cast<double>(m->status().children.size()));
    w.sample("hook_children", {{"via", "health"}}, static_cast<double>(m->health().services));
    w.sample("hook_children", {{"via", "ready"}}, m->is_ready() ? 1 : 0);
  };
  Served s(options, manager);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  const std::string doc = metrics_of(s.port);
  EXPECT_NE(doc.find("hook_children 1\n"), std::string::npos) << doc;
  EXPECT_NE(doc.find("hook_children{via=\"ready\"} 1\n"), std::string::npos) << doc;
  EXPECT_EQ(prometheus_check({doc}), std::vector<std::string>{"ok"}) << doc;
}

TEST(adversary14_metrics, a_hook_cannot_add_samples_to_a_library_family_through_a_shorter_family_name) {
  // Found: sample() accepts any name that begins with the family's name and
  // '_' (not only the type's suffixes). A family "processmanager_child"
  // then takes samples "processmanager_child_ready{path=...}": a second
  // group of a library family, with series that duplicate the library's.
  auto manager = ProcessManagerBuilder().name("app").build();
  HealthOptions options;
  options.metrics = [](pm::MetricsWriter& w) {
    w.family("processmanager_child", "gauge", "looks innocent");
    w.sample("processmanager_child_ready", {{"path", "app/health"}}, 0);
    w.family("processmanager", "gauge", "also innocent");
    w.sample("processmanager_ready", 0);
  };
  Served s(options, manager);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  const std::string doc = metrics_of(s.port);
  EXPECT_EQ(prometheus_check({doc}), std::vector<std::string>{"ok"}) << doc;
  EXPECT_EQ(samples_of(doc, "processmanager_ready").size(), 1u) << doc;
}

TEST(adversary14_metrics, the_writer_refuses_a_sample_that_parsers_read_as_another_family) {
  // Found: family("a", "gauge") then sample("a_b") is accepted, though no
  // gauge sample has a suffix: parsers read "a_b" as a family of its own;
  // family("a_b") is then accepted too, a family in two groups. Likewise
  // a counter's "_bucket" sample.
  std::string out;
  pm::MetricsWriter w(out);
  int refused = 0;
  try {
    w.family("a", "gauge", "h");
    w.sample("a_b", 1);
  } catch (const std::invalid_argument&) {
    ++refused;
  }
  try {
    w.family("a_b", "gauge", "h");
    w.sample("a_b", 2);
  } catch (const std::invalid_argument&) {
    ++refused;
  }
  try {
    w.family("c", "counter", "h");
    w.sample("c_bucket", {{"le", "1"}}, 1);
  } catch (const std::invalid_argument&) {
    ++refused;
  }
  EXPECT_EQ(prometheus_check({out}), std::vector<std::string>{"ok"}) << out;
  EXPECT_GE(refused, 2) << out;
}

TEST(adversary14_metrics, raw_text_cannot_reopen_a_library_family_with_other_whitespace) {
  // Found: raw() recognises a TYPE line only as "# TYPE <name> ..." with
  // single spaces; parsers split on any whitespace, so "#\tTYPE" or
  // "# TYPE  x" begins the family anew without raw() noticing.
  auto manager = ProcessManagerBuilder().name("app").build();
  HealthOptions options;
  options.metrics = [](pm::MetricsWriter& w) {
    w.raw("#\tHELP processmanager_ready again\n#\tTYPE processmanager_ready gauge\nprocessmanager_ready 0\n");
  };
  Served s(options, manager);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  const std::string doc = metrics_of(s.port);
  EXPECT_EQ(prometheus_check({doc}), std::vector<std::string>{"ok"}) << doc;
}

TEST(adversary14_metrics, special_values_round_trip_through_the_parser) {
  std::string out;
  pm::MetricsWriter w(out);
  w.family("v", "gauge", "values");
  const std::vector<std::pair<std::string, double>> values{
      {"nan", std::numeric_limits<double>::quiet_NaN()},
      {"pinf", std::numeric_limits<double>::infinity()},
      {"ninf", -std::numeric_limits<double>::infinity()},
      {"nzero", -0.0},
      {"denorm", std::numeric_limits<double>::denorm_min()},
      {"big", 1e308},
      {"max", DBL_MAX},
      {"lowest", std::numeric_limits<double>::lowest()},
      {"tiny", DBL_MIN},
      {"third", 1.0 / 3.0},
      {"int", 9007199254740993.0},
  };
  for (const auto& [k, v] : values) w.sample("v", {{"k", k}}, v);
  const std::string script =
      "import sys, math, struct\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "for f in text_string_to_metric_families(open(sys.argv[1], encoding='utf-8').read()):\n"
      "    for s in f.samples:\n"
      "        print(s.labels['k'], struct.pack('>d', s.value).hex())\n";
  const std::string printed = run_python(script, {out});
  ASSERT_EQ(printed.rfind("FAILED", 0), std::string::npos) << printed << out;
  for (const auto& [k, v] : values) {
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof bits);
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(bits));
    if (k == "nan") {
      EXPECT_NE(printed.find("nan 7ff8"), std::string::npos) << printed;
    } else {
      EXPECT_NE(printed.find(k + " " + hex + "\n"), std::string::npos) << k << "\n" << printed << out;
    }
  }
}

TEST(adversary14_metrics, label_values_and_help_that_are_not_utf8_still_make_a_valid_document) {
  // Found: the format is UTF-8; escape_label_value() and the HELP text pass
  // bytes that are not UTF-8 as they are (the JSON log makes them U+FFFD),
  // so one child's name, or one label value of the hook's, makes the whole
  // /metrics document unreadable.
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  manager->insert(std::make_shared<Probe>(std::string("bad\xff\xfe name\xc3"), j));
  HealthOptions options;
  options.metrics = [](pm::MetricsWriter& w) {
    w.family("mine", "gauge", std::string("help \xed\xa0\x80 surrogate"));
    w.sample("mine", {{"v", std::string("\xc0\xaf overlong")}}, 1);
  };
  Served s(options, manager);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  const std::string doc = metrics_of(s.port);
  EXPECT_EQ(prometheus_check({doc}), std::vector<std::string>{"ok"});
}

TEST(adversary14_metrics, control_characters_and_escapes_in_names_round_trip) {
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  const std::string odd = "t\ta\rb\\\"}{,=\n\\n end ";
  manager->insert(std::make_shared<Probe>(odd, j));
  HealthOptions options;
  options.metrics = [](pm::MetricsWriter& w) {
    w.family("mine", "gauge", "a \\ help \n text \" here");
    w.sample("mine", {{"v", "\\\"\n\\n\t,}"}}, 1);
  };
  Served s(options, manager);
  ASSERT_NE(s.port, 0);
  ASSERT_TRUE(s.run.wait_ready());
  const std::string doc = metrics_of(s.port);
  EXPECT_EQ(prometheus_check({doc}), std::vector<std::string>{"ok"}) << doc;
  const std::string script =
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "for f in text_string_to_metric_families(open(sys.argv[1], 'rb').read().decode('utf-8')):\n"
      "    for s in f.samples:\n"
      "        if s.name == 'processmanager_child_ready' or s.name == 'mine': print(ascii(s.labels))\n";
  const std::string printed = run_python(script, {doc});
  EXPECT_NE(printed.find(R"({'path': 'app/t\ta\rb\\"}{,=\n\\n end '})"), std::string::npos) << printed;
  EXPECT_NE(printed.find(R"({'v': '\\"\n\\n\t,}'})"), std::string::npos) << printed;
}

TEST(adversary14_metrics, a_hook_that_throws_anything_midway_is_left_out_whole) {
  auto manager = ProcessManagerBuilder().name("app").build();
  std::atomic<int> calls{0};
  HealthOptions options;
  options.metrics = [&calls](pm::MetricsWriter& w) {
    ++calls;
    w.raw("# HELP theirs t\n# TYPE theirs gauge\ntheirs 1\n");
    w.family("mine", "gauge", "h");
    w.sample("mine", {{"half", "written"}}, 1);
    if (calls % 2 == 1) throw 3.14;
    throw std::logic_error("even");
  };
  Served s(options, manager);
  ASSERT_NE(s.port, 0);
  for (int i = 0; i < 4; ++i) {
    const std::string doc = metrics_of(s.port);
    EXPECT_EQ(doc.find("theirs"), std::string::npos) << doc;
    EXPECT_EQ(doc.find("mine"), std::string::npos) << doc;
    EXPECT_NE(doc.find("processmanager_ready"), std::string::npos);
    EXPECT_EQ(prometheus_check({doc}), std::vector<std::string>{"ok"}) << doc;
  }
}

TEST(adversary14_metrics, two_children_with_one_name_make_no_duplicate_series_and_no_phantom_restarts) {
  // The manager tells them apart ("twin", "twin#2"); a third child named
  // "twin#2" itself must not collide with that either.
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  manager->insert(std::make_shared<Probe>("twin", j, Behaviour{.fail_first_runs = 1}),
                  ChildOptions{.restart = quick_restart()});
  manager->insert(std::make_shared<Probe>("twin", j));
  manager->insert(std::make_shared<Probe>("twin#2", j, Behaviour{.fail_first_runs = 1}),
                  ChildOptions{.restart = quick_restart()});
  Probed health(manager);
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(j->wait_for("start twin", 3));
  ASSERT_TRUE(j->wait_for("start twin#2", 2));
  ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
  const std::string first = metrics_of(port);
  const std::string second = metrics_of(port);
  const std::string third = metrics_of(port);
  EXPECT_EQ(prometheus_check({first}), std::vector<std::string>{"ok"}) << first;
  const std::string key = R"(processmanager_child_restarts_total{path="app/twin"})";
  const auto a = samples_of(first, "processmanager_child_restarts_total");
  const auto c = samples_of(third, "processmanager_child_restarts_total");
  std::vector<double> va, vc;
  for (auto [it, end] = a.equal_range(key); it != end; ++it) va.push_back(it->second);
  for (auto [it, end] = c.equal_range(key); it != end; ++it) vc.push_back(it->second);
  EXPECT_EQ(va, vc) << "no restart happened between the scrapes\n" << first << "\n" << third;
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(adversary14_metrics, supervised_restarts_survive_an_unseen_restart_of_the_manager_above) {
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  auto inner = ProcessManagerBuilder().name("inner").build();
  auto bomb = std::make_shared<Probe>("bomb", j);
  inner->insert(bomb);
  inner->insert(std::make_shared<pm::RestartSupervisor>(
      std::make_shared<Probe>("sv", j, Behaviour{.fail_first_runs = 2}), quick_restart()));
  inner->insert(std::make_shared<Probe>("w", j, Behaviour{.fail_first_runs = 1}),
                ChildOptions{.restart = quick_restart()});
  Probed health(manager);
  manager->insert(inner, ChildOptions{.restart = quick_restart(pm::RestartPolicy::permanent)});
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(j->wait_for("start sv", 3));
  ASSERT_TRUE(j->wait_for("start w", 2));
  ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
  // No scrape before the restart of inner: what it counted must not depend
  // on the server having seen it.
  send(bomb, 2);
  ASSERT_TRUE(j->wait_for("start bomb", 2));
  ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
  const std::string doc = metrics_of(port);
  const auto restarts = samples_of(doc, "processmanager_child_restarts_total");
  EXPECT_EQ(restarts.find(R"(processmanager_child_restarts_total{path="app/inner/sv"})")->second, 2) << doc;
  EXPECT_EQ(restarts.find(R"(processmanager_child_restarts_total{path="app/inner/w"})")->second, 1) << doc;
  EXPECT_EQ(restarts.find(R"(processmanager_child_restarts_total{path="app/inner"})")->second, 1) << doc;
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(adversary14_metrics, a_supervised_service_that_throws_counts_its_failed_runs) {
  // GAP: restarts_total includes a RestartSupervisor's restarts, but
  // failures_total ("runs that failed (threw ...)") stays 0 for a
  // supervised service whose runs threw: the supervisor swallows them.
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  auto probe = std::make_shared<Probe>("sv", j, Behaviour{.fail_first_runs = 2});
  manager->insert(std::make_shared<pm::RestartSupervisor>(probe, quick_restart()));
  Probed health(manager);
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(j->wait_for("start sv", 3));
  ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
  const std::string doc = metrics_of(port);
  const auto restarts = samples_of(doc, "processmanager_child_restarts_total");
  const auto failures = samples_of(doc, "processmanager_child_failures_total");
  EXPECT_EQ(restarts.find(R"(processmanager_child_restarts_total{path="app/sv"})")->second, 2) << doc;
  EXPECT_EQ(failures.find(R"(processmanager_child_failures_total{path="app/sv"})")->second, 2) << doc;
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

/// The counters of a sequence of documents never go backwards, per series.
void expect_monotonic(const std::vector<std::string>& docs) {
  std::map<std::string, std::pair<double, std::size_t>> last;
  for (std::size_t i = 0; i < docs.size(); ++i) {
    for (const char* family : {"processmanager_child_restarts_total", "processmanager_child_failures_total"}) {
      for (const auto& [key, value] : samples_of(docs[i], family)) {
        auto it = last.find(key);
        if (it != last.end()) {
          EXPECT_GE(value, it->second.first) << key << " went from " << it->second.first << " (document "
                                             << it->second.second << ") to " << value << " (document " << i << ")";
        }
        last[key] = {value, i};
      }
    }
  }
}

TEST(adversary14_metrics, documents_during_tree_churn_parse_and_counters_never_go_backwards) {
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  // A nested manager that is restarted whenever its bomb fails, with a
  // supervised service and a restarting one inside.
  auto inner = ProcessManagerBuilder().name("inner").build();
  auto bomb = std::make_shared<Probe>("bomb", j);
  auto sv = std::make_shared<Probe>("sv", j, Behaviour{.fail_first_runs = 3});
  inner->insert(bomb);
  inner->insert(std::make_shared<pm::RestartSupervisor>(sv, quick_restart()));
  inner->insert(std::make_shared<Probe>("w", j, Behaviour{.fail_first_runs = 2}),
                ChildOptions{.restart = quick_restart()});
  HealthOptions options;
  options.max_connections = 128;
  Probed health(manager, options);
  manager->insert(inner, ChildOptions{.restart = quick_restart(pm::RestartPolicy::permanent)});
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());

  std::atomic<bool> churning{true};
  std::vector<std::string> docs;
  std::thread scraper([&] {
    while (churning) docs.push_back(metrics_of(port));
    docs.push_back(metrics_of(port));
  });
  std::atomic<int> load_bad{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 3; ++t) {
    load.emplace_back([&] {
      while (churning) {
        if (status_of(get(port, "/metrics")) != 200) ++load_bad;
      }
    });
  }
  // Children added at runtime, failed (restarted), ended (removed, auto
  // cleanup) and added again under the same names; the bomb restarts inner.
  for (int round = 0; round < 12; ++round) {
    std::vector<std::shared_ptr<Probe>> added;
    for (int i = 0; i < 4; ++i) {
      const std::string name = std::string("c").append(std::to_string(i));
      auto p = std::make_shared<Probe>(name, j, Behaviour{.fail_first_runs = i % 3});
      manager->add(p, ChildOptions{.restart = quick_restart()});
      added.push_back(p);
    }
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(wait_until([&] { return added[i]->runs.load() > i % 3; }));
    }
    // Let each be seen running, then fail one and end the others.
    ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
    send(added[0], 2);
    ASSERT_TRUE(wait_until([&] { return added[0]->runs.load() >= 2; }));
    for (auto& p : added) {
      ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
      send(p, 3);
    }
    ASSERT_TRUE(wait_until([&] { return manager->health().services <= 5; })) << "the ended children leave the books";
    if (round % 3 == 0) {
      const std::size_t starts = j->count("start bomb");
      ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
      send(bomb, 2);
      ASSERT_TRUE(j->wait_for("start bomb", starts + 1));
    }
  }
  ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
  churning = false;
  scraper.join();
  for (auto& t : load) t.join();
  EXPECT_EQ(load_bad.load(), 0);
  ASSERT_GE(docs.size(), 2u);
  const auto verdicts = prometheus_check(docs);
  for (std::size_t i = 0; i < verdicts.size(); ++i) {
    EXPECT_EQ(verdicts[i], "ok") << "document " << i << " of " << docs.size() << ":\n"
                                 << docs[std::min(i, docs.size() - 1)];
  }
  expect_monotonic(docs);
  // What the last document says of the paths that counted.
  const auto restarts = samples_of(docs.back(), "processmanager_child_restarts_total");
  const auto at = [&](const std::string& path) {
    const auto it = restarts.find("processmanager_child_restarts_total{path=\"" + path + "\"}");
    return it == restarts.end() ? -1.0 : it->second;
  };
  EXPECT_GE(at("app/inner"), 4) << "inner was restarted by each bomb";
  EXPECT_GE(at("app/inner/sv"), 3) << "the supervisor's restarts of sv";
  EXPECT_GE(at("app/inner/w"), 2);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(adversary14_metrics, the_server_stops_while_many_big_documents_are_in_flight) {
  auto manager = ProcessManagerBuilder().name("app").build();
  for (int i = 0; i < 3000; ++i)
    manager->insert(std::make_shared<pm::test::IdleService>(std::string("s").append(std::to_string(i))));
  HealthOptions options;
  options.max_connections = 128;
  options.metrics = [](pm::MetricsWriter& w) {
    w.family("mine", "gauge", "h");
    w.sample("mine", 1);
  };
  Probed health(manager, options);
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  std::atomic<bool> going{true};
  std::atomic<int> whole{0};
  std::atomic<int> broken{0};
  std::atomic<int> cut{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 6; ++t) {
    clients.emplace_back([&, t] {
      while (going) {
        const std::string r = get(port, t % 2 == 0 ? "/metrics" : "/status");
        if (r.empty() || r == "refused") continue;  // closed by the stop
        const auto length_at = r.find("Content-Length: ");
        if (status_of(r) == 200 && length_at != std::string::npos &&
            std::stoul(r.substr(length_at + 16)) == body_of(r).size()) {
          ++whole;
        } else if (status_of(r) != 200) {
          ++whole;  // an answer, if not the document
        } else if (length_at != std::string::npos && std::stoul(r.substr(length_at + 16)) > body_of(r).size()) {
          ++cut;  // a 200 cut short by the stop: the client can tell (Content-Length)
        } else {
          ++broken;
        }
      }
    });
  }
  ASSERT_TRUE(wait_until([&] { return whole.load() >= 6; }));
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  going = false;
  for (auto& c : clients) c.join();
  EXPECT_EQ(broken.load(), 0) << "a 200 that is not framed as it says";
  std::printf("answers: %d whole, %d cut short by the stop (detectably)\n", whole.load(), cut.load());
}

// ---------------------------------------------------------------------------
// Lifetimes

TEST(adversary14_lifetime, the_io_context_destroyed_first_with_checks_routes_and_documents_in_flight) {
  auto manager = ProcessManagerBuilder().name("app").build();
  for (int i = 0; i < 2000; ++i)
    manager->insert(std::make_shared<pm::test::IdleService>(std::string("s").append(std::to_string(i))));
  Hang deaf;
  auto released = std::make_shared<std::atomic<bool>>(false);
  auto entered = std::make_shared<std::atomic<int>>(0);
  HealthOptions options;
  options.checks.push_back(deaf.check("deaf", CheckKind::liveness, 1h, true));
  options.routes.push_back({"/hang", [released, entered](pm::HealthRequest) -> asio::awaitable<pm::HealthResponse> {
                              return [](auto released, auto entered) -> asio::awaitable<pm::HealthResponse> {
                                ++*entered;
                                co_await hang_until(released, true);
                                co_return pm::HealthResponse{};
                              }(released, entered);
                            }});
  std::promise<std::uint16_t> listening;
  options.on_listening = [&](std::uint16_t p) { listening.set_value(p); };
  auto server = std::make_shared<pm::HealthServer>(manager, options);
  manager->insert(server);
  auto io = std::make_unique<asio::io_context>(2);
  asio::co_spawn(asio::make_strand(*io), manager->process_start(), asio::detached);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) threads.emplace_back([&io] { io->run(); });
  auto f = listening.get_future();
  ASSERT_EQ(f.wait_for(pm::test::hang_guard), std::future_status::ready);
  const auto port = f.get();
  pm::test::Client live(port), hang(port), doc1(port), doc2(port);
  live.write("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
  hang.write("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
  doc1.write("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  doc2.write("GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(wait_until([&] { return deaf.runs->load() == 1 && entered->load() == 1; }));
  io->stop();
  for (auto& t : threads) t.join();
  io.reset();  // first: every frame still suspended in it goes with it
  // Every connection was closed with it (a hang guard of 5 s, not a pace).
  for (auto* c : {&live, &hang, &doc1, &doc2}) {
    pollfd p{c->fd(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 5000), 1) << "a connection outlived its io_context";
  }
  server.reset();
  manager.reset();
  *released = true;
  SUCCEED();
}

// ---------------------------------------------------------------------------
// Structured logs

/// Sends fd 2 into a pipe that a thread reads, until finish().
class StderrCapture {
 public:
  /// With `hold`, the pipe is not read until release(): writes beyond its
  /// capacity block (or, non-blocking, come back short).
  explicit StderrCapture(bool nonblocking = false, bool hold = false) {
    int p[2];
    EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
    saved_ = ::dup(2);
    read_fd_ = p[0];
    ::dup2(p[1], 2);
    ::close(p[1]);
    if (nonblocking) ::fcntl(2, F_SETFL, ::fcntl(2, F_GETFL) | O_NONBLOCK);
    if (!hold) release();
  }
  void release() {
    if (reader_.joinable()) return;
    reader_ = std::thread([this] {
      char buf[4096];
      for (;;) {
        const ssize_t n = ::read(read_fd_, buf, sizeof buf);
        if (n <= 0) return;
        text_.append(buf, static_cast<std::size_t>(n));
      }
    });
  }
  std::string finish() {
    ::dup2(saved_, 2);
    ::close(saved_);
    release();
    reader_.join();
    ::close(read_fd_);
    return text_;
  }

 private:
  int saved_ = -1;
  int read_fd_ = -1;
  std::thread reader_;
  std::string text_;
};

/// The log's level and format, put back as they were.
struct LogSettings {
  std::optional<pm::LogLevel> level;
  pm::LogFormat format = pm::log_format();
  LogSettings() {
    for (auto l : {pm::LogLevel::debug, pm::LogLevel::info, pm::LogLevel::warn, pm::LogLevel::error}) {
      if (pm::log_enabled(l)) {
        level = l;
        break;
      }
    }
    pm::set_log_sink({});
  }
  ~LogSettings() {
    pm::set_log_level(level);
    pm::set_log_format(format);
  }
};

/// Every line of `text` is one JSON object with the fields every line has;
/// "ok <lines>" or the first bad line; then one line per restart event:
/// "restart <restart> <backoff_ms> <cause> <path>".
std::string json_check(const std::string& text) {
  const std::string script =
      "import sys, json\n"
      "data = open(sys.argv[1], 'rb').read()\n"
      "lines = data.split(b'\\n')\n"
      "if lines[-1] != b'': print('BAD: no final line feed'); sys.exit(0)\n"
      "extra = []\n"
      "for i, raw in enumerate(lines[:-1]):\n"
      "    try:\n"
      "        o = json.loads(raw.decode('utf-8'))\n"
      "        assert isinstance(o, dict), 'not an object'\n"
      "        for k in ('ts', 'level', 'path', 'event', 'message'):\n"
      "            assert isinstance(o.get(k), str), 'no ' + k\n"
      "        for k, v in o.items():\n"
      "            assert v != '', 'empty ' + k\n"
      "        if o['event'] == 'restart':\n"
      "            assert isinstance(o['restart'], int) and isinstance(o['backoff_ms'], int)\n"
      "            extra.append('restart %d %d %s %s' % (o['restart'], o['backoff_ms'], ascii(o.get('cause')),"
      " ascii(o['path'])))\n"
      "    except Exception as e:\n"
      "        print('BAD line %d (%d bytes): %s: %s' % (i, len(raw), type(e).__name__, ascii(raw[:160])))\n"
      "        sys.exit(0)\n"
      "print('ok %d' % (len(lines) - 1))\n"
      "for e in extra: print(e)\n";
  return run_python(script, {text});
}

TEST(adversary14_logs, json_lines_from_many_threads_stay_whole_and_valid) {
  LogSettings keep;
  pm::set_log_level(pm::LogLevel::debug);
  pm::set_log_format(pm::LogFormat::json);
  StderrCapture capture;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 300; ++i) {
        std::string path = std::string("app/t").append(std::to_string(t)) + "/\"q\"\\\xff\xc3";
        std::string message =
            std::string("line ").append(std::to_string(i)) + " \x01\x7f\t\r\n\xe2\x82 \xf0\x9f\x98\x80 ";
        // At most about 3,300 bytes a line once escaped: below PIPE_BUF.
        message.append(static_cast<std::size_t>(i * 7 % 1500), "abc\"\\"[i % 5]);
        pm::log(pm::LogLevel::warn, path, message);
      }
    });
  }
  for (auto& t : threads) t.join();
  const std::string text = capture.finish();
  const std::string verdict = json_check(text);
  EXPECT_EQ(verdict.rfind("ok 2400\n", 0), 0u) << verdict.substr(0, 600);
}

TEST(adversary14_logs, json_lines_longer_than_pipe_buf_from_many_threads_do_not_interleave) {
  // Found: one write(2) per line is atomic on a pipe only below
  // PIPE_BUF (4096 bytes). A longer line (a long error text) written while
  // other threads log is interleaved with theirs on the pipe a container's
  // stderr is: the collector sees broken JSON.
  LogSettings keep;
  pm::set_log_level(pm::LogLevel::debug);
  pm::set_log_format(pm::LogFormat::json);
  StderrCapture capture;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 20; ++i) {
        pm::log(pm::LogLevel::error, std::string("app/t").append(std::to_string(t)),
                std::string(200000, static_cast<char>('a' + t)));
      }
    });
  }
  for (auto& t : threads) t.join();
  const std::string verdict = json_check(capture.finish());
  EXPECT_EQ(verdict.rfind("ok 80\n", 0), 0u) << verdict.substr(0, 600);
}

TEST(adversary14_logs, a_short_write_to_stderr_does_not_cut_a_json_line) {
  // Found: write_line() did not loop over a short write (a non-blocking
  // stderr that is full, a signal during a long write): the line was cut,
  // had no line feed, and the next line was glued to it.
  LogSettings keep;
  pm::set_log_level(pm::LogLevel::debug);
  pm::set_log_format(pm::LogFormat::json);
  StderrCapture capture(/*nonblocking=*/true, /*hold=*/true);
  // The reader comes back while the writer waits on the full pipe (the
  // writer waits up to 5 s for it: the delay is the subject, not a guard).
  std::thread releaser([&] {
    std::this_thread::sleep_for(100ms);
    capture.release();
  });
  pm::log(pm::LogLevel::error, "app/long", std::string(100000, 'x'));
  releaser.join();
  pm::log(pm::LogLevel::error, "app/next", "after");
  const std::string verdict = json_check(capture.finish());
  EXPECT_EQ(verdict.rfind("ok 2\n", 0), 0u) << verdict.substr(0, 600);
}

TEST(adversary14_logs, restart_events_carry_their_fields_and_odd_paths_stay_valid_json) {
  LogSettings keep;
  pm::set_log_level(pm::LogLevel::debug);
  pm::set_log_format(pm::LogFormat::json);
  StderrCapture capture;
  {
    auto j = std::make_shared<Journal>();
    auto manager = ProcessManagerBuilder().name("app").build();
    auto inner = ProcessManagerBuilder().name("in\"ner\xff").build();
    auto flaky = std::make_shared<Probe>("fl\naky\xc3", j, Behaviour{.fail_first_runs = 3});
    inner->insert(flaky, ChildOptions{.restart = quick_restart()});
    auto sv = std::make_shared<Probe>("sv", j, Behaviour{.fail_first_runs = 2});
    manager->insert(inner);
    manager->insert(std::make_shared<pm::RestartSupervisor>(sv, quick_restart()));
    Running run(manager);
    ASSERT_TRUE(j->wait_for("start fl\naky\xc3", 4));
    ASSERT_TRUE(j->wait_for("start sv", 3));
    ASSERT_TRUE(run.wait_ready());
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
  const std::string text = capture.finish();
  const std::string verdict = json_check(text);
  ASSERT_EQ(verdict.rfind("ok ", 0), 0u) << verdict.substr(0, 600);
  for (const char* n : {"1", "2", "3"}) {
    EXPECT_NE(verdict.find(std::string("restart ") + n + " 1 'fl\\naky\\ufffd failed on run " + n +
                           "' 'app/in\"ner\\ufffd/fl\\naky\\ufffd'"),
              std::string::npos)
        << n << "\n"
        << verdict;
  }
}

TEST(adversary14_logs, DISABLED_a_supervised_services_restart_lines_carry_its_path_in_the_tree) {
  // BUG: the JSON field `path` is "the service the line is about
  // ("root/db/writer")", the path /metrics labels it with; a
  // RestartSupervisor's restart lines carry its bare name ("sv", not
  // "app/sv"): two supervised "db" in two managers cannot be told apart.
  LogSettings keep;
  pm::set_log_level(pm::LogLevel::debug);
  pm::set_log_format(pm::LogFormat::json);
  StderrCapture capture;
  {
    auto j = std::make_shared<Journal>();
    auto manager = ProcessManagerBuilder().name("app").build();
    auto sv = std::make_shared<Probe>("sv", j, Behaviour{.fail_first_runs = 2});
    manager->insert(std::make_shared<pm::RestartSupervisor>(sv, quick_restart()));
    Running run(manager);
    ASSERT_TRUE(j->wait_for("start sv", 3));
    ASSERT_TRUE(run.wait_ready());
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
  const std::string verdict = json_check(capture.finish());
  ASSERT_EQ(verdict.rfind("ok ", 0), 0u) << verdict.substr(0, 600);
  EXPECT_NE(verdict.find("restart 1 1 'sv failed on run 1' 'app/sv'"), std::string::npos) << verdict;
  EXPECT_NE(verdict.find("restart 2 1 'sv failed on run 2' 'app/sv'"), std::string::npos) << verdict;
}

}  // namespace
