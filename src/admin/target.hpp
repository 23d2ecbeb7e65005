#pragma once

// The request-target of an HTTP request, read from untrusted text: the path split into
// percent-decoded segments and the query into decoded parameters. Every decoded piece must be
// UTF-8 (names and filters are compared and shown as text); anything else is refused with a
// reason, never passed on.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace metro::admin {

/// The path of a request-target (`/api/v1/deferred`) as percent-decoded segments
/// ({"api", "v1", "deferred"}; "/" is one empty segment). Nullopt with `why` set when it does not
/// start with `/`, a `%` escape is malformed, or a decoded segment is not UTF-8 or holds a control
/// character.
std::optional<std::vector<std::string>> parse_path(std::string_view path, std::string& why);

/// The query of a request-target (`a=1&b=x+y`, without the `?`) as decoded parameters (`+` is a
/// space). Nullopt with `why` set, as for the path.
std::optional<std::multimap<std::string, std::string>> parse_query(std::string_view query,
                                                                   std::string& why);

/// True when `text` is well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF).
bool is_utf8(std::string_view text);

/// ASCII case-insensitive equality (Service Bus compares entity names this way).
bool iequals(std::string_view a, std::string_view b);

}  // namespace metro::admin
