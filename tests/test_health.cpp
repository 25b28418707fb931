// HealthServer: its endpoints over real TCP sockets on 127.0.0.1, with a
// raw client for malformed and slow requests, and with curl.
#include <processmanager/health.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "http_client.hpp"
#include "lifecycle_support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ChildOptions;
using pm::HealthOptions;
using pm::HealthServer;
using pm::ProcessManagerBuilder;
using pm::StartOrder;
using pm::test::Beating;
using pm::test::Behaviour;
using pm::test::body_of;
using pm::test::Client;
using pm::test::get;
using pm::test::Journal;
using pm::test::Probe;
using pm::test::Running;
using pm::test::send;
using pm::test::status_of;

/// A tree with a health server whose port the test learns when it listens.
struct Tree {
  std::shared_ptr<Journal> j = std::make_shared<Journal>();
  std::shared_ptr<Probe> loader = std::make_shared<Probe>("loader", j, Behaviour{.defer_ready = true});
  std::shared_ptr<Probe> stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  std::promise<std::uint16_t> listening;
  std::shared_ptr<pm::ProcessManager> manager;
  std::shared_ptr<HealthServer> health;

  explicit Tree(HealthOptions options = {}) {
    manager = ProcessManagerBuilder().name("app").start_order(StartOrder::sequential).build();
    options.on_listening = [this](std::uint16_t port) { listening.set_value(port); };
    health = std::make_shared<HealthServer>(manager, std::move(options));
    // Sequential: the server starts first and stops last, so it answers
    // throughout the others' stop.
    manager->insert(health);
    manager->insert(loader);
    manager->insert(stubborn, ChildOptions{.shutdown_timeout = pm::test::hang_guard});
  }
  /// The port, once the server listens; 0 if it never does.
  std::uint16_t port() {
    auto f = listening.get_future();
    return f.wait_for(pm::test::hang_guard) == std::future_status::ready ? f.get() : 0;
  }
  /// A clean stop: the loader ready, the stubborn child gone, then shutdown.
  void stop(Running& run) const {
    send(loader, 1);
    send(stubborn, 3);
    ASSERT_TRUE(j->wait_for("end stubborn"));
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
};

TEST(health, a_server_made_in_the_builder_chain_serves_the_tree_it_is_built_into) {
  auto j = std::make_shared<Journal>();
  auto db = std::make_shared<Probe>("db", j);
  std::promise<std::uint16_t> listening;
  HealthOptions options;
  options.on_listening = [&listening](std::uint16_t port) { listening.set_value(port); };
  auto m = ProcessManagerBuilder()
               .name("app")
               .start_order(StartOrder::sequential)
               .pre_insert(db)
               .pre_insert_with(pm::health_server(std::move(options), "probes"))
               .build();
  Running run(m);
  auto port = listening.get_future();
  ASSERT_EQ(port.wait_for(pm::test::hang_guard), std::future_status::ready);
  ASSERT_TRUE(run.wait_ready());
  const auto r = get(port.get(), "/status");
  ASSERT_EQ(status_of(r), 200) << r;
  const auto status = pm::status_from_json(boost::json::parse(body_of(r)));
  ASSERT_EQ(status.children.size(), 2u);
  EXPECT_EQ(status.children[0].path, "app/db");  // in its place in the chain
  EXPECT_EQ(status.children[1].path, "app/probes");
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health, the_builder_refuses_an_empty_or_null_factory_and_bad_options_by_name) {
  EXPECT_THROW(ProcessManagerBuilder().name("app").pre_insert_with(pm::ChildFactory{}), std::invalid_argument);
  auto null_maker = ProcessManagerBuilder().name("app").pre_insert_with(
      [](const std::shared_ptr<pm::ProcessManager>&) { return std::shared_ptr<pm::Runnable>(); });
  try {
    null_maker.build();
    ADD_FAILURE() << "a factory that returns null was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'app'"), std::string::npos) << e.what();
  }
  auto bad =
      ProcessManagerBuilder().name("app").pre_insert_with(pm::health_server(HealthOptions{.max_connections = 0}));
  try {
    bad.build();
    ADD_FAILURE() << "max_connections = 0 was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("HealthServer 'health'"), std::string::npos) << e.what();
  }
  auto negative =
      ProcessManagerBuilder().name("app").pre_insert_with(pm::health_server(), ChildOptions{.shutdown_timeout = -1s});
  EXPECT_THROW(negative.build(), std::invalid_argument);
}

