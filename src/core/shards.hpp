// The shards of a sharded run: io_contexts, one thread each, across which a
// manager running on any of them places its children (pm::shard_across).
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <boost/asio.hpp>

namespace pm::detail {

namespace asio = boost::asio;

/// The shards of one set, shared by the service on each of them.
struct ShardRing {
  std::vector<asio::io_context::executor_type> shards;
  /// Round-robin: the shard of the next child placed without a shard of
  /// its own. Relaxed: any spread is correct, an even one is only faster.
  mutable std::atomic<std::size_t> next{0};

  /// The index of the shard for a child: `wanted` modulo the count, or the
  /// next in turn.
  std::size_t pick(const std::optional<std::size_t>& wanted) const noexcept {
    if (wanted) return *wanted % shards.size();
    return next.fetch_add(1, std::memory_order_relaxed) % shards.size();
  }
};

/// Attached to each io_context of a set: how a manager finds the set from
/// the executor it runs on. Read once per run, not per child.
class ShardService final : public asio::execution_context::service {
 public:
  using key_type = ShardService;
  static inline asio::execution_context::id id;

  explicit ShardService(asio::execution_context& ctx) : asio::execution_context::service(ctx) {}

  std::shared_ptr<const ShardRing> ring() const {
    std::lock_guard lock(mu_);
    return ring_;
  }
  void set(std::shared_ptr<const ShardRing> r) {
    std::lock_guard lock(mu_);
    ring_ = std::move(r);
  }

 private:
  void shutdown() override {}

  mutable std::mutex mu_;
  std::shared_ptr<const ShardRing> ring_;  // null, or a set of at least two
};

/// The set the io_context under `base` belongs to, or null.
std::shared_ptr<const ShardRing> shards_of(const asio::any_io_executor& base);

}  // namespace pm::detail
