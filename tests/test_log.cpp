#include <processmanager/lifecycle.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <boost/system/system_error.hpp>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <processmanager/builtin/restart.hpp>

#include "../src/log.hpp"
#include "child_process.hpp"
#include "log_support.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
namespace json = boost::json;

using namespace pm::test::logs;

TEST(log_json, a_plain_line_is_one_object_with_ts_level_path_event_and_message) {
  LogSettings settings(pm::LogLevel::info);
  StderrCapture capture;
  pm::log(pm::LogLevel::warn, "root/db", "disk almost full");
  pm::log(pm::LogLevel::debug, "root/db", "below the level: not written");
  const auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 1u);
  const auto objects = parse_lines(lines);
  ASSERT_EQ(objects.size(), 1u);
  const json::object& o = objects[0];
  EXPECT_EQ(o.size(), 5u) << lines[0];
  expect_timestamp(str(o, "ts"));
  EXPECT_EQ(str(o, "level"), "warn");
  EXPECT_EQ(str(o, "path"), "root/db");
  EXPECT_EQ(str(o, "event"), "log");
  EXPECT_EQ(str(o, "message"), "disk almost full");
  EXPECT_EQ(lines[0].rfind("{\"ts\":\"", 0), 0u) << lines[0];  // ts first, for people reading raw lines
}

TEST(log_json, a_state_event_carries_its_state_and_previous_state_and_nothing_empty) {
  LogSettings settings(pm::LogLevel::debug);
  StderrCapture capture;
  pm::detail::log_event(pm::Event{.kind = pm::EventKind::state,
                                  .path = "root/api",
                                  .state = pm::ChildState::ready,
                                  .previous = pm::ChildState::running});
  pm::detail::log_event(
      pm::Event{.kind = pm::EventKind::control, .path = "root/api", .control = pm::ControlKind::reload});
  const auto objects = parse_lines(capture.lines());
  ASSERT_EQ(objects.size(), 2u);
  const json::object& state = objects[0];
  EXPECT_EQ(str(state, "level"), "debug");
  EXPECT_EQ(str(state, "path"), "root/api");
  EXPECT_EQ(str(state, "event"), "state");
  EXPECT_EQ(str(state, "message"), "running -> ready");
  EXPECT_EQ(str(state, "state"), "ready");
  EXPECT_EQ(str(state, "previous"), "running");
  for (const char* absent : {"backoff_ms", "cause", "restart", "control", "detail"}) {
    EXPECT_FALSE(state.contains(absent)) << absent;
  }
  EXPECT_EQ(state.size(), 7u);
  const json::object& control = objects[1];
  EXPECT_EQ(str(control, "event"), "control");
  EXPECT_EQ(str(control, "control"), "reload");
  EXPECT_FALSE(control.contains("state"));
}

TEST(log_json, a_managers_restarts_carry_their_number_backoff_and_cause) {
  LogSettings settings(pm::LogLevel::debug);  // before build(): routine events are built for the log
  auto child = std::make_shared<FailsTwice>("flaky");
  auto m = pm::ProcessManagerBuilder()
               .name("logtree")
               .strategy(pm::Strategy::one_for_one)
               .intensity(10, 60s)
               .pre_insert(child, pm::ChildOptions{.restart = quick})
               .build();
  StderrCapture capture;
  EXPECT_EQ(run_until_third_run(m, child), nullptr);
  const auto lines = capture.lines();
  const auto objects = parse_lines(lines);
  ASSERT_EQ(objects.size(), lines.size());
  std::vector<json::object> restarts;
  bool saw_ready = false;
  for (const auto& o : objects) {
    expect_timestamp(str(o, "ts"));
    EXPECT_NE(str(o, "path"), "<missing>");
    EXPECT_NE(str(o, "message"), "<missing>");
    if (str(o, "event") == "restart") restarts.push_back(o);
    if (str(o, "event") == "state" && str(o, "path") == "logtree/flaky" && str(o, "state") == "ready") {
      EXPECT_EQ(str(o, "previous"), "running");
      saw_ready = true;
    }
  }
  EXPECT_TRUE(saw_ready);
  ASSERT_EQ(restarts.size(), 2u);
  for (std::size_t i = 0; i < restarts.size(); ++i) {
    const json::object& r = restarts[i];
    SCOPED_TRACE(json::serialize(r));
    EXPECT_EQ(str(r, "level"), "warn");
    EXPECT_EQ(str(r, "path"), "logtree/flaky");
    ASSERT_TRUE(r.contains("restart") && r.at("restart").is_number());
    EXPECT_EQ(r.at("restart").to_number<std::int64_t>(), static_cast<std::int64_t>(i + 1));
    ASSERT_TRUE(r.contains("backoff_ms") && r.at("backoff_ms").is_number());
    EXPECT_EQ(r.at("backoff_ms").to_number<std::int64_t>(), i == 0 ? 3 : 6);
    EXPECT_EQ(str(r, "cause"), std::string("boom ").append(std::to_string(i + 1)));
    EXPECT_EQ(str(r, "detail"), "failed");
    EXPECT_EQ(str(r, "message"), "restart in " + std::string(i == 0 ? "3" : "6") + " ms after: boom " +
                                     std::to_string(i + 1) + " (failed)");
  }
}