TEST(health, the_endpoints_follow_the_tree_from_start_through_draining) {
  Tree t;
  Running run(t.manager);
  const std::uint16_t port = t.port();
  ASSERT_NE(port, 0);
  ASSERT_NE(port, 0);
  EXPECT_EQ(t.health->port(), port);

  // The loader is not ready yet (and the stubborn child not even started).
  ASSERT_TRUE(t.j->wait_for("start loader"));
  auto r = get(port, "/readyz");
  EXPECT_EQ(status_of(r), 503) << r;
  EXPECT_NE(body_of(r).find("not ready"), std::string::npos) << r;
  EXPECT_EQ(status_of(get(port, "/livez")), 200);

  send(t.loader, 1);
  ASSERT_TRUE(run.wait_ready());
  r = get(port, "/readyz");
  EXPECT_EQ(status_of(r), 200) << r;
  EXPECT_EQ(body_of(r), "ready\n");
  EXPECT_NE(r.find("Cache-Control: no-store"), std::string::npos) << r;

  r = get(port, "/status?pretty=no");
  ASSERT_EQ(status_of(r), 200) << r;
  EXPECT_NE(r.find("Content-Type: application/json"), std::string::npos) << r;
  const auto status = pm::status_from_json(boost::json::parse(body_of(r)));
  EXPECT_EQ(status.path, "app");
  ASSERT_EQ(status.children.size(), 3u);
  EXPECT_EQ(status.children[0].path, "app/health");
  EXPECT_EQ(status.children[1].path, "app/loader");

  // HEAD: the headers of GET, no body.
  r = get(port, "/readyz", "HEAD");
  EXPECT_EQ(status_of(r), 200) << r;
  EXPECT_NE(r.find("Content-Length: 6"), std::string::npos) << r;
  EXPECT_EQ(body_of(r), "");

  // Draining: the stubborn child holds the stop; the server, last to stop,
  // still answers, and the tree is not ready from the moment it began.
  run.stop();
  ASSERT_TRUE(t.j->wait_for("stop stubborn"));
  r = get(port, "/readyz");
  EXPECT_EQ(status_of(r), 503) << r;
  EXPECT_EQ(body_of(r), "stopping\n");
  EXPECT_EQ(status_of(get(port, "/livez")), 200);  // stopping is still alive
  send(t.stubborn, 3);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(get(port, "/readyz"), "refused");
  EXPECT_EQ(t.health->port(), 0);
}

