// Helpers for the log tests (test_log.cpp, test_log_records.cpp): stderr
// capture, the process-wide log settings put back, JSON lines parsed, and a
// child that fails twice.
#pragma once

#include <processmanager/processmanager.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "support.hpp"

namespace pm::test::logs {

using namespace std::chrono_literals;
namespace asio = pm::asio;
namespace json = boost::json;

/// Sends fd 2 to a temporary file until text() or the end of the scope,
/// whichever comes first, so that what the default sink writes can be read.
class StderrCapture {
 public:
  StderrCapture() : file_(std::tmpfile()), saved_(::dup(STDERR_FILENO)) {
    if (file_ == nullptr || saved_ < 0) throw std::runtime_error("cannot capture stderr");
    std::fflush(stderr);
    ::dup2(::fileno(file_), STDERR_FILENO);
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  ~StderrCapture() {
    restore();
    std::fclose(file_);
  }

  /// Everything written to fd 2 so far; stops the capture.
  std::string text() {
    restore();
    std::string all;
    std::rewind(file_);
    char chunk[4096];
    std::size_t n = 0;
    while ((n = std::fread(chunk, 1, sizeof chunk, file_)) > 0) all.append(chunk, n);
    return all;
  }

  /// text() as lines, without their '\n'; the last line must be complete.
  std::vector<std::string> lines() {
    const std::string all = text();
    EXPECT_TRUE(all.empty() || all.back() == '\n') << all;
    std::vector<std::string> out;
    std::size_t start = 0;
    for (std::size_t nl = all.find('\n'); nl != std::string::npos; nl = all.find('\n', start)) {
      out.push_back(all.substr(start, nl - start));
      start = nl + 1;
    }
    return out;
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    saved_ = -1;
  }

  std::FILE* file_;
  int saved_;
};

/// Puts the process-wide log settings back as the suite runs them (PM_LOG=off,
/// the default sink) and the format as it was, whatever the test did.
class LogSettings {
 public:
  explicit LogSettings(pm::LogLevel level, pm::LogFormat format = pm::LogFormat::json)
      : format_before_(pm::log_format()) {
    pm::set_log_level(level);
    pm::set_log_format(format);
  }
  LogSettings(const LogSettings&) = delete;
  LogSettings& operator=(const LogSettings&) = delete;
  ~LogSettings() {
    pm::set_log_sink({});
    pm::set_log_level(std::nullopt);
    pm::set_log_format(format_before_);
  }

 private:
  pm::LogFormat format_before_;
};

/// Every line parsed as a JSON object; a line that is not one fails the test.
inline std::vector<json::object> parse_lines(const std::vector<std::string>& lines) {
  std::vector<json::object> out;
  for (const auto& line : lines) {
    boost::system::error_code ec;
    json::value v = json::parse(line, ec);
    EXPECT_FALSE(ec) << "not JSON (" << ec.message() << "): " << line;
    if (ec) continue;
    EXPECT_TRUE(v.is_object()) << line;
    if (v.is_object()) out.push_back(std::move(v.as_object()));
  }
  return out;
}

inline std::string str(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr || !v->is_string()) return "<missing>";
  return std::string(v->as_string());
}

/// The length of the "YYYY-MM-DDTHH:MM:SS.mmmZ" stamp that `text` begins with, or 0.
/// (Not std::regex: g++ 12 warns falsely inside <regex> at -O1 with sanitizers.)
inline std::size_t stamp_length(std::string_view text) {
  constexpr std::string_view shape = "dddd-dd-ddTdd:dd:dd.dddZ";
  if (text.size() < shape.size()) return 0;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    const bool digit = text[i] >= '0' && text[i] <= '9';
    if (shape[i] == 'd' ? !digit : text[i] != shape[i]) return 0;
  }
  return shape.size();
}

/// "2026-12-02T01:42:56.123Z" and within a minute of now.
inline void expect_timestamp(const std::string& ts) {
  EXPECT_EQ(stamp_length(ts), ts.size()) << ts;
  std::tm tm{};
  ASSERT_NE(::strptime(ts.c_str(), "%Y-%m-%dT%H:%M:%S", &tm), nullptr) << ts;
  const std::time_t when = ::timegm(&tm);
  EXPECT_LT(std::abs(std::difftime(std::time(nullptr), when)), 60.0) << ts;
}

/// Fails its first two runs ("boom 1", "boom 2"), then idles until shutdown.
class FailsTwice : public pm::Runnable {
 public:
  explicit FailsTwice(std::string name) : name_(std::move(name)), guard_(name_) {}
  asio::awaitable<void> process_start() override {
    auto ticker = co_await guard_.runtime_ticker();
    const int run = runs.fetch_add(1) + 1;
    if (run <= 2) throw std::runtime_error(std::string("boom ").append(std::to_string(run)));
    for (;;) {
      auto msg = co_await ticker.next_control();
      if (msg.is_shutdown()) co_return;
    }
  }
  std::string process_name() const override { return name_; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

  std::atomic<int> runs{0};

 private:
  std::string name_;
  pm::RuntimeGuard guard_;
};

/// Runs `m` until `child` has run three times (two restarts), then shuts it down.
inline std::exception_ptr run_until_third_run(const std::shared_ptr<pm::ProcessManager>& m,
                                              const std::shared_ptr<FailsTwice>& child) {
  asio::io_context io;
  std::exception_ptr error;
  bool done = false;
  asio::co_spawn(asio::make_strand(io), m->process_start(), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  std::function<void()> check = [&] {
    if (done) return;
    if (child->runs < 3) {
      asio::post(io, check);
      return;
    }
    m->process_handle()->request_shutdown();
  };
  asio::post(io, check);
  pm::test::run_io(io);
  EXPECT_TRUE(done);
  return error;
}

inline const pm::RestartOptions quick{.policy = pm::RestartPolicy::transient,
                                      .max_restarts = 5,
                                      .window = 60s,
                                      .backoff = {.initial = 3ms, .factor = 2.0, .max = 50ms}};

}  // namespace pm::test::logs
