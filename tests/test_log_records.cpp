// Record sinks (set_log_record_sink, LogRecord, format_log_line): what a
// sink that forwards to another logger receives, and that the default sink's
// lines are exactly format_log_line's.
#include <processmanager/lifecycle.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../src/log.hpp"
#include "log_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace pm::test::logs;

/// A record copied out of the sink's call, which is all a record is valid for.
struct Kept {
  pm::LogLevel level;
  std::string path;
  std::string message;
  std::chrono::system_clock::time_point time;
  std::optional<pm::Event> event;
};

Kept keep(const pm::LogRecord& r) {
  return Kept{.level = r.level,
              .path = std::string(r.path),
              .message = std::string(r.message),
              .time = r.time,
              .event = r.event != nullptr ? std::optional<pm::Event>(*r.event) : std::nullopt};
}

std::string what(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "?";
  }
}

pm::Event restart_event() {
  return pm::Event{.kind = pm::EventKind::restart,
                   .path = "root/db",
                   .cause = std::make_exception_ptr(std::runtime_error("boom")),
                   .backoff = 200ms,
                   .detail = "failed",
                   .restart = 4};
}

/// 2026-12-02T01:42:56.123Z
std::chrono::system_clock::time_point fixed_time() {
  using namespace std::chrono;
  return sys_days{year{2026} / 12 / 2} + 1h + 42min + 56s + 123ms;
}

TEST(log_records, a_record_sink_gets_the_event_behind_each_line_of_a_managers_restarts) {
  LogSettings settings(pm::LogLevel::debug);  // before build(): routine events are built for the log
  std::vector<Kept> seen;
  pm::set_log_record_sink([&seen](const pm::LogRecord& r) { seen.push_back(keep(r)); });
  auto child = std::make_shared<FailsTwice>("flaky");
  auto m = pm::ProcessManagerBuilder()
               .name("records")
               .intensity(10, 60s)
               .pre_insert(child, pm::ChildOptions{.restart = quick})
               .build();
  const auto before = std::chrono::system_clock::now();
  EXPECT_EQ(run_until_third_run(m, child), nullptr);
  pm::log(pm::LogLevel::info, "records/x", "a plain line");
  const auto after = std::chrono::system_clock::now();

  std::vector<const Kept*> restarts;
  bool saw_ready = false;
  ASSERT_FALSE(seen.empty());
  for (const Kept& k : seen) {
    SCOPED_TRACE(k.path + ": " + k.message);
    EXPECT_GE(k.time, before);
    EXPECT_LE(k.time, after);
    if (!k.event) continue;
    // A record of an event says what the event says, in the same words.
    EXPECT_EQ(k.path, k.event->path);
    EXPECT_EQ(k.level, pm::level_of(*k.event));
    EXPECT_EQ(k.message, pm::describe(*k.event));
    if (k.event->kind == pm::EventKind::restart) restarts.push_back(&k);
    if (k.event->kind == pm::EventKind::state && k.path == "records/flaky" && k.event->state == pm::ChildState::ready) {
      EXPECT_EQ(k.event->previous, pm::ChildState::running);
      saw_ready = true;
    }
  }
  EXPECT_TRUE(saw_ready);
  ASSERT_EQ(restarts.size(), 2u);
  for (std::uint32_t i = 0; i < 2; ++i) {
    const pm::Event& ev = *restarts[i]->event;
    EXPECT_EQ(restarts[i]->level, pm::LogLevel::warn);
    EXPECT_EQ(ev.path, "records/flaky");
    EXPECT_EQ(ev.restart, i + 1);
    EXPECT_EQ(ev.backoff, i == 0 ? std::chrono::nanoseconds(3ms) : std::chrono::nanoseconds(6ms));
    ASSERT_TRUE(ev.cause);
    EXPECT_EQ(what(ev.cause), std::string("boom ").append(std::to_string(i + 1)));
  }
  const Kept& plain = seen.back();
  EXPECT_EQ(plain.path, "records/x");
  EXPECT_EQ(plain.message, "a plain line");
  EXPECT_EQ(plain.level, pm::LogLevel::info);
  EXPECT_FALSE(plain.event.has_value());
}

TEST(log_records, the_record_of_a_logged_event_points_at_that_event) {
  LogSettings settings(pm::LogLevel::debug);
  const pm::Event* pointed = nullptr;
  std::string message;
  pm::set_log_record_sink([&](const pm::LogRecord& r) {
    pointed = r.event;
    message = std::string(r.message);
  });
  const pm::Event ev = restart_event();
  pm::detail::log_event(ev, pm::LogLevel::error, "said otherwise");
  EXPECT_EQ(pointed, &ev);
  EXPECT_EQ(message, "said otherwise");
}