TEST(health, bad_requests_get_400_404_405_and_413_and_keep_alive_serves_several) {
  Tree t(HealthOptions{.max_request_bytes = 1024});
  Running run(t.manager);
  const std::uint16_t port = t.port();
  ASSERT_NE(port, 0);

  auto r = get(port, "/metricz");
  EXPECT_EQ(status_of(r), 404) << r;
  r = get(port, "/readyz", "POST");
  EXPECT_EQ(status_of(r), 405) << r;
  EXPECT_NE(r.find("Allow: GET, HEAD"), std::string::npos) << r;
  r = get(port, "/livez", "DELETE");
  EXPECT_EQ(status_of(r), 405) << r;

  {
    Client c(port);
    c.write("THIS IS NOT HTTP\r\n\r\n");
    r = c.read_all();
    EXPECT_EQ(status_of(r), 400) << r;
  }
  {
    Client c(port);
    c.write("GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n");
    r = c.read_all();
    EXPECT_EQ(status_of(r), 400) << r;
  }
  {
    Client c(port);  // headers beyond the limit
    c.write("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n");
    r = c.read_all();
    EXPECT_EQ(status_of(r), 413) << r;
  }
  {
    Client c(port);  // a body beyond the limit, announced
    c.write("POST /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    r = c.read_all();
    EXPECT_EQ(status_of(r), 413) << r;
  }
  {
    Client c(port);  // two requests on one connection
    c.write("GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    r = c.read_all();
    std::size_t count = 0;
    for (auto at = r.find("HTTP/1.1 200"); at != std::string::npos; at = r.find("HTTP/1.1 200", at + 1)) ++count;
    EXPECT_EQ(count, 2u) << r;
  }
  t.stop(run);
}

TEST(health, slow_clients_are_cut_off) {
  Tree t(HealthOptions{.request_timeout = 100ms});
  Running run(t.manager);
  const std::uint16_t port = t.port();
  ASSERT_NE(port, 0);
  {
    // Half a request, then nothing: disconnected after the timeout, unanswered.
    Client slow(port);
    slow.write("GET /livez HTTP/1.1\r\nHo");
    EXPECT_EQ(slow.read_all(), "");
  }
  t.stop(run);
}

/// True while the server has not closed `c` (nothing to read yet, no EOF).
bool still_open(const Client& c) {
  char byte = 0;
  const ssize_t n = ::recv(c.fd(), &byte, 1, MSG_DONTWAIT | MSG_PEEK);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

TEST(health, idle_and_slow_connections_never_starve_a_probe) {
  // As many connections as the limit allows, sending nothing or half a
  // request (slowloris); the timeout cannot save the probe here.
  Tree t(HealthOptions{.request_timeout = pm::test::hang_guard, .header_timeout = pm::test::hang_guard});
  Running run(t.manager);
  const std::uint16_t port = t.port();
  ASSERT_NE(port, 0);
  const std::size_t limit = HealthOptions{}.max_connections;
  std::vector<std::unique_ptr<Client>> idle;
  for (std::size_t i = 0; i < limit; ++i) {
    idle.push_back(std::make_unique<Client>(port));
    ASSERT_TRUE(idle.back()->connected());
    if (i % 2 == 1) idle.back()->write("GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ");
  }
  // The server accepts in connection order: the probe comes after all of
  // them, and evicts the oldest idle one instead of being refused.
  auto r = get(port, "/livez");
  EXPECT_EQ(status_of(r), 200) << r;
  EXPECT_EQ(idle[0]->read_all(), "");  // evicted: closed unanswered
  EXPECT_TRUE(still_open(*idle[1]));
  // Back at the limit, the next probe evicts the next oldest, a slow one.
  idle.push_back(std::make_unique<Client>(port));
  r = get(port, "/readyz");
  EXPECT_EQ(status_of(r), 503) << r;  // an answer about the tree (the loader is not ready), not "too many"
  EXPECT_NE(body_of(r).find("not ready"), std::string::npos) << r;
  EXPECT_EQ(idle[1]->read_all(), "");
  EXPECT_TRUE(still_open(*idle[2]));
  idle.clear();
  t.stop(run);
}

TEST(health, a_chunked_request_counts_every_byte_against_the_limit) {
  Tree t(HealthOptions{
      .request_timeout = pm::test::hang_guard, .header_timeout = pm::test::hang_guard, .max_request_bytes = 1024});
  Running run(t.manager);
  const std::uint16_t port = t.port();
  ASSERT_NE(port, 0);
  const std::string head = "GET /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
  {
    Client c(port);  // a small chunked body is fine
    c.write(head + "3;name=value\r\nabc\r\n0\r\n\r\n");
    const auto r = c.read_all();
    EXPECT_EQ(status_of(r), 200) << r;
  }
  {
    Client c(port);  // one-byte chunks with long extensions: 50 body bytes, 25 KiB on the wire
    std::string bytes = head;
    for (int i = 0; i < 50; ++i) bytes += "1;ext=" + std::string(500, 'e') + "\r\nx\r\n";
    c.write(bytes + "0\r\n\r\n");
    c.shutdown_send();
    const auto r = c.read_all();
    EXPECT_EQ(status_of(r), 413) << r;
  }
  {
    Client c(port);  // an empty body with long trailers
    std::string bytes = head + "0\r\n";
    for (int i = 0; i < 40; ++i) bytes += "X-Trailer-" + std::to_string(i) + ": " + std::string(500, 't') + "\r\n";
    c.write(bytes + "\r\n");
    c.shutdown_send();
    const auto r = c.read_all();
    EXPECT_EQ(status_of(r), 413) << r;
  }
  {
    Client c(port);  // one chunk extension larger than the read buffer may grow
    c.write(head + "1;ext=" + std::string(200000, 'e'));
    const auto r = c.read_all();
    EXPECT_EQ(status_of(r), 413) << r;
  }
  {
    Client c(port);  // a chunked body beyond the limit
    std::string bytes = head;
    for (int i = 0; i < 4; ++i) bytes += "190\r\n" + std::string(400, 'b') + "\r\n";
    c.write(bytes + "0\r\n\r\n");
    c.shutdown_send();
    const auto r = c.read_all();
    EXPECT_EQ(status_of(r), 413) << r;
  }
  t.stop(run);
}

TEST(health, a_request_limit_of_4_gib_or_more_is_not_truncated) {
  for (const std::size_t limit : {std::size_t{1} << 32, (std::size_t{1} << 32) + 100, SIZE_MAX}) {
    Tree t(HealthOptions{.max_request_bytes = limit});
    Running run(t.manager);
    const std::uint16_t port = t.port();
    ASSERT_NE(port, 0);
    const auto r = get(port, "/livez");
    EXPECT_EQ(status_of(r), 200) << "max_request_bytes " << limit << ": " << r;
    t.stop(run);
  }
}

/// Log lines of the health server, for counting.
class LogCapture {
 public:
  LogCapture() {
    pm::set_log_level(pm::LogLevel::info);
    pm::set_log_sink([this](pm::LogLevel, std::string_view path, std::string_view message) {
      std::lock_guard lock(mu_);
      lines_.push_back(std::string(path) + ": " + std::string(message));
      cv_.notify_all();
    });
  }
  ~LogCapture() {
    pm::set_log_sink({});
    pm::set_log_level(std::nullopt);
  }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::size_t count(const std::string& text) const {
    std::lock_guard lock(mu_);
    std::size_t n = 0;
    for (const auto& l : lines_) n += l.find(text) != std::string::npos ? 1 : 0;
    return n;
  }
  bool wait_for(const std::string& text) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, pm::test::hang_guard, [&] {
      for (const auto& l : lines_) {
        if (l.find(text) != std::string::npos) return true;
      }
      return false;
    });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
};

TEST(health, out_of_descriptors_the_accept_loop_backs_off_and_logs_once) {
#if PM_TEST_SANITIZED
  // The sanitizers' runtime (UBSan's vptr check) opens a pipe to probe
  // memory; without free descriptors it reports every object as invalid.
  GTEST_SKIP() << "needs a process without free descriptors, which the sanitizers cannot run in";
#endif
  Tree t(HealthOptions{.request_timeout = pm::test::hang_guard, .header_timeout = pm::test::hang_guard});
  LogCapture log;
  Running run(t.manager);
  const std::uint16_t port = t.port();
  ASSERT_NE(port, 0);

  // The client's socket first; then no descriptor is left for the server's
  // accept. A lower soft limit keeps the filling short; every descriptor
  // below it is taken.
  const int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(client, 0);
  timeval guard{static_cast<time_t>(pm::test::hang_guard.count()), 0};
  ::setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &guard, sizeof guard);
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  int highest = client;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    highest = std::max(highest, std::stoi(entry.path().filename().string()));
  }
  rlimit lowered = saved;
  lowered.rlim_cur = static_cast<rlim_t>(highest) + 8;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);
  std::vector<int> fillers;
  for (;;) {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;
    fillers.push_back(fd);
  }
  const int filled_errno = errno;
  auto release = [&] {
    for (const int fd : fillers) ::close(fd);
    fillers.clear();
    ::setrlimit(RLIMIT_NOFILE, &saved);
  };
  if (filled_errno != EMFILE) release();
  ASSERT_EQ(filled_errno, EMFILE);

  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // The kernel completes the connection in the backlog; the accept fails.
  const bool connected = ::connect(client, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0;
  const std::string request = "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  if (connected) (void)::send(client, request.data(), request.size(), MSG_NOSIGNAL);
  const bool failed = log.wait_for("accept failed");
  // Time is the subject: a loop that retried at once would log thousands of
  // lines in this while. The sleep only bounds the time from below.
  if (failed) std::this_thread::sleep_for(300ms);
  const std::size_t warnings = log.count("accept failed");
  release();
  ASSERT_TRUE(connected);
  ASSERT_TRUE(failed);
  EXPECT_EQ(warnings, 1u);

  // Descriptors back: the waiting client is served, and the recovery logged.
  std::string response;
  char buf[4096];
  for (ssize_t n = 0; (n = ::recv(client, buf, sizeof buf, 0)) > 0;) response.append(buf, static_cast<std::size_t>(n));
  ::close(client);
  EXPECT_EQ(status_of(response), 200) << response;
  EXPECT_TRUE(log.wait_for("accepting again after"));
  EXPECT_EQ(log.count("accept failed"), 1u);
  t.stop(run);
}

