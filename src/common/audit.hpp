#pragma once

// The audit line every action writes (`audit: token=… action=… message=… outcome=…`), shared by
// the admin API and the bulk jobs that carry out its actions later. Values made of plain
// characters are written as they are; any other value is quoted with `"` and `\` escaped, control
// characters escaped, and cut at 200 bytes, so that no value can forge a field or a line.
// Thread-safety: reentrant (logs through spdlog).

#include <algorithm>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace metro::audit {

inline constexpr std::size_t kValueBytes = 200;

inline bool plain(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == '/' || c == '#' || c == ':' || c == '@' || c == '~' ||
         c == '+';
}

/// One value as an audit line writes it.
inline std::string value(std::string_view value) {
  bool bare = !value.empty() && value.size() <= kValueBytes;
  for (unsigned char c : value) bare = bare && plain(c);
  if (bare) return std::string(value);
  constexpr std::string_view kHex = "0123456789abcdef";
  // Cut on a UTF-8 boundary: never inside a character.
  std::size_t cut = std::min(value.size(), kValueBytes);
  while (cut > 0 && cut < value.size() && (static_cast<unsigned char>(value[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  std::string out = "\"";
  for (std::size_t i = 0; i < cut; ++i) {
    auto c = static_cast<unsigned char>(value[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (cut < value.size()) out += "… [" + std::to_string(value.size() - cut) + " more bytes]";
  out += '"';
  return out;
}

/// `audit: token=… action=… message=… outcome=…`, and ` job=…` for a message a job acted on.
inline void line(std::string_view who, std::string_view action, std::string_view target,
                 std::string_view outcome, std::string_view job = {}) {
  if (job.empty()) {
    spdlog::info("audit: token={} action={} message={} outcome={}", value(who), value(action),
                 value(target), value(outcome));
  } else {
    spdlog::info("audit: token={} action={} message={} outcome={} job={}", value(who),
                 value(action), value(target), value(outcome), value(job));
  }
}

/// `audit: token=… action=bulk-… job=… filter=… outcome=…`: a bulk job as a whole.
inline void job_line(std::string_view who, std::string_view action, std::string_view job,
                     std::string_view filter, std::string_view outcome) {
  spdlog::info("audit: token={} action={} job={} filter={} outcome={}", value(who),
               value(std::string("bulk-") + std::string(action)), value(job), value(filter),
               value(outcome));
}

}  // namespace metro::audit