TEST(log_records, format_log_line_writes_the_default_sinks_text_and_json_exactly) {
  const pm::Event ev = restart_event();
  const pm::LogRecord with_event{.level = pm::LogLevel::warn,
                                 .path = "root/db",
                                 .message = "restart in 200 ms after: boom (failed)",
                                 .time = fixed_time(),
                                 .event = &ev};
  EXPECT_EQ(pm::format_log_line(with_event, pm::LogFormat::text),
            "2026-12-02T01:42:56.123Z WARN root/db: restart in 200 ms after: boom (failed)");
  EXPECT_EQ(pm::format_log_line(with_event, pm::LogFormat::json),
            R"j({"ts":"2026-12-02T01:42:56.123Z","level":"warn","path":"root/db","event":"restart",)j"
            R"j("message":"restart in 200 ms after: boom (failed)","backoff_ms":200,"cause":"boom",)j"
            R"j("restart":4,"detail":"failed"})j");
  const pm::LogRecord plain{
      .level = pm::LogLevel::error, .path = "a\"b", .message = "x\ny\xff", .time = fixed_time(), .event = nullptr};
  EXPECT_EQ(pm::format_log_line(plain, pm::LogFormat::json),
            R"({"ts":"2026-12-02T01:42:56.123Z","level":"error","path":"a\"b","event":"log",)"
            "\"message\":\"x\\ny\xEF\xBF\xBD\"}");
  // A record made with no time at all still formats (as the epoch).
  EXPECT_EQ(pm::format_log_line(pm::LogRecord{}, pm::LogFormat::text), "1970-01-01T00:00:00.000Z INFO : ");
}

TEST(log_records, the_default_sink_writes_format_log_line_of_the_same_record) {
  for (const pm::LogFormat format : {pm::LogFormat::text, pm::LogFormat::json}) {
    SCOPED_TRACE(format == pm::LogFormat::json ? "json" : "text");
    LogSettings settings(pm::LogLevel::debug, format);
    const pm::Event ev = restart_event();
    std::vector<std::string> formatted;
    pm::set_log_record_sink([&](const pm::LogRecord& r) { formatted.push_back(pm::format_log_line(r, format)); });
    pm::log(pm::LogLevel::info, "root/a", "plain \"quoted\"");
    pm::detail::log_event(ev);
    pm::set_log_sink({});
    StderrCapture capture;
    pm::log(pm::LogLevel::info, "root/a", "plain \"quoted\"");
    pm::detail::log_event(ev);
    const auto lines = capture.lines();
    ASSERT_EQ(lines.size(), 2u);
    ASSERT_EQ(formatted.size(), 2u);
    for (std::size_t i = 0; i < 2; ++i) {
      // Equal but for the time, which the two calls cannot share.
      if (format == pm::LogFormat::text) {
        ASSERT_GT(stamp_length(lines[i]), 0u) << lines[i];
        EXPECT_EQ(lines[i].substr(stamp_length(lines[i])), formatted[i].substr(stamp_length(formatted[i])));
      } else {
        auto a = parse_lines({lines[i]});
        auto b = parse_lines({formatted[i]});
        ASSERT_EQ(a.size(), 1u);
        ASSERT_EQ(b.size(), 1u);
        expect_timestamp(str(a[0], "ts"));
        a[0].erase("ts");
        b[0].erase("ts");
        EXPECT_EQ(a[0], b[0]) << lines[i] << "\n" << formatted[i];
      }
    }
  }
}

TEST(log_records, the_later_of_set_log_sink_and_set_log_record_sink_wins) {
  LogSettings settings(pm::LogLevel::info, pm::LogFormat::text);
  int plain_lines = 0;
  int record_lines = 0;
  const auto plain = [&](pm::LogLevel, std::string_view, std::string_view) { ++plain_lines; };
  const auto records = [&](const pm::LogRecord&) { ++record_lines; };
  StderrCapture capture;
  pm::set_log_record_sink(records);
  pm::set_log_sink(plain);
  pm::log(pm::LogLevel::info, "p", "1");
  EXPECT_EQ(plain_lines, 1);
  EXPECT_EQ(record_lines, 0);
  pm::set_log_record_sink(records);
  pm::log(pm::LogLevel::info, "p", "2");
  EXPECT_EQ(plain_lines, 1);
  EXPECT_EQ(record_lines, 1);
  pm::set_log_record_sink({});  // the default again, whichever kind was set
  pm::log(pm::LogLevel::info, "p", "3");
  pm::set_log_sink(plain);
  pm::set_log_record_sink({});
  pm::log(pm::LogLevel::info, "p", "4");
  EXPECT_EQ(plain_lines, 1);
  EXPECT_EQ(record_lines, 1);
  const auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].substr(stamp_length(lines[0])), " INFO p: 3");
  EXPECT_EQ(lines[1].substr(stamp_length(lines[1])), " INFO p: 4");
}

