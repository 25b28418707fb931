// Executors that run one handler at a time, for work whose cancellation is
// delivered through its executor.
#pragma once

#include <boost/asio/any_io_executor.hpp>

namespace pm::detail {

/// `ex` itself when it already runs its handlers one at a time (a strand,
/// or an io_context promised one thread), otherwise a new strand of it.
boost::asio::any_io_executor serial_executor(const boost::asio::any_io_executor& ex);

}  // namespace pm::detail
