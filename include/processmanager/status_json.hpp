// Status snapshots as JSON (Boost.JSON), for /status endpoints and tools.
//
// Only Boost.JSON's forward declarations are included, so that this header
// (and the umbrella header, which brings it) stays light: include
// <boost/json.hpp> (or <boost/json/value.hpp> and what you use of it) where
// you use the value, e.g. to serialize it.
#pragma once

#include <boost/json/fwd.hpp>
#include <processmanager/lifecycle.hpp>

namespace pm {

/// `status` as a JSON object: {"path", "state", "since" (ISO-8601 UTC with
/// microseconds), "restarts", "last_error", "ready", "stale", "children": [...]}.
/// The document is always valid JSON: in "path" and "last_error", each
/// invalid UTF-8 sequence is replaced by U+FFFD.
boost::json::value to_json(const ChildStatus& status);

/// The inverse of to_json: status_from_json(to_json(s)) == s when the
/// strings of `s` are valid UTF-8 (else they come back with U+FFFD). Throws
/// std::invalid_argument, naming the field and the path, for a document
/// that is not such an object.
ChildStatus status_from_json(const boost::json::value& value);

}  // namespace pm
