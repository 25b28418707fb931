// UTF-8 checks shared by the text formats the library writes (JSON logs,
// the Prometheus text format), which must stay valid whatever bytes users'
// names and error texts hold.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace pm::detail {

/// The length of the well-formed UTF-8 sequence that starts at s[i], or 0
/// when there is none (a stray continuation byte, an overlong form, a
/// surrogate, a code point above U+10FFFF, or a cut-off sequence).
inline std::size_t utf8_length(std::string_view s, std::size_t i) noexcept {
  const auto at = [s](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  std::size_t n = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < n || at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if ((at(i + k) & 0xC0) != 0x80) return 0;
  }
  return n;
}

}  // namespace pm::detail
