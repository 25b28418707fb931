// pm::shard_across: a set of io_contexts whose managers spread their
// children across the set.
#include "shards.hpp"

#include <algorithm>
#include <stdexcept>

#include <processmanager/run.hpp>

namespace pm {

void shard_across(const std::vector<asio::io_context*>& contexts) {
  if (contexts.empty()) throw std::invalid_argument("pm::shard_across: no io_context given");
  for (std::size_t i = 0; i < contexts.size(); ++i) {
    if (contexts[i] == nullptr) {
      throw std::invalid_argument("pm::shard_across: io_context " + std::to_string(i) + " is null");
    }
    if (std::find(contexts.begin(), contexts.begin() + static_cast<std::ptrdiff_t>(i), contexts[i]) !=
        contexts.begin() + static_cast<std::ptrdiff_t>(i)) {
      throw std::invalid_argument("pm::shard_across: io_context " + std::to_string(i) + " is given twice");
    }
    // Starts, wake-ups and cancellations are posted into a shard from the
    // others' threads: its scheduler and reactor must lock.
    const int hint = asio::use_service<asio::detail::io_context_impl>(*contexts[i]).concurrency_hint();
    if (BOOST_ASIO_CONCURRENCY_HINT_IS_SPECIAL(hint) &&
        (!BOOST_ASIO_CONCURRENCY_HINT_IS_LOCKING(SCHEDULER, hint) ||
         !BOOST_ASIO_CONCURRENCY_HINT_IS_LOCKING(REACTOR_REGISTRATION, hint) ||
         !BOOST_ASIO_CONCURRENCY_HINT_IS_LOCKING(REACTOR_IO, hint))) {
      throw std::invalid_argument("pm::shard_across: io_context " + std::to_string(i) +
                                  " was made with a concurrency hint that turns locking off; shards are posted "
                                  "to from each other's threads");
    }
  }
  std::shared_ptr<detail::ShardRing> ring;
  if (contexts.size() > 1) {
    ring = std::make_shared<detail::ShardRing>();
    ring->shards.reserve(contexts.size());
    for (auto* c : contexts) ring->shards.push_back(c->get_executor());
  }
  for (auto* c : contexts) asio::use_service<detail::ShardService>(*c).set(ring);
}

namespace detail {

std::shared_ptr<const ShardRing> shards_of(const asio::any_io_executor& base) {
  const auto* io = base.target<asio::io_context::executor_type>();
  if (io == nullptr || !asio::has_service<ShardService>(io->context())) return nullptr;
  return asio::use_service<ShardService>(io->context()).ring();
}

}  // namespace detail
}  // namespace pm