TEST(log_json, a_restart_supervisors_restarts_carry_their_number_backoff_and_cause) {
  LogSettings settings(pm::LogLevel::warn);
  auto child = std::make_shared<FailsTwice>("worker");
  auto sup = std::make_shared<pm::RestartSupervisor>(child, quick);
  auto m = pm::ProcessManagerBuilder().name("root").pre_insert(sup).build();
  StderrCapture capture;
  EXPECT_EQ(run_until_third_run(m, child), nullptr);
  std::vector<json::object> restarts;
  for (const auto& o : parse_lines(capture.lines())) {
    if (str(o, "event") == "restart") restarts.push_back(o);
  }
  ASSERT_EQ(restarts.size(), 2u);
  for (std::size_t i = 0; i < restarts.size(); ++i) {
    const json::object& r = restarts[i];
    SCOPED_TRACE(json::serialize(r));
    const std::string n = std::to_string(i + 1);
    const std::string ms = i == 0 ? "3" : "6";
    EXPECT_EQ(str(r, "level"), "warn");
    EXPECT_EQ(str(r, "path"), "worker");
    EXPECT_EQ(str(r, "message"), "boom " + n + "; restarting in " + ms + " ms (restart " + n + ")");
    ASSERT_TRUE(r.contains("restart"));
    EXPECT_EQ(r.at("restart").to_number<std::int64_t>(), static_cast<std::int64_t>(i + 1));
    ASSERT_TRUE(r.contains("backoff_ms"));
    EXPECT_EQ(r.at("backoff_ms").to_number<std::int64_t>(), std::stoll(ms));
    EXPECT_EQ(str(r, "cause"), "boom " + n);
  }
}

TEST(log_json, quotes_backslashes_control_characters_and_bad_utf8_still_give_valid_json) {
  LogSettings settings(pm::LogLevel::info);
  const std::string path = "root/\"quoted\"\\back\nslash\ttab\x01\x1f\x7f";
  // Valid: é (2 bytes), € (3), 😀 (4). Invalid: a lone continuation byte,
  // 0xFF, an overlong '/', a UTF-16 surrogate, and a sequence cut short.
  const std::string message = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 | \x80 \xff \xc0\xaf \xed\xa0\x80 \xe2\x82";
  const std::string fffd = "\xef\xbf\xbd";
  const std::string expected = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 | " + fffd + " " + fffd + " " + fffd + fffd +
                               " " + fffd + fffd + fffd + " " + fffd + fffd;
  StderrCapture capture;
  pm::log(pm::LogLevel::error, path, message);
  pm::detail::log_event(pm::Event{.kind = pm::EventKind::give_up,
                                  .path = path,
                                  .cause = std::make_exception_ptr(std::runtime_error("bad \xff\"byte\"\n"))});
  const auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 2u);  // the newline inside is escaped, not written
  EXPECT_NE(lines[0].find("\\u0001"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("\\u001f"), std::string::npos) << lines[0];
  const auto objects = parse_lines(lines);
  ASSERT_EQ(objects.size(), 2u);
  EXPECT_EQ(str(objects[0], "path"), path);
  EXPECT_EQ(str(objects[0], "message"), expected);
  EXPECT_EQ(str(objects[1], "path"), path);
  EXPECT_EQ(str(objects[1], "event"), "give_up");
  EXPECT_EQ(str(objects[1], "cause"), "bad " + fffd + "\"byte\"\n");
}

