#include "trace.hpp"

#include <random>

namespace metro::dispatch {
namespace {

constexpr std::size_t kLength = 55;  // 2 + 1 + 32 + 1 + 16 + 1 + 2
constexpr std::string_view kHex = "0123456789abcdef";

bool lower_hex(std::string_view s) {
  return !s.empty() && s.find_first_not_of(kHex) == std::string_view::npos;
}
bool all_zero(std::string_view s) { return s.find_first_not_of('0') == std::string_view::npos; }

std::string random_hex(std::size_t digits) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out;
  while (out.empty() || all_zero(out)) {
    out.clear();
    while (out.size() < digits) {
      auto bits = rng();
      for (int i = 0; i < 16 && out.size() < digits; ++i, bits >>= 4) out += kHex[bits & 15];
    }
  }
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
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

}  // namespace

std::optional<std::string> parse_traceparent(std::string_view value) {
  if (value.size() < kLength) return std::nullopt;
  auto version = value.substr(0, 2);
  if (!lower_hex(version) || version == "ff") return std::nullopt;
  if (version == "00" ? value.size() != kLength : value.size() > kLength && value[kLength] != '-') {
    return std::nullopt;
  }
  value = value.substr(0, kLength);
  if (value[2] != '-' || value[35] != '-' || value[52] != '-') return std::nullopt;
  auto trace = value.substr(3, 32);
  auto parent = value.substr(36, 16);
  auto flags = value.substr(53, 2);
  if (!lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags)) return std::nullopt;
  if (trace.size() != 32 || parent.size() != 16 || all_zero(trace) || all_zero(parent)) {
    return std::nullopt;
  }
  return "00-" + std::string(trace) + "-" + std::string(parent) + "-" + std::string(flags);
}

std::string new_traceparent() { return "00-" + random_hex(32) + "-" + random_hex(16) + "-01"; }

std::string child_of(std::string_view traceparent) {
  auto valid = parse_traceparent(traceparent);
  if (!valid) return new_traceparent();
  return valid->substr(0, 36) + random_hex(16) + valid->substr(52);
}

std::string trace_id_of(std::string_view traceparent) {
  auto valid = parse_traceparent(traceparent);
  return valid ? valid->substr(3, 32) : std::string();
}

std::string trace_context_of(const std::map<std::string, sb::PropertyValue>& properties) {
  for (std::string_view name : {"traceparent", "Diagnostic-Id"}) {
    for (const auto& [key, value] : properties) {
      if (!iequals(key, name)) continue;
      const auto* text = std::get_if<std::string>(&value);
      if (text == nullptr) continue;
      if (auto valid = parse_traceparent(*text)) return child_of(*valid);
    }
  }
  return new_traceparent();
}

std::string trace_suffix(std::string_view traceparent) {
  auto id = trace_id_of(traceparent);
  return id.empty() ? std::string() : " trace=" + id;
}

}  // namespace metro::dispatch