TEST(health, a_stop_closes_open_connections_at_once) {
  Tree t(HealthOptions{.request_timeout = pm::test::hang_guard, .header_timeout = pm::test::hang_guard});
  Running run(t.manager);
  const std::uint16_t port = t.port();
  ASSERT_NE(port, 0);
  Client idle(port);
  ASSERT_TRUE(idle.connected());
  idle.write("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");  // kept alive afterwards, idle
  EXPECT_EQ(status_of(idle.read_until("alive\n")), 200);
  send(t.loader, 1);
  send(t.stubborn, 3);
  ASSERT_TRUE(t.j->wait_for("end stubborn"));
  run.stop();
  // Only the stop's closing can end the idle connection (its timeouts are
  // the hang guard): the tree's stop does not wait for the client.
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(idle.read_all(), "");  // closed by the server
}

TEST(health, livez_fails_while_a_heartbeat_is_stale) {
  auto j = std::make_shared<Journal>();
  auto beating = std::make_shared<Beating>("beating", j);
  beating->beats().set(std::chrono::steady_clock::now() + std::chrono::hours(1));
  auto m = ProcessManagerBuilder().name("app").build();
  std::promise<std::uint16_t> listening;
  auto health = std::make_shared<HealthServer>(
      m, HealthOptions{.on_listening = [&listening](std::uint16_t p) { listening.set_value(p); }});
  m->insert(health);
  m->insert(beating, ChildOptions{.heartbeat_timeout = 20ms});
  Running run(m);
  auto port_future = listening.get_future();
  ASSERT_EQ(port_future.wait_for(pm::test::hang_guard), std::future_status::ready);
  const auto port = port_future.get();
  EXPECT_EQ(status_of(get(port, "/livez")), 200);
  beating->beats().set(std::chrono::steady_clock::now() - std::chrono::hours(1));
  // Time is the subject, and /livez answers a snapshot: the sleep only
  // bounds the elapsed time from below (past the 20 ms timeout) and
  // synchronises with no other thread.
  std::this_thread::sleep_for(30ms);
  const auto r = get(port, "/livez");
  EXPECT_EQ(status_of(r), 503) << r;
  EXPECT_EQ(body_of(r), "stale heartbeat: app/beating\n");
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health, curl_sees_the_probes) {
  Tree t;
  Running run(t.manager);
  const std::uint16_t port = t.port();
  ASSERT_NE(port, 0);
  const std::string base = "http://127.0.0.1:" + std::to_string(port);
  send(t.loader, 1);
  ASSERT_TRUE(run.wait_ready());
  auto curl = [](const std::string& args) {
    std::string out;
    FILE* p = ::popen(("curl -s -S --max-time 60 " + args + " 2>&1").c_str(), "r");
    if (p == nullptr) return std::string("popen failed");
    char buf[512];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
    return out;
  };
  EXPECT_EQ(curl("-o /dev/null -w '%{http_code}' " + base + "/readyz"), "200");
  EXPECT_EQ(curl(base + "/livez"), "alive\n");
  EXPECT_EQ(curl("-o /dev/null -w '%{http_code}' -X PUT " + base + "/readyz"), "405");
  EXPECT_EQ(curl("-o /dev/null -w '%{http_code}' " + base + "/nothing"), "404");
  const std::string big = "/tmp/pm-health-big-" + std::to_string(getpid());
  {
    FILE* f = std::fopen(big.c_str(), "w");
    ASSERT_NE(f, nullptr);
    const std::string bytes(20000, 'x');
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  EXPECT_EQ(curl("-o /dev/null -w '%{http_code}' --data-binary @" + big + " " + base + "/status"), "413");
  std::remove(big.c_str());
  const auto json = curl(base + "/status");
  EXPECT_NO_THROW((void)pm::status_from_json(boost::json::parse(json))) << json;
  send(t.stubborn, 3);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(health, a_taken_port_fails_the_server_by_name_and_a_bad_address_is_refused) {
  auto m = ProcessManagerBuilder().name("app").build();
  EXPECT_THROW(HealthServer(m, HealthOptions{.address = "localhost:80"}), std::invalid_argument);
  EXPECT_THROW(HealthServer(nullptr), std::invalid_argument);
  EXPECT_THROW(HealthServer(m, HealthOptions{.request_timeout = 0s}), std::invalid_argument);

  // Hold a port, then ask a server for it.
  const int holder = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(holder, reinterpret_cast<const sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(holder, 1), 0);
  socklen_t len = sizeof a;
  ::getsockname(holder, reinterpret_cast<sockaddr*>(&a), &len);
  const auto port = ntohs(a.sin_port);
  m->insert(std::make_shared<HealthServer>(m, HealthOptions{.port = port}, "probes"));
  Running run(m);
  const auto e = run.finish();
  ::close(holder);
  ASSERT_NE(e, nullptr);
  try {
    std::rethrow_exception(e);
  } catch (const pm::ProcessError& err) {
    const std::string what = pm::describe(err.root_cause());
    EXPECT_NE(what.find("HealthServer 'probes' on 127.0.0.1:" + std::to_string(port)), std::string::npos) << what;
    EXPECT_EQ(err.process_name(), "app/probes");
  }
}

}  // namespace
