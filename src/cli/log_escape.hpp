#pragma once

// What a log line may contain: the text of one message, made safe to write as one line. A value
// that came from outside (a correlation id, a dead-letter reason, a handler's error) can hold a
// newline or a terminal escape; written as is it would start a line of its own, such as a forged
// audit line. Every control character (C0, DEL, C1, U+2028, U+2029) and every byte that is not
// UTF-8 is escaped, and a message is cut at a size, so one line stays one bounded line.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace metro::cli::log_escape {

/// Most bytes one message takes in a log line (after escaping), before it is cut.
inline constexpr std::size_t kMaxMessageBytes = 8192;

enum class Style {
  kText,  ///< `\n`, `\r`, `\t`, `\\xNN` for other bytes, `\\uXXXX` for C1 and line separators.
  kJson,  ///< The body of a JSON string: also `"` and `\\`; bytes that are not UTF-8 as U+FFFD.
};

namespace detail {

/// Length of the UTF-8 sequence at `i` and its code point; 0 when it is not well-formed.
inline std::size_t utf8_at(std::string_view s, std::size_t i, std::uint32_t& cp) {
  auto b = static_cast<unsigned char>(s[i]);
  std::size_t n;
  if (b < 0x80) {
    cp = b;
    return 1;
  }
  if ((b & 0xE0) == 0xC0) {
    n = 2;
    cp = b & 0x1F;
  } else if ((b & 0xF0) == 0xE0) {
    n = 3;
    cp = b & 0x0F;
  } else if ((b & 0xF8) == 0xF0) {
    n = 4;
    cp = b & 0x07;
  } else {
    return 0;
  }
  if (n > s.size() - i) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    auto c = static_cast<unsigned char>(s[i + k]);
    if ((c & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  static constexpr std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

inline void append_u(std::string& out, std::uint32_t cp) {
  constexpr std::string_view kHex = "0123456789abcdef";
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(cp >> shift) & 0xF];
}

}  // namespace detail

/// Appends `text` to `out` escaped in `style`, taking at most `cap` bytes of `out` for it; what
/// does not fit is replaced by `… [N more bytes]` (N counts bytes of `text`).
inline void append(std::string& out, std::string_view text, Style style,
                   std::size_t cap = kMaxMessageBytes) {
  constexpr std::string_view kHex = "0123456789abcdef";
  const std::size_t start = out.size();
  std::string unit;
  for (std::size_t i = 0; i < text.size();) {
    std::uint32_t cp = 0;
    std::size_t n = detail::utf8_at(text, i, cp);
    unit.clear();
    if (n == 0) {  // Not UTF-8: one byte.
      if (style == Style::kJson) {
        unit = "\\ufffd";
      } else {
        auto b = static_cast<unsigned char>(text[i]);
        unit = {'\\', 'x', kHex[b >> 4], kHex[b & 15]};
      }
      n = 1;
    } else if (cp == '\n') {
      unit = "\\n";
    } else if (cp == '\r') {
      unit = "\\r";
    } else if (cp == '\t') {
      unit = "\\t";
    } else if (cp == '"' && style == Style::kJson) {
      unit = "\\\"";
    } else if (cp == '\\' && style == Style::kJson) {
      unit = "\\\\";
    } else if (cp < 0x20 || cp == 0x7f) {
      if (style == Style::kJson) {
        detail::append_u(unit, cp);
      } else {
        unit = {'\\', 'x', kHex[cp >> 4], kHex[cp & 15]};
      }
    } else if ((cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029) {
      detail::append_u(unit, cp);
    } else {
      unit.assign(text.substr(i, n));
    }
    if (out.size() - start + unit.size() > cap) {
      out += "… [" + std::to_string(text.size() - i) + " more bytes]";
      return;
    }
    out += unit;
    i += n;
  }
}

/// `text` escaped in `style`, at most `cap` bytes (see `append`).
inline std::string escaped(std::string_view text, Style style, std::size_t cap = kMaxMessageBytes) {
  std::string out;
  append(out, text, style, cap);
  return out;
}

}  // namespace metro::cli::log_escape
