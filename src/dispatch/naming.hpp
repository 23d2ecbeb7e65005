#pragma once

// How the service names messages and values in its log lines and errors: every line about a
// message carries `topic/subscription#sequence [correlation-id]`, and every value that came from
// outside (correlation ids, subjects, errors) is capped in length, so one message cannot write a
// line of megabytes. (The log formatter escapes control characters.)

#include <cstddef>
#include <string>
#include <string_view>

#include <metro/ledger/ledger.hpp>

namespace metro::dispatch {

/// Longest correlation id, subject or error put in a log line, in bytes.
inline constexpr std::size_t kLogValueLimit = 256;
/// Dead-letter descriptions are short (Service Bus keeps 1 KiB).
inline constexpr std::size_t kDescriptionLimit = 1024;

/// At most `limit` bytes, not cutting a UTF-8 sequence in two.
inline std::string clip(std::string text, std::size_t limit) {
  if (text.size() <= limit) return text;
  while (limit > 0 && (static_cast<unsigned char>(text[limit]) & 0xC0) == 0x80) --limit;
  text.resize(limit);
  return text;
}

/// A value from outside for a log line: at most `kLogValueLimit` bytes, marked when cut.
inline std::string log_value(std::string_view text, std::size_t limit = kLogValueLimit) {
  if (text.size() <= limit) return std::string(text);
  return clip(std::string(text.substr(0, limit + 4)), limit) + "…(" + std::to_string(text.size()) +
         " bytes)";
}

/// `topic/subscription#seq [correlation-id]` (`#seq.generation` for a superseded record).
inline std::string name_of(const ledger::MessageKey& key, std::string_view correlation = {}) {
  auto name = key.topic + "/" + key.subscription + "#" + std::to_string(key.sequence_number);
  if (key.generation != 0) name += "." + std::to_string(key.generation);
  return correlation.empty() ? name : name + " [" + log_value(correlation, 128) + "]";
}

/// Service Bus compares entity names without regard to ASCII case; so does metro.
inline bool same_name(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto x = static_cast<unsigned char>(a[i]);
    auto y = static_cast<unsigned char>(b[i]);
    if (x >= 'A' && x <= 'Z') x = static_cast<unsigned char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<unsigned char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

}  // namespace metro::dispatch
