#include <processmanager/run.hpp>

#include <csignal>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "log.hpp"

namespace pm {

using detail::log_line;

namespace {

const char* signal_name(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    default:
      return "signal";
  }
}

}  // namespace

int run(std::shared_ptr<Runnable> root, RunOptions options) {
  if (!root) throw std::invalid_argument("pm::run: the root runnable is null");
  // Owned here for the whole run, whatever the caller does with its copy.
  const std::shared_ptr<Runnable> tree = std::move(root);
  const std::size_t threads = options.threads == 0 ? 1 : options.threads;
  const std::string root_name = tree->process_name();

  asio::io_context io(static_cast<int>(threads));
  auto strand = asio::make_strand(io);
  auto handle = tree->process_handle();
  asio::cancellation_signal root_cancel;  // emitted on `strand` only
  std::exception_ptr failure;
  int forced_by = 0;
  std::optional<asio::signal_set> signals;
  bool finished = false;  // on `strand` only

  if (options.handle_signals) {
    signals.emplace(io, SIGINT, SIGTERM);
    // The first signal asks for a graceful stop; a second one does not wait
    // for the grace period but cancels the tree at once.
    struct OnSignal {
      asio::signal_set* set;
      std::shared_ptr<ProcessControlHandler> handle;
      asio::cancellation_signal* cancel;
      int* forced_by;
      bool* finished;
      asio::strand<asio::io_context::executor_type> strand;
      int seen = 0;
      void operator()(const boost::system::error_code& ec, int sig) {
        if (ec || *finished) return;
        ++seen;
        if (seen == 1) {
          log_line("INFO", "pm::run", std::string("received ") + signal_name(sig) + ", shutting down gracefully");
          if (handle) handle->request_shutdown();
        } else {
          log_line("WARN", "pm::run", std::string("received ") + signal_name(sig) + " again, stopping at once");
          *forced_by = sig;
          cancel->emit(asio::cancellation_type::terminal);
        }
        set->async_wait(asio::bind_executor(strand, std::move(*this)));
      }
    };
    signals->async_wait(
        asio::bind_executor(strand, OnSignal{&*signals, handle, &root_cancel, &forced_by, &finished, strand}));
  }

  asio::awaitable<void> body;
  try {
    body = tree->process_start();
  } catch (...) {
    failure = std::current_exception();
  }
  if (!failure) {
    asio::co_spawn(strand, std::move(body),
                   asio::bind_cancellation_slot(root_cancel.slot(), [&](const std::exception_ptr& e) {
                     failure = e;
                     finished = true;
                     if (signals) signals->cancel();
                   }));
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (std::size_t i = 1; i < threads; ++i) pool.emplace_back([&io] { io.run(); });
    io.run();
    for (auto& t : pool) t.join();
  }

  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const ProcessError& e) {
      for (const auto& f : e.failures()) log_line("ERROR", f.process_name, "failed: " + describe(f.cause));
    } catch (const std::exception& e) {
      log_line("ERROR", root_name, std::string("failed: ") + e.what());
    } catch (...) {
      log_line("ERROR", root_name, "failed with an exception not derived from std::exception");
    }
  }
  if (forced_by != 0) return 128 + forced_by;
  return failure ? 1 : 0;
}

}  // namespace pm
