#pragma once

// Text from a peer (an AMQP error description, an address, a reason) made safe to put in a log
// line: control characters are escaped, so a newline in it cannot start a forged line, and it is
// cut at a length that keeps the line readable.

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <string_view>

namespace metro::sb {

inline std::string printable(std::string_view text, std::size_t max_bytes = 512) {
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 8);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (out.size() >= max_bytes) {
      out += "…(" + std::to_string(text.size()) + " bytes in all)";
      break;
    }
    auto c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace metro::sb
