#include <processmanager/status_json.hpp>

#include <boost/json.hpp>

#include <cstdio>
#include <ctime>
#include <stdexcept>
#include <string>
#include <string_view>

namespace pm {

namespace json = boost::json;

namespace {

std::string iso8601(std::chrono::system_clock::time_point t) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(us / 1000000);
  long long frac = us % 1000000;
  if (frac < 0) {
    frac += 1000000;
    --secs;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
  return buf;
}

/// `text` as valid UTF-8: each maximal invalid subsequence (a stray or
/// truncated byte, an overlong form, a surrogate, beyond U+10FFFF) becomes
/// one U+FFFD, as the Unicode standard recommends; valid text is unchanged.
/// JSON strings must be UTF-8, and a name or an error text may be anything.
std::string valid_utf8(std::string_view text) {
  constexpr std::string_view replacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    std::size_t length = 0;
    unsigned char low = 0x80;  // the second byte's range; later bytes are 0x80..0xBF
    unsigned char high = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c == 0xE0) {
      length = 3;
      low = 0xA0;  // no overlong forms
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      length = 3;
    } else if (c == 0xED) {
      length = 3;
      high = 0x9F;  // no surrogates
    } else if (c == 0xF0) {
      length = 4;
      low = 0x90;  // no overlong forms
    } else if (c >= 0xF1 && c <= 0xF3) {
      length = 4;
    } else if (c == 0xF4) {
      length = 4;
      high = 0x8F;  // nothing beyond U+10FFFF
    } else {
      out += replacement;  // a continuation byte, C0, C1, F5..FF
      ++i;
      continue;
    }
    std::size_t n = 1;
    for (; n < length && i + n < text.size(); ++n) {
      const auto d = static_cast<unsigned char>(text[i + n]);
      if (d < (n == 1 ? low : 0x80) || d > (n == 1 ? high : 0xBF)) break;
    }
    if (n == length) {
      out.append(text.substr(i, length));
    } else {
      out += replacement;
    }
    i += n;
  }
  return out;
}

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw std::invalid_argument("status JSON" + (path.empty() ? std::string() : " of '" + path + "'") + ": " + what);
}

std::chrono::system_clock::time_point parse_iso8601(const std::string& text, const std::string& path) {
  std::tm tm{};
  int frac = 0;
  int used = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%6dZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                  &tm.tm_min, &tm.tm_sec, &frac, &used) != 7 ||
      static_cast<std::size_t>(used) != text.size()) {
    bad(path, "\"since\" is not an ISO-8601 UTC time with microseconds: '" + text + "'");
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  const std::time_t secs = timegm(&tm);
  return std::chrono::system_clock::time_point(std::chrono::seconds(secs) + std::chrono::microseconds(frac));
}

const json::value& field(const json::object& o, const char* key, const std::string& path) {
  const auto* v = o.if_contains(key);
  if (v == nullptr) bad(path, std::string("missing \"") + key + "\"");
  return *v;
}

}  // namespace

json::value to_json(const ChildStatus& status) {
  json::array children;
  children.reserve(status.children.size());
  for (const auto& c : status.children) children.push_back(to_json(c));
  return json::object{{"path", valid_utf8(status.path)},
                      {"state", std::string(to_string(status.state))},
                      {"since", iso8601(status.since)},
                      {"restarts", static_cast<std::uint64_t>(status.restarts)},
                      {"last_error", valid_utf8(status.last_error)},
                      {"ready", status.ready},
                      {"stale", status.stale},
                      {"children", std::move(children)}};
}

ChildStatus status_from_json(const json::value& value) {
  const auto* o = value.if_object();
  if (o == nullptr) bad("", "not an object");
  ChildStatus s;
  const auto* path = field(*o, "path", "").if_string();
  if (path == nullptr) bad("", "\"path\" is not a string");
  s.path = std::string(*path);
  const auto* state = field(*o, "state", s.path).if_string();
  if (state == nullptr) bad(s.path, "\"state\" is not a string");
  try {
    s.state = child_state_from_string(std::string(*state));
  } catch (const std::invalid_argument& e) {
    bad(s.path, e.what());
  }
  const auto* since = field(*o, "since", s.path).if_string();
  if (since == nullptr) bad(s.path, "\"since\" is not a string");
  s.since = parse_iso8601(std::string(*since), s.path);
  const auto& restarts = field(*o, "restarts", s.path);
  if (restarts.is_uint64()) {
    s.restarts = static_cast<std::size_t>(restarts.get_uint64());
  } else if (restarts.is_int64() && restarts.get_int64() >= 0) {
    s.restarts = static_cast<std::size_t>(restarts.get_int64());
  } else {
    bad(s.path, "\"restarts\" is not a non-negative integer");
  }
  const auto* err = field(*o, "last_error", s.path).if_string();
  if (err == nullptr) bad(s.path, "\"last_error\" is not a string");
  s.last_error = std::string(*err);
  const auto* ready = field(*o, "ready", s.path).if_bool();
  if (ready == nullptr) bad(s.path, "\"ready\" is not a boolean");
  s.ready = *ready;
  // Optional: documents written before heartbeats existed have none.
  if (const auto* stale = o->if_contains("stale")) {
    const auto* b = stale->if_bool();
    if (b == nullptr) bad(s.path, "\"stale\" is not a boolean");
    s.stale = *b;
  }
  const auto* children = field(*o, "children", s.path).if_array();
  if (children == nullptr) bad(s.path, "\"children\" is not an array");
  s.children.reserve(children->size());
  for (const auto& c : *children) s.children.push_back(status_from_json(c));
  return s;
}

}  // namespace pm
