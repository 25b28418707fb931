// The blocking forms of wait_ready(), shutdown() and reload(), for code that
// is not a coroutine (main(), tests).
#include <processmanager/process_manager.hpp>

#include <optional>
#include <stdexcept>
#include <type_traits>

#include "core/run_state.hpp"

namespace pm {

namespace {

/// Whether `ex` is an executor of type `Inner`, or a strand of one, whose
/// context this thread runs.
template <class Inner>
bool runs_here_as(const asio::any_io_executor& ex) {
  if (const auto* plain = ex.target<Inner>()) return plain->running_in_this_thread();
  if (const auto* strand = ex.target<asio::strand<Inner>>())
    return strand->get_inner_executor().running_in_this_thread();
  return false;
}

/// Whether this thread is inside run() of the context behind `ex` (any of
/// its threads, not only the one a strand is on). Only io_context and
/// thread_pool executors, plain or stranded, can tell; others count as no.
bool runs_here(asio::any_io_executor ex) {
  // A strand of a type-erased executor is unwrapped until one of those
  // shows; the bound only guards against a pathological nesting.
  for (int hops = 0; hops < 8; ++hops) {
    if (runs_here_as<asio::io_context::executor_type>(ex) || runs_here_as<asio::thread_pool::executor_type>(ex)) {
      return true;
    }
    const auto* strand = ex.target<asio::strand<asio::any_io_executor>>();
    if (strand == nullptr) return false;
    ex = asio::any_io_executor(strand->get_inner_executor());
  }
  return false;
}

/// Runs `a` to its end on an io_context of this thread's own, and returns
/// what it produced or rethrows what it threw. A private io_context, not
/// the manager's: the waits complete on their caller's executor, so this
/// thread needs none of the manager's threads to hear the answer.
template <class T>
T block_on(asio::awaitable<T> a) {
  asio::io_context local;
  std::optional<std::conditional_t<std::is_void_v<T>, bool, T>> result;
  std::exception_ptr error;
  if constexpr (std::is_void_v<T>) {
    asio::co_spawn(local, std::move(a), [&](std::exception_ptr e) {
      error = std::move(e);
      result.emplace(true);
    });
  } else {
    asio::co_spawn(local, std::move(a), [&](std::exception_ptr e, T v) {
      error = std::move(e);
      if (!error) result.emplace(std::move(v));
    });
  }
  // co_spawn counts the coroutine as work until it ends, so run() returns
  // only then.
  local.run();
  if (error) std::rethrow_exception(error);
  if constexpr (!std::is_void_v<T>) return std::move(*result);
}

}  // namespace

void ProcessManager::refuse_on_own_executor(const char* call) const {
  std::optional<asio::any_io_executor> ex;
  std::shared_ptr<const detail::ShardRing> shards;
  {
    std::lock_guard lock(core_->mu);
    if (auto run = core_->current.lock()) {
      ex.emplace(run->base);
      shards = run->shards;
    }
  }
  // Sharded, every shard's thread runs some of what it waits for.
  bool here = ex && runs_here(*ex);
  if (shards) {
    for (const auto& shard : shards->shards) here = here || shard.running_in_this_thread();
  }
  if (here) {
    throw std::logic_error(std::string("ProcessManager '")
                               .append(core_->name)
                               .append("': ")
                               .append(call)
                               .append(" called from a thread that runs the manager's executor, where blocking "
                                       "could stall what it waits for; co_await the awaitable form there"));
  }
}

bool ProcessManager::wait_ready_blocking(std::chrono::nanoseconds timeout) {
  refuse_on_own_executor("wait_ready_blocking()");
  return block_on(wait_ready(timeout));
}

void ProcessManager::shutdown_blocking() {
  refuse_on_own_executor("shutdown_blocking()");
  block_on(handle_->shutdown());
}

void ProcessManager::reload_blocking() {
  refuse_on_own_executor("reload_blocking()");
  block_on(handle_->reload());
}

}  // namespace pm
