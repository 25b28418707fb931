// The demo as `make demo` runs it: a child process with real signals, its
// health endpoints over TCP, and systemd's notify socket.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "child_process.hpp"
#include "http_client.hpp"
#include "notify_listener.hpp"

namespace {

using pm::test::ChildProcess;
using pm::test::get;
using pm::test::status_of;

/// What a shell command printed (stderr too); "exit N: ..." when it failed.
std::string shell(const std::string& command) {
  FILE* p = ::popen(("(" + command + ") 2>&1").c_str(), "r");
  if (p == nullptr) return "popen failed";
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int rc = ::pclose(p);
  return rc == 0 ? out : std::string("exit ").append(std::to_string(rc)) + ": " + out;
}

std::uint16_t port_of(const std::string& line) {
  const auto at = line.find("127.0.0.1:");
  if (at == std::string::npos) return 0;
  return static_cast<std::uint16_t>(std::stoi(line.substr(at + 10)));
}

TEST(demo, serves_readyz_reloads_on_sighup_and_stops_on_sigterm_with_exit_0) {
  const std::string where = std::string("@pm-demo-notify-").append(std::to_string(getpid()));
  pm::test::NotifyListener sd(where);
  setenv("NOTIFY_SOCKET", where.c_str(), 1);  // as under systemd's Type=notify-reload
  ChildProcess demo(PM_DEMO, {"--port", "0"});
  unsetenv("NOTIFY_SOCKET");
  const auto port = port_of(demo.wait_prefix("demo: health endpoints on "));
  ASSERT_NE(port, 0);
  ASSERT_TRUE(demo.wait_line("demo: every service is ready"));
  ASSERT_GE(sd.wait_for_text("READY=1"), 0);

  // The flaky worker makes the tree unready for its backoff now and then:
  // /readyz answers 503 then, and 200 again once it is back.
  int code = 0;
  for (int i = 0; i < 100 && code != 200; ++i) {
    const auto seen = sd.messages().size();
    code = status_of(get(port, "/readyz"));
    ASSERT_TRUE(code == 200 || code == 503) << code;
    if (code != 200) {
      ASSERT_GE(sd.wait_for_text("STATUS=ready", seen), 0);  // the notifier saw it ready again
    }
  }
  EXPECT_EQ(code, 200);
  EXPECT_EQ(status_of(get(port, "/livez")), 200);
  const auto status = get(port, "/status");
  EXPECT_EQ(status_of(status), 200);
  for (const char* child :
       {"demo/health", "demo/heartbeat", "demo/flaky", "demo/disk-poller", "demo/signal-receiver"}) {
    EXPECT_NE(status.find(std::string("\"") + child + "\""), std::string::npos) << child << " in " << status;
  }

  // /metrics as an operator's scraper sees it: curl, and Debian's
  // Prometheus client parser reading every family, the demo's own included.
  const std::string parsed =
      shell(std::string("curl -s -S --max-time 60 http://127.0.0.1:").append(std::to_string(port)) +
            "/metrics | /usr/bin/python3 -c '"
            "import sys\n"
            "from prometheus_client.parser import text_string_to_metric_families as p\n"
            "for f in p(sys.stdin.read()):\n"
            "    for s in f.samples: print(s.name, sorted(s.labels.items()), s.value)\n'");
  EXPECT_NE(parsed.find("processmanager_child_restarts_total [('path', 'demo/flaky')]"), std::string::npos) << parsed;
  EXPECT_NE(parsed.find("processmanager_child_heartbeat_age_seconds [('path', 'demo/heartbeat')]"), std::string::npos)
      << parsed;
  EXPECT_NE(parsed.find("demo_disk_free_bytes [('mount', '/')]"), std::string::npos) << parsed;
  const std::string verbose = shell(
      std::string("curl -s -S --max-time 60 'http://127.0.0.1:").append(std::to_string(port)) + "/readyz?verbose'");
  EXPECT_NE(verbose.find("[+]disk ok\n"), std::string::npos) << verbose;

  demo.signal(SIGHUP);
  EXPECT_TRUE(demo.wait_line("heartbeat: reload received"));
  EXPECT_TRUE(demo.wait_line("disk-poller: reload received"));
  EXPECT_GE(sd.wait_for_text("RELOADING=1"), 0);

  demo.signal(SIGTERM);
  const int code_at_exit = demo.wait_exit();
  EXPECT_EQ(code_at_exit, 0) << "the demo's log:\n" << demo.stderr_text();
  EXPECT_TRUE(demo.wait_line("demo: exit code 0"));
  EXPECT_GE(sd.wait_for_text("STOPPING=1"), 0);
}

TEST(demo, for_bounds_the_run_and_bad_arguments_are_refused) {
  {
    ChildProcess demo(PM_DEMO, {"--for", "300ms"});
    EXPECT_EQ(demo.wait_exit(), 0);
    EXPECT_TRUE(demo.wait_line("demo: time is up, stopping"));
  }
  {
    ChildProcess demo(PM_DEMO, {"--for", "soon"});
    EXPECT_EQ(demo.wait_exit(), 2);
    EXPECT_NE(demo.stderr_text().find("--for wants a duration"), std::string::npos);
  }
}

}  // namespace
