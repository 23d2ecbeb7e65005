#pragma once

// The filters of `GET /api/v1/deferred`, read from untrusted query parameters, and the opaque
// page cursor the API hands out.

#include <chrono>
#include <map>
#include <optional>
#include <string>

#include <metro/ledger/ledger.hpp>

namespace metro::admin {

/// Reads topic, subscription, state, subject (a prefix, or a glob with `*`, `?` or `[`),
/// older_than (a duration), group (a failure group's id), limit (1-1000) and after (a cursor).
/// Throws `metro::InvalidArgument` naming the bad parameter and what it should be.
ledger::Query parse_list_query(const std::multimap<std::string, std::string>& params,
                               std::chrono::system_clock::time_point now);

/// The ledger's cursor as URL-safe text (hex), and back; nullopt for text this API did not make.
std::string encode_cursor(const std::string& cursor);
std::optional<std::string> decode_cursor(const std::string& text);

}  // namespace metro::admin