TEST(log_text, set_log_format_text_writes_the_old_line) {
  LogSettings settings(pm::LogLevel::info, pm::LogFormat::text);
  EXPECT_EQ(pm::log_format(), pm::LogFormat::text);
  StderrCapture capture;
  pm::log(pm::LogLevel::info, "root/db", "hello \"there\"");
  pm::detail::log_event(pm::Event{.kind = pm::EventKind::restart,
                                  .path = "root/db",
                                  .cause = std::make_exception_ptr(std::runtime_error("boom")),
                                  .backoff = 200ms,
                                  .detail = "failed",
                                  .restart = 4});
  const auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 2u);
  for (const std::string& line : lines) {
    const std::size_t n = stamp_length(line);
    ASSERT_GT(n, 0u) << line;
    ASSERT_EQ(line.substr(n, 1), " ") << line;
  }
  EXPECT_EQ(lines[0].substr(stamp_length(lines[0]) + 1), "INFO root/db: hello \"there\"");
  EXPECT_EQ(lines[1].substr(stamp_length(lines[1]) + 1), "WARN root/db: restart in 200 ms after: boom (failed)");
}

TEST(log_json, a_users_sink_still_gets_level_path_and_message) {
  LogSettings settings(pm::LogLevel::debug);
  struct Line {
    pm::LogLevel level;
    std::string path;
    std::string message;
  };
  std::vector<Line> seen;
  pm::set_log_sink([&seen](pm::LogLevel level, std::string_view path, std::string_view message) {
    seen.push_back(Line{level, std::string(path), std::string(message)});
  });
  StderrCapture capture;
  pm::log(pm::LogLevel::info, "root/a", "plain");
  pm::detail::log_event(pm::Event{.kind = pm::EventKind::restart,
                                  .path = "root/b",
                                  .cause = std::make_exception_ptr(std::runtime_error("boom")),
                                  .backoff = 5ms,
                                  .detail = "failed",
                                  .restart = 1});
  EXPECT_EQ(capture.text(), "");
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].level, pm::LogLevel::info);
  EXPECT_EQ(seen[0].path, "root/a");
  EXPECT_EQ(seen[0].message, "plain");
  EXPECT_EQ(seen[1].level, pm::LogLevel::warn);
  EXPECT_EQ(seen[1].path, "root/b");
  EXPECT_EQ(seen[1].message, "restart in 5 ms after: boom (failed)");
}

TEST(log_format, pm_log_format_names_json_or_text_and_anything_else_is_text) {
  EXPECT_EQ(pm::detail::log_format_from("json"), pm::LogFormat::json);
  EXPECT_EQ(pm::detail::log_format_from("text"), pm::LogFormat::text);
  EXPECT_EQ(pm::detail::log_format_from(nullptr), pm::LogFormat::text);
  EXPECT_EQ(pm::detail::log_format_from(""), pm::LogFormat::text);
  EXPECT_EQ(pm::detail::log_format_from("JSON "), pm::LogFormat::text);
  EXPECT_EQ(pm::detail::log_format_from("yaml"), pm::LogFormat::text);
}

// Run by the next test as a child process, with PM_LOG_FORMAT set as it
// chooses; it is read once per process, so only a fresh one shows its effect.
TEST(log_format, child_writes_one_line_in_the_format_of_its_environment) {
  if (std::getenv("PM_TEST_LOG_FORMAT_CHILD") == nullptr) GTEST_SKIP() << "run by log_format.pm_log_format_*";
  pm::set_log_level(pm::LogLevel::info);
  std::printf("format %s\n", pm::log_format() == pm::LogFormat::json ? "json" : "text");
  std::fflush(stdout);
  pm::log(pm::LogLevel::info, "env/child", "hello");
  pm::set_log_level(std::nullopt);
}

std::string self_program() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("cannot read /proc/self/exe");
  return std::string(buf, static_cast<std::size_t>(n));
}

/// What a fresh process with PM_LOG_FORMAT=`value` reports and writes.
std::pair<std::string, std::string> child_with_format(const std::string& value) {
  pm::test::ChildProcess child(
      "/usr/bin/env", {"PM_LOG_FORMAT=" + value, "PM_TEST_LOG_FORMAT_CHILD=1", "PM_TEST_SHARDS=1", self_program(),
                       "--gtest_filter=log_format.child_writes_one_line_in_the_format_of_its_environment"});
  const std::string format = child.wait_prefix("format ");
  EXPECT_EQ(child.wait_exit(pm::test::hang_guard), 0);
  return {format, child.stderr_text()};
}

TEST(log_format, pm_log_format_json_in_the_environment_switches_the_default_sink_to_json) {
  const auto [format, err] = child_with_format("json");
  EXPECT_EQ(format, "format json");
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t nl = err.find('\n'); nl != std::string::npos; nl = err.find('\n', start)) {
    lines.push_back(err.substr(start, nl - start));
    start = nl + 1;
  }
  const auto objects = parse_lines(lines);
  ASSERT_EQ(objects.size(), 1u) << err;
  EXPECT_EQ(str(objects[0], "path"), "env/child");
  EXPECT_EQ(str(objects[0], "event"), "log");
  EXPECT_EQ(str(objects[0], "message"), "hello");
}