TEST(log_records, a_throwing_record_sink_loses_only_its_line) {
  LogSettings settings(pm::LogLevel::debug);
  int calls = 0;
  pm::set_log_record_sink([&](const pm::LogRecord&) {
    ++calls;
    throw std::runtime_error("the sink is broken");
  });
  EXPECT_NO_THROW(pm::log(pm::LogLevel::error, "p", "1"));
  EXPECT_NO_THROW(pm::detail::log_event(restart_event()));
  EXPECT_NO_THROW(pm::log(pm::LogLevel::error, "p", "3"));
  EXPECT_EQ(calls, 3);
}

TEST(log_records, a_line_logged_from_inside_the_sink_goes_to_the_default_sink_not_back_into_it) {
  LogSettings settings(pm::LogLevel::info, pm::LogFormat::text);
  int calls = 0;
  pm::set_log_record_sink([&](const pm::LogRecord& r) {
    ++calls;
    // A sink that reports its own trouble through the library's log must
    // not recurse until the stack runs out.
    pm::log(pm::LogLevel::warn, "sink", std::string("could not forward: ").append(r.message));
  });
  StderrCapture capture;
  pm::log(pm::LogLevel::info, "p", "hello");
  pm::log(pm::LogLevel::info, "p", "again");
  EXPECT_EQ(calls, 2);
  const auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].substr(stamp_length(lines[0])), " WARN sink: could not forward: hello");
  EXPECT_EQ(lines[1].substr(stamp_length(lines[1])), " WARN sink: could not forward: again");
}

TEST(log_records, a_sink_that_replaces_itself_is_left_whole_and_the_next_line_goes_to_the_new_one) {
  LogSettings settings(pm::LogLevel::info);
  std::vector<std::string> first;
  std::vector<std::string> second;
  pm::set_log_record_sink([&](const pm::LogRecord& r) {
    first.emplace_back(r.message);
    // Destroys the std::function being called if the library held it only
    // through the sink slot.
    pm::set_log_record_sink([&](const pm::LogRecord& r2) { second.emplace_back(r2.message); });
    first.emplace_back("still here");
  });
  pm::log(pm::LogLevel::info, "p", "1");
  pm::log(pm::LogLevel::info, "p", "2");
  EXPECT_EQ(first, (std::vector<std::string>{"1", "still here"}));
  EXPECT_EQ(second, std::vector<std::string>{"2"});
}

TEST(log_records, sinks_swapped_while_four_threads_log_get_every_line_exactly_once) {
  LogSettings settings(pm::LogLevel::info);
  constexpr int threads = 4;
  constexpr int per_thread = 2000;
  std::atomic<int> a{0};
  std::atomic<int> b{0};
  std::atomic<int> bad{0};
  const auto check = [&bad](const pm::LogRecord& r) {
    if (r.path != "t" || r.message != "line" || r.event != nullptr) bad.fetch_add(1);
  };
  pm::set_log_record_sink([&](const pm::LogRecord& r) {
    check(r);
    a.fetch_add(1);
  });
  std::atomic<int> running{threads};
  std::vector<std::thread> loggers;
  for (int t = 0; t < threads; ++t) {
    loggers.emplace_back([&running] {
      for (int i = 0; i < per_thread; ++i) pm::log(pm::LogLevel::info, "t", "line");
      running.fetch_sub(1);
    });
  }
  for (int swaps = 0; running.load() > 0; ++swaps) {
    if (swaps % 2 == 0) {
      pm::set_log_record_sink([&](const pm::LogRecord& r) {
        check(r);
        b.fetch_add(1);
      });
    } else {
      pm::set_log_sink([&](pm::LogLevel, std::string_view path, std::string_view message) {
        check(pm::LogRecord{.path = path, .message = message});
        a.fetch_add(1);
      });
    }
    std::this_thread::yield();
  }
  for (auto& t : loggers) t.join();
  EXPECT_EQ(a.load() + b.load(), threads * per_thread);
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
