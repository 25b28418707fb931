// ProcessManager: runs child services concurrently and supervises them.
#pragma once

#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <processmanager/context.hpp>

namespace pm {

namespace detail {
class ManagerCore;
class ManagerHandle;
}  // namespace detail

/// One child's failure.
struct Failure {
  std::string process_name;  ///< its path, "root/db/writer" when nested
  std::exception_ptr cause;  ///< what it threw
  std::string reason{};      ///< why it counts as failed, when not just "it threw" ("restart intensity exceeded ...")
};

/// What a failing manager throws once all its children have ended.
class ProcessError : public std::runtime_error {
 public:
  /// `failures` lists every failure, the first one first; when empty, it
  /// becomes the single failure {process_name, cause, reason}.
  ProcessError(std::string process_name, std::exception_ptr cause, std::vector<Failure> failures = {},
               std::string reason = {});
  /// The path of the child that failed first.
  const std::string& process_name() const noexcept { return failures_.front().process_name; }
  /// What it threw.
  std::exception_ptr cause() const noexcept { return failures_.front().cause; }
  /// Why it counts as failed when that is more than "it threw" (else empty).
  const std::string& reason() const noexcept { return failures_.front().reason; }
  /// Every failure, the first one first.
  const std::vector<Failure>& failures() const noexcept { return failures_; }

 private:
  std::vector<Failure> failures_;
};

/// The text of an exception: what() for std::exception, else a placeholder.
std::string describe(const std::exception_ptr& e);
/// A failure in words: "failed: <cause>", or "<reason>; last failure: <cause>".
std::string describe(const Failure& f);

/// Runs its children concurrently, each on its own strand of the executor
/// it runs on. The first child that throws makes it shut the others down
/// gracefully; process_start() then throws ProcessError once all ended.
/// A child that returns normally is done; the others go on. Shutdown asks
/// every child at once; a child still running after the grace period is
/// cancelled (terminal cancellation), and one that ignores even that is
/// abandoned after a further bound, so the manager never hangs on it.
/// Managers nest: control sent to a manager reaches its whole subtree.
class ProcessManager : public Runnable {
 public:
  /// A manager named "process-manager-<id>" with the default options.
  ProcessManager();
  ~ProcessManager() override;
  ProcessManager(const ProcessManager&) = delete;
  ProcessManager& operator=(const ProcessManager&) = delete;

  /// Adds a child to start with the manager. Throws std::logic_error while
  /// the manager runs (use add()), std::invalid_argument for a null child.
  void insert(std::shared_ptr<Runnable> child);
  /// Starts a child in the running manager at once, from any thread. During
  /// shutdown the child is started and asked to shut down straight away.
  /// Throws std::logic_error when the manager is not running,
  /// std::invalid_argument for a null child.
  void add(std::shared_ptr<Runnable> child);

  /// Runs every child until all have ended. Returns when every child ended
  /// (or was abandoned); throws ProcessError if any child failed. Throws
  /// std::logic_error if this manager is already running. Honours terminal
  /// cancellation by cancelling every child at once.
  asio::awaitable<void> process_start() override;
  std::string process_name() const override;
  /// The manager's handle: control reaches every child; shutdown() completes
  /// once the whole subtree has stopped. It does not keep the manager alive
  /// (a child may hold its own manager's handle without a cycle); once the
  /// manager is gone it does nothing.
  std::shared_ptr<ProcessControlHandler> process_handle() override;

  /// How long shutdown waits for children before cancelling them.
  std::chrono::nanoseconds shutdown_grace_period() const;
  /// How long, after terminal cancellation, before a child is abandoned.
  std::chrono::nanoseconds abandon_timeout() const;
  /// Whether finished children are dropped from the books at once.
  bool auto_cleanup() const;
  /// True while process_start() runs.
  bool is_running() const;
  /// Children in the books: the running ones, plus those that finished
  /// normally when auto_cleanup is off.
  std::size_t child_count() const;
  /// Children that are running now.
  std::size_t running_count() const;

 private:
  friend class ProcessManagerBuilder;
  explicit ProcessManager(std::shared_ptr<detail::ManagerCore> core);
  std::shared_ptr<detail::ManagerCore> core_;
  std::shared_ptr<detail::ManagerHandle> handle_;
};

/// Configures and builds a ProcessManager.
class ProcessManagerBuilder {
 public:
  ProcessManagerBuilder();
  /// The manager's name (the first element of its children's paths).
  ProcessManagerBuilder& name(std::string name);
  /// How long shutdown waits before cancelling children. Default 30 s.
  ProcessManagerBuilder& shutdown_grace_period(std::chrono::nanoseconds grace);
  /// How long after terminal cancellation a child is abandoned. Default 5 s.
  ProcessManagerBuilder& abandon_timeout(std::chrono::nanoseconds timeout);
  /// Drop finished children from the books at once. Default true.
  ProcessManagerBuilder& auto_cleanup(bool on);
  /// A child to start with the manager. Throws std::invalid_argument if null.
  ProcessManagerBuilder& pre_insert(std::shared_ptr<Runnable> child);
  /// The manager.
  std::shared_ptr<ProcessManager> build();

 private:
  std::string name_;
  std::chrono::nanoseconds grace_;
  std::chrono::nanoseconds abandon_;
  bool auto_cleanup_ = true;
  std::vector<std::shared_ptr<Runnable>> children_;
};

}  // namespace pm
