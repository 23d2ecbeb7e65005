#include "query.hpp"

#include <charconv>
#include <cstdint>

#include <metro/config/config.hpp>

#include "target.hpp"

namespace metro::admin {
namespace {

const std::string* param(const std::multimap<std::string, std::string>& params,
                         const std::string& name) {
  auto it = params.find(name);
  return it == params.end() ? nullptr : &it->second;
}

}  // namespace

ledger::Query parse_list_query(const std::multimap<std::string, std::string>& params,
                               std::chrono::system_clock::time_point now) {
  ledger::Query q;
  if (const auto* v = param(params, "topic")) q.topic = *v;
  if (const auto* v = param(params, "subscription")) q.subscription = *v;
  if (const auto* v = param(params, "state")) {
    q.state = ledger::state_from_string(*v);
    if (!q.state) {
      throw InvalidArgument("unknown state '" + *v +
                            "'; one of deferring, deferred, running, retrying, failed, "
                            "completed, dead-lettered, orphaned");
    }
  }
  if (const auto* v = param(params, "subject")) {
    if (v->find_first_of("*?[") != std::string::npos) {
      q.subject_glob = *v;
    } else {
      q.subject_prefix = *v;
    }
  }
  if (const auto* v = param(params, "older_than")) {
    auto age = config::parse_duration(*v);
    if (!age) {
      throw InvalidArgument("older_than must be a duration like 30s, 5m or 1h (got '" + *v + "')");
    }
    q.created_before = now - *age;
  }
  if (const auto* v = param(params, "limit")) {
    std::size_t used = 0;
    long limit = 0;
    try {
      limit = std::stol(*v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != v->size() || limit < 1 || limit > 1000) {
      throw InvalidArgument("limit must be a number from 1 to 1000 (got '" + *v + "')");
    }
    q.limit = static_cast<std::size_t>(limit);
  }
  if (const auto* v = param(params, "group")) {
    bool id = v->size() == 16 && v->find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!id) {
      throw InvalidArgument(
          "group must be a failure group's id (16 hex digits; see "
          "/api/v1/failures), got '" +
          *v + "'");
    }
    q.failure_group = *v;
  }
  if (const auto* v = param(params, "after")) {
    q.after = decode_cursor(*v);
    if (!q.after) throw InvalidArgument("the cursor in 'after' is not one this API gave out");
  }
  return q;
}

std::string encode_cursor(const std::string& cursor) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : cursor) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

std::optional<std::string> decode_cursor(const std::string& text) {
  if (text.size() % 2 != 0) return std::nullopt;
  auto value = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  for (std::size_t i = 0; i < text.size(); i += 2) {
    int hi = value(text[i]);
    int lo = value(text[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
  }
  // Only a cursor a ledger made is handed to the ledger.
  if (!is_utf8(out) || !ledger::parse_cursor(out)) return std::nullopt;
  return out;
}

}  // namespace metro::admin
