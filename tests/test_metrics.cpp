// HealthServer's /metrics: the Prometheus text format checked line by line
// here and by a real parser (Debian's python3-prometheus-client), counters
// that never go backwards (across a nested manager's restart, and against
// a model of counts that reset), and MetricsWriter's refusals.
#include <processmanager/metrics.hpp>

#include "../src/metrics_stream.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "health_support.hpp"
#include "http_client.hpp"

namespace {

using namespace std::chrono_literals;
using pm::ChildOptions;
using pm::HealthOptions;
using pm::ProcessManagerBuilder;
using pm::test::Beating;
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

/// A /metrics document read back: each sample's value by its whole key
/// (`name{labels}` as written), and the format's rules checked on the way.
struct Exposition {
  std::map<std::string, double> samples;
  std::vector<std::string> families;  // in order of their TYPE lines
  std::vector<std::string> errors;    // rules broken

  explicit Exposition(const std::string& text) {
    std::string current;
    std::set<std::string> helped;
    std::size_t at = 0;
    while (at < text.size()) {
      const auto end = text.find('\n', at);
      if (end == std::string::npos) {
        errors.push_back("the document does not end with a line feed");
        break;
      }
      const std::string line = text.substr(at, end - at);
      at = end + 1;
      if (line.rfind("# HELP ", 0) == 0) {
        const std::string name = line.substr(7, line.find(' ', 7) - 7);
        if (!helped.insert(name).second) errors.push_back("HELP twice: " + name);
        continue;
      }
      if (line.rfind("# TYPE ", 0) == 0) {
        const std::string name = line.substr(7, line.find(' ', 7) - 7);
        if (helped.count(name) == 0) errors.push_back("TYPE before HELP: " + name);
        for (const auto& f : families) {
          if (f == name) errors.push_back("a family in two groups: " + name);
        }
        families.push_back(name);
        current = name;
        continue;
      }
      // The key ends at the last space (label values may hold spaces).
      const auto space = line.rfind(' ');
      const std::string key = line.substr(0, space);
      const std::string name = key.substr(0, key.find('{'));
      if (name.rfind(current, 0) != 0) errors.push_back("a sample outside its family's group: " + line);
      if (!samples.emplace(key, std::stod(line.substr(space + 1))).second) errors.push_back("twice: " + key);
    }
  }
  double at(const std::string& key) const {
    const auto it = samples.find(key);
    return it == samples.end() ? -1 : it->second;
  }
};

std::string metrics_of(std::uint16_t port) {
  const std::string response = get(port, "/metrics");
  EXPECT_EQ(status_of(response), 200) << response;
  EXPECT_NE(response.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << response;
  return body_of(response);
}

pm::RestartOptions quick_restart(pm::RestartPolicy policy = pm::RestartPolicy::transient) {
  pm::RestartOptions o;
  o.policy = policy;
  o.max_restarts = 100;
  o.backoff = {.initial = 1ms, .factor = 1.0, .max = 1ms, .jitter = false};
  return o;
}

TEST(Metrics, every_family_with_each_child_in_the_format) {
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  auto db = std::make_shared<Probe>("db", j);
  auto cache = std::make_shared<Probe>("cache", j, Behaviour{.defer_ready = true});
  auto flaky = std::make_shared<Probe>("flaky", j, Behaviour{.fail_first_runs = 2});
  auto beat = std::make_shared<Beating>("beat", j);
  Probed health(manager);
  manager->insert(db);
  manager->insert(cache);
  manager->insert(flaky, ChildOptions{.restart = quick_restart()});
  manager->insert(beat, ChildOptions{.heartbeat_timeout = pm::test::hang_guard});
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(j->wait_for("start flaky", 3));

  {
    const Exposition m(metrics_of(port));
    EXPECT_TRUE(m.errors.empty()) << ::testing::PrintToString(m.errors);
    const std::vector<std::string> families{"processmanager_ready",
                                            "processmanager_start_time_seconds",
                                            "processmanager_child_ready",
                                            "processmanager_child_state",
                                            "processmanager_child_restarts_total",
                                            "processmanager_child_failures_total",
                                            "processmanager_child_heartbeat_age_seconds"};
    EXPECT_EQ(m.families, families);
    EXPECT_EQ(m.at("processmanager_ready"), 0) << "cache is not ready";
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    EXPECT_GT(m.at("processmanager_start_time_seconds"), now - 600);
    EXPECT_LE(m.at("processmanager_start_time_seconds"), now);
    EXPECT_EQ(m.at(R"(processmanager_child_ready{path="app/db"})"), 1);
    EXPECT_EQ(m.at(R"(processmanager_child_ready{path="app/cache"})"), 0);
    for (const auto* state :
         {"starting", "running", "ready", "stopping", "stopped", "failed", "restarting", "abandoned"}) {
      const std::string key = std::string(R"(processmanager_child_state{path="app/cache",state=")") + state + "\"}";
      EXPECT_EQ(m.at(key), std::string(state) == "running" ? 1 : 0) << key;
    }
    EXPECT_EQ(m.at(R"(processmanager_child_restarts_total{path="app/flaky"})"), 2);
    EXPECT_EQ(m.at(R"(processmanager_child_failures_total{path="app/flaky"})"), 2);
    EXPECT_EQ(m.at(R"(processmanager_child_failures_total{path="app/db"})"), 0);
    const double age = m.at(R"(processmanager_child_heartbeat_age_seconds{path="app/beat"})");
    EXPECT_GE(age, 0);
    EXPECT_LT(age, 600);
    EXPECT_EQ(m.at(R"(processmanager_child_heartbeat_age_seconds{path="app/db"})"), -1) << "db has no heartbeat";
    // Every child of the tree, the server included, is listed.
    EXPECT_EQ(m.at(R"(processmanager_child_ready{path="app/health"})"), 1);
  }
  send(cache, 1);
  ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
  EXPECT_EQ(Exposition(metrics_of(port)).at("processmanager_ready"), 1);
  // HEAD: the length of the document, no body.
  const std::string head = get(port, "/metrics", "HEAD");
  EXPECT_EQ(status_of(head), 200);
  EXPECT_EQ(body_of(head), "");
  EXPECT_EQ(status_of(get(port, "/metrics", "POST")), 405);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

/// Runs Debian's Prometheus client parser over `text`; what it printed
/// (one line per sample: name, labels, value), or "FAILED ..." with why.
std::string python_parse(const std::string& text) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto input = dir / (std::string("pm_metrics_").append(std::to_string(::getpid())) + ".txt");
  const auto output = dir / (std::string("pm_metrics_").append(std::to_string(::getpid())) + ".out");
  { std::ofstream(input, std::ios::binary) << text; }
  // /usr/bin/python3: the interpreter Debian's package is installed for.
  const std::string script =
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "for f in text_string_to_metric_families(open(sys.argv[1], encoding='utf-8').read()):\n"
      "    for s in f.samples:\n"
      "        print(f.type, s.name, sorted(s.labels.items()), s.value)\n";
  const auto script_file = dir / (std::string("pm_metrics_").append(std::to_string(::getpid())) + ".py");
  { std::ofstream(script_file) << script; }
  const std::string command =
      "/usr/bin/python3 " + script_file.string() + " " + input.string() + " > " + output.string() + " 2>&1";
  const int rc = std::system(command.c_str());
  std::ifstream in(output);
  std::string printed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::filesystem::remove(input);
  std::filesystem::remove(output);
  std::filesystem::remove(script_file);
  return rc == 0 ? printed : std::string("FAILED (").append(std::to_string(rc)) + ") " + printed;
}

TEST(Metrics, a_real_parser_reads_every_sample_even_of_names_that_need_escaping) {
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  const std::string odd = "we\"ird\\na\nme {x} 1";
  auto weird = std::make_shared<Probe>(odd, j);
  auto inner = ProcessManagerBuilder().name("inner").build();
  inner->insert(std::make_shared<Probe>("w", j));
  HealthOptions options;
  options.metrics = [](pm::MetricsWriter& w) {
    w.family("orders_queue_depth", "gauge", "Orders waiting.\nSecond line \\ too.");
    w.sample("orders_queue_depth", {{"queue", "in\"bound"}}, 7);
    w.sample("orders_queue_depth", {{"queue", "out"}}, std::numeric_limits<double>::quiet_NaN());
    w.family("orders_total", "counter", "Orders taken.");
    w.sample("orders_total", 1e21);
  };
  Probed health(manager, options);
  manager->insert(weird);
  manager->insert(inner);
  // Siblings of one name: no series may repeat.
  manager->insert(std::make_shared<Probe>("twin", j));
  manager->insert(std::make_shared<Probe>("twin", j));
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(run.wait_ready());
  const std::string text = metrics_of(port);
  const std::string parsed = python_parse(text);
  ASSERT_EQ(parsed.rfind("FAILED", 0), std::string::npos) << parsed << "\n" << text;
  // The parser gives the label value back as it was: escaping round-trips.
  EXPECT_NE(parsed.find("gauge processmanager_child_ready [('path', 'app/we\"ird\\\\na\\nme {x} 1')] 1.0"),
            std::string::npos)
      << parsed;
  EXPECT_NE(parsed.find("gauge processmanager_child_ready [('path', 'app/inner/w')] 1.0"), std::string::npos) << parsed;
  EXPECT_NE(parsed.find("counter processmanager_child_restarts_total [('path', 'app/inner')] 0.0"), std::string::npos)
      << parsed;
  EXPECT_NE(parsed.find("gauge processmanager_child_ready [('path', 'app/twin')] 1.0"), std::string::npos) << parsed;
  EXPECT_NE(parsed.find("gauge processmanager_child_ready [('path', 'app/twin#2')] 1.0"), std::string::npos) << parsed;
  // No series twice (the parser itself accepts repeats; a scraper does not).
  std::set<std::string> series;
  for (std::size_t at = 0; at < parsed.size();) {
    const auto end = parsed.find('\n', at);
    const std::string line = parsed.substr(at, end - at);
    EXPECT_TRUE(series.insert(line.substr(0, line.rfind(' '))).second) << "repeated: " << line;
    at = end == std::string::npos ? parsed.size() : end + 1;
  }
  EXPECT_NE(parsed.find("gauge orders_queue_depth [('queue', 'in\"bound')] 7.0"), std::string::npos) << parsed;
  EXPECT_NE(parsed.find("gauge orders_queue_depth [('queue', 'out')] nan"), std::string::npos) << parsed;
  EXPECT_NE(parsed.find("counter orders_total [] 1e+21"), std::string::npos) << parsed;
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(Metrics, a_hook_that_breaks_the_format_is_left_out_and_the_rest_is_served) {
  auto manager = ProcessManagerBuilder().name("app").build();
  HealthOptions options;
  options.metrics = [](pm::MetricsWriter& w) {
    w.family("mine", "gauge", "ok so far");
    w.sample("mine", 1);
    w.family("processmanager_ready", "gauge", "a clash with the library's own");
  };
  Probed health(manager, options);
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  const std::string text = metrics_of(port);
  EXPECT_EQ(text.find("mine"), std::string::npos) << text;
  EXPECT_NE(text.find("processmanager_child_ready{path=\"app/health\"} 1"), std::string::npos) << text;
  EXPECT_EQ(python_parse(text).rfind("FAILED", 0), std::string::npos);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(Metrics, counters_go_on_across_a_restart_of_the_manager_above_them) {
  auto j = std::make_shared<Journal>();
  auto manager = ProcessManagerBuilder().name("app").build();
  auto inner = ProcessManagerBuilder().name("inner").build();
  auto w = std::make_shared<Probe>("w", j, Behaviour{.fail_first_runs = 1});
  auto bomb = std::make_shared<Probe>("bomb", j);
  inner->insert(w, ChildOptions{.restart = quick_restart()});
  inner->insert(bomb);
  Probed health(manager);
  manager->insert(inner, ChildOptions{.restart = quick_restart(pm::RestartPolicy::permanent)});
  Running run(manager);
  const auto port = health.port();
  ASSERT_NE(port, 0);
  ASSERT_TRUE(j->wait_for("start w", 2));
  ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
  {
    const Exposition m(metrics_of(port));
    EXPECT_EQ(m.at(R"(processmanager_child_restarts_total{path="app/inner/w"})"), 1);
    EXPECT_EQ(m.at(R"(processmanager_child_failures_total{path="app/inner/w"})"), 1);
  }
  // bomb's failure fails inner, which app restarts: a new run of inner,
  // with new records of w and bomb, whose counts begin at zero.
  send(bomb, 2);
  ASSERT_TRUE(j->wait_for("start bomb", 2));
  ASSERT_TRUE(wait_until([&] { return manager->is_ready(); }));
  const Exposition m(metrics_of(port));
  EXPECT_TRUE(m.errors.empty()) << ::testing::PrintToString(m.errors);
  EXPECT_EQ(m.at(R"(processmanager_child_restarts_total{path="app/inner"})"), 1);
  EXPECT_EQ(m.at(R"(processmanager_child_failures_total{path="app/inner"})"), 1);
  EXPECT_EQ(m.at(R"(processmanager_child_restarts_total{path="app/inner/w"})"), 1) << "w's count went back";
  EXPECT_EQ(m.at(R"(processmanager_child_failures_total{path="app/inner/w"})"), 1);
  EXPECT_EQ(m.at(R"(processmanager_child_failures_total{path="app/inner/bomb"})"), 1);
  EXPECT_EQ(m.at(R"(processmanager_child_restarts_total{path="app/inner/bomb"})"), 0);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(Metrics, counter_floors_never_go_backwards_and_lose_nothing_they_saw) {
  // Against a model: each path's count grows by random steps and now and
  // then starts again from a few (a new object under the same path). From
  // one reading to the next, what is shown grows by what the count grew,
  // or, when the count fell (a new life), by the whole new count: never
  // down, and no increment seen is lost.
  std::mt19937 rng(20261202);
  for (int round = 0; round < 200; ++round) {
    pm::detail::CounterFloors floors;
    std::map<std::string, std::uint64_t> raw, shown;
    for (int step = 0; step < 300; ++step) {
      const std::string path = std::string("p").append(std::to_string(rng() % 4));
      const int family = static_cast<int>(rng() % 2);
      const std::string key = path + std::string("/").append(std::to_string(family));
      const std::uint64_t before = raw[key];
      std::uint64_t now = before + rng() % 3;
      if (rng() % 8 == 0) now = rng() % 3;  // a new life
      raw[key] = now;
      const std::uint64_t expected = shown[key] + (now >= before ? now - before : now);
      const std::uint64_t value = floors.shown(path, family, now);
      ASSERT_EQ(value, expected) << key << " at step " << step << " of round " << round;
      shown[key] = value;
    }
  }
}

TEST(MetricsWriter, refuses_what_the_format_forbids_by_name) {
  std::string out;
  pm::MetricsWriter w(out);
  EXPECT_THROW(w.sample("x", 1), std::invalid_argument) << "a sample of no family";
  EXPECT_THROW(w.family("1bad", "gauge", ""), std::invalid_argument);
  EXPECT_THROW(w.family("", "gauge", ""), std::invalid_argument);
  EXPECT_THROW(w.family("ok", "meter", ""), std::invalid_argument);
  w.family("requests", "counter", "h");
  EXPECT_THROW(w.family("requests", "gauge", ""), std::invalid_argument) << "a family twice";
  EXPECT_THROW(w.sample("other", 1), std::invalid_argument);
  EXPECT_THROW(w.sample("requestsx", 1), std::invalid_argument) << "a prefix is not a suffix";
  EXPECT_THROW(w.sample("requests_total", {{"bad-label", "v"}}, 1), std::invalid_argument);
  EXPECT_THROW(w.sample("requests_total", {{"__reserved", "v"}}, 1), std::invalid_argument);
  EXPECT_THROW(w.sample("requests_total", {{"a", "1"}, {"a", "2"}}, 1), std::invalid_argument);
  const std::string before = out;
  w.sample("requests_total", {{"code", "200"}, {"path", "a\\b\"c\nd"}}, 3);
  w.sample("requests_total", -std::numeric_limits<double>::infinity());
  w.sample("requests_total", 0.1);
  EXPECT_EQ(out.substr(before.size()),
            "requests_total{code=\"200\",path=\"a\\\\b\\\"c\\nd\"} 3\nrequests_total -Inf\nrequests_total 0.1\n");
  EXPECT_EQ(before, "# HELP requests h\n# TYPE requests counter\n") << "refusals wrote nothing";
  // Another library's text: its families count as begun.
  const std::string size_before_raw = out;
  EXPECT_THROW(w.raw("# HELP requests x\n# TYPE requests gauge\nrequests 1\n"), std::invalid_argument);
  EXPECT_EQ(out, size_before_raw) << "a refused raw text wrote nothing";
  w.raw("# HELP theirs t\n# TYPE theirs gauge\ntheirs 2");
  EXPECT_EQ(out.substr(size_before_raw.size()), "# HELP theirs t\n# TYPE theirs gauge\ntheirs 2\n");
  EXPECT_THROW(w.family("theirs", "gauge", ""), std::invalid_argument);
  EXPECT_EQ(w.families(), (std::vector<std::string>{"requests", "theirs"}));
}

}  // namespace
