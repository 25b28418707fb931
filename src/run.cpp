#include <processmanager/run.hpp>

#include <processmanager/builtin/signals.hpp>
#include <processmanager/systemd.hpp>

#include <csignal>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "log.hpp"

namespace pm {

using detail::log_line;

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
  bool finished = false;  // on `strand` only

  // The receiver runs beside the tree, not in it, for the tree's whole life:
  // so a second signal during the stop can still cancel the tree at once.
  std::shared_ptr<SignalReceiver> receiver;
  if (options.handle_signals && handle) {
    SignalReceiverOptions so;
    so.escalate = [strand, &root_cancel, &forced_by, &finished](int sig) {
      // The root's cancellation is emitted on the root's strand.
      asio::post(strand, [&root_cancel, &forced_by, &finished, sig] {
        if (finished) return;
        forced_by = sig;
        root_cancel.emit(asio::cancellation_type::terminal);
      });
    };
    receiver = std::make_shared<SignalReceiver>(handle, std::move(so));
    auto receiver_strand = asio::make_strand(io);
    receiver->listen(receiver_strand);  // before any thread runs: no signal slips through
    asio::co_spawn(receiver_strand, receiver->process_start(), asio::detached);
  }

  // Beside the tree too: it reports the stop while the tree stops.
  std::shared_ptr<SystemdNotifier> notifier;
  if (options.notify_systemd) {
    if (auto manager = std::dynamic_pointer_cast<ProcessManager>(tree)) {
      try {
        notifier = std::make_shared<SystemdNotifier>(manager);
      } catch (const std::invalid_argument& e) {
        // A malformed environment must not keep the service from running.
        log_line(LogLevel::warn, root_name, std::string("systemd notify disabled: ") + e.what());
      }
      if (notifier && notifier->enabled()) {
        asio::co_spawn(asio::make_strand(io), notifier->run(), asio::detached);
      } else {
        notifier.reset();
      }
    }
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
                     if (receiver) receiver->process_handle()->request_shutdown();
                     if (notifier) notifier->stop();
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
      // Each failure was logged where it happened (the manager's events);
      // here one summary line, so the exit is explained without repeats.
      log_line(LogLevel::error, root_name,
               "exiting with code 1: " + std::to_string(e.failures().size()) + " failure(s), the first '" +
                   e.process_name() + "' " + describe(e.root_cause()));
    } catch (const std::exception& e) {
      log_line(LogLevel::error, root_name, std::string("failed: ") + e.what());
    } catch (...) {
      log_line(LogLevel::error, root_name, "failed with an exception not derived from std::exception");
    }
  }
  if (forced_by != 0) return 128 + forced_by;
  return failure ? 1 : 0;
}

}  // namespace pm
