// The library's log through spdlog (Debian's libspdlog-dev). A record sink
// hands each line to an spdlog logger at the line's own time and level; for
// an event it adds the event's fields (restart number, backoff, cause), so
// the program's one logger says what the supervisor did in its own format.
// With --json it forwards the library's JSON line instead, for a log
// shipper that reads one object per line.
//
// The program: a worker fails twice, is restarted twice with backoff, then
// starts serving and asks the tree to stop.
#include <processmanager/processmanager.hpp>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace asio = pm::asio;
using namespace std::chrono_literals;

namespace {

spdlog::level::level_enum to_spdlog(pm::LogLevel level) {
  switch (level) {
    case pm::LogLevel::debug:
      return spdlog::level::debug;
    case pm::LogLevel::info:
      return spdlog::level::info;
    case pm::LogLevel::warn:
      return spdlog::level::warn;
    case pm::LogLevel::error:
      return spdlog::level::err;
  }
  return spdlog::level::err;
}

/// " restart=2 backoff_ms=20" for an event that has them; the cause is
/// already in the message.
std::string fields(const pm::Event* ev) {
  std::string out;
  if (ev == nullptr) return out;
  out.append(" event=").append(pm::to_string(ev->kind));
  if (ev->restart) out.append(" restart=").append(std::to_string(*ev->restart));
  if (ev->backoff) {
    out.append(" backoff_ms=")
        .append(std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(*ev->backoff).count()));
  }
  if (ev->state) out.append(" state=").append(pm::to_string(*ev->state));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const bool json = argc > 1 && std::string_view(argv[1]) == "--json";
  auto logger = spdlog::stdout_logger_mt("app");
  logger->set_level(spdlog::level::debug);
  logger->flush_on(spdlog::level::debug);
  // In JSON the line is whole already; otherwise spdlog's own layout.
  logger->set_pattern(json ? "%v" : "%Y-%m-%dT%H:%M:%S.%e %l [%n] %v");

  pm::set_log_level(pm::LogLevel::info);  // what reaches the sink; spdlog may filter further
  pm::set_log_record_sink([logger, json](const pm::LogRecord& r) {
    // The views live only for this call: spdlog formats before it returns.
    const std::string line = json ? pm::format_log_line(r, pm::LogFormat::json)
                                  : std::string(r.path).append(": ").append(r.message).append(fields(r.event));
    logger->log(r.time, spdlog::source_loc{}, to_spdlog(r.level), line);
  });

  auto root_handle = std::make_shared<std::shared_ptr<pm::ProcessControlHandler>>();
  auto attempts = std::make_shared<int>(0);
  auto flaky = pm::make_runnable("flaky", [attempts, root_handle](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    if (++*attempts <= 2)
      throw std::runtime_error(std::string("lost the queue (attempt ").append(std::to_string(*attempts)).append(")"));
    spdlog::get("app")->info("app/flaky: serving after {} attempts", *attempts);
    (*root_handle)->request_shutdown();
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
    }
  });
  pm::RestartOptions restart;
  restart.policy = pm::RestartPolicy::transient;
  restart.backoff = {.initial = 10ms, .factor = 2.0, .max = 100ms, .jitter = false};
  auto root = pm::ProcessManagerBuilder().name("app").pre_insert(flaky, pm::ChildOptions{.restart = restart}).build();
  *root_handle = root->process_handle();
  const int code = pm::run(root, {.handle_signals = false});
  logger->info("exit code {} after {} attempts", code, *attempts);
  pm::set_log_record_sink({});  // the sink holds the logger; let it go before spdlog's registry does
  return code == 0 && *attempts == 3 ? 0 : 1;
}