TEST(log_format, pm_log_format_other_than_json_keeps_text) {
  const auto [format, err] = child_with_format("JSON");
  EXPECT_EQ(format, "format text");
  EXPECT_NE(err.find(" INFO env/child: hello\n"), std::string::npos) << err;
  EXPECT_EQ(err.find('{'), std::string::npos) << err;
}

// Boost.System's what() holds where the error was raised; an operator needs
// the message and the code.
TEST(log_describe, a_boost_system_error_loses_its_source_location_unless_debug_logging_is_on) {
  LogSettings settings(pm::LogLevel::info, pm::log_format());
  static constexpr boost::source_location here = BOOST_CURRENT_LOCATION;
  const boost::system::error_code ec(EADDRINUSE, boost::system::system_category(), &here);
  const boost::system::system_error error(ec, "cannot listen");
  const std::string raw = error.what();
  ASSERT_NE(raw.find(" at "), std::string::npos) << raw;  // else this test proves nothing
  ASSERT_NE(raw.find("test_log.cpp:"), std::string::npos) << raw;
  const auto e = std::make_exception_ptr(error);
  const std::string short_text =
      "cannot listen: " + ec.message() + std::string(" [system:").append(std::to_string(EADDRINUSE)) + "]";
  EXPECT_EQ(pm::describe(e), short_text);
  pm::set_log_level(pm::LogLevel::debug);
  EXPECT_EQ(pm::describe(e), raw);
  pm::set_log_level(std::nullopt);  // off: the location is for debug logging only
  EXPECT_EQ(pm::describe(e), short_text);
}

TEST(log_describe, a_real_asio_failure_is_short_below_debug) {
  LogSettings settings(pm::LogLevel::info, pm::log_format());
  asio::io_context io;
  asio::ip::tcp::acceptor taken(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  asio::ip::tcp::acceptor second(io);
  second.open(asio::ip::tcp::v4());
  std::exception_ptr e;
  std::string raw;
  try {
    second.bind(taken.local_endpoint());  // the throwing overload: Asio adds its source location
  } catch (const boost::system::system_error& err) {
    raw = err.what();
    e = std::current_exception();
  }
  ASSERT_TRUE(e);
  const std::string text = pm::describe(e);
  EXPECT_EQ(text, "bind: " + boost::system::error_code(EADDRINUSE, boost::system::system_category()).message() +
                      std::string(" [system:").append(std::to_string(EADDRINUSE)) + "]")
      << raw;
  EXPECT_LT(text.size(), 60u) << text;
  pm::set_log_level(pm::LogLevel::debug);
  EXPECT_EQ(pm::describe(e), raw);
}

TEST(log_describe, a_std_system_error_names_its_code_and_loses_a_boost_location_it_carries) {
  LogSettings settings(pm::LogLevel::info, pm::log_format());
  const std::error_code code(EADDRINUSE, std::generic_category());
  const std::string n = std::to_string(EADDRINUSE);
  const auto plain = std::make_exception_ptr(std::system_error(code, "HealthServer 'h': cannot listen"));
  EXPECT_EQ(pm::describe(plain), "HealthServer 'h': cannot listen: " + code.message() + " [generic:" + n + "]");

  static constexpr boost::source_location here = BOOST_CURRENT_LOCATION;
  const boost::system::error_code bec(EADDRINUSE, boost::system::system_category(), &here);
  const std::string boost_what = boost::system::system_error(bec, "listen").what();
  const auto wrapped = std::make_exception_ptr(std::system_error(code, "accept loop: " + boost_what));
  const std::string text = pm::describe(wrapped);
  EXPECT_EQ(text.find("test_log.cpp"), std::string::npos) << text;
  EXPECT_EQ(text, "accept loop: listen: " + bec.message() + " [system:" + n + "]: " + code.message() +
                      " [generic:" + n + "]");
  pm::set_log_level(pm::LogLevel::debug);
  EXPECT_NE(pm::describe(wrapped).find("test_log.cpp"), std::string::npos);

  // Text that merely looks a little like a location is left alone.
  pm::set_log_level(pm::LogLevel::info);
  const auto lookalike = std::make_exception_ptr(std::runtime_error("[x at y] [a:b at c:d]"));
  EXPECT_EQ(pm::describe(lookalike), "[x at y] [a:b at c:d]");
}

}  // namespace
