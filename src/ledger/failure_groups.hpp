#pragma once

// Failure groups: handler errors with their variable parts (numbers, ids, hex, UUIDs, quoted
// values, paths, URLs) replaced by placeholders, so that "order 123 not found" and "order 456
// not found" of one handler fall into one group; and the group's id, a stable hash of the
// subscription, the handler and the normalised error. Pure functions: every ledger computes the
// same id for the same failure. Thread-safety: reentrant.

#include <string>
#include <string_view>

namespace metro::ledger {

/// The most of an error that is normalised (bytes); the rest is cut before it is looked at.
inline constexpr std::size_t kNormaliseInput = 4096;
/// The longest normalised error (bytes; cut on a UTF-8 boundary).
inline constexpr std::size_t kNormalisedLimit = 512;

/// The error with its variable parts replaced: `'…'` and `"…"` quoted values by `'<str>'` /
/// `"<str>"`, UUIDs by `<uuid>`, URLs by `<url>`, paths by `<path>`, hex runs (`0x…`, or six or
/// more hex digits with a digit among them) by `<hex>`, numbers by `<n>` (`30ms` is `<n>ms`: a
/// unit of up to three letters stays), other words that mix letters and digits by `<id>`;
/// control characters and runs of white space become one space. Looks at `kNormaliseInput` bytes
/// at most and returns at most `kNormalisedLimit`; never throws on any input (bytes that are not
/// UTF-8 are kept as they are).
std::string normalise_error(std::string_view error);

/// The id of a failure group: 16 lowercase hex digits of FNV-1a (64 bits) over the topic,
/// subscription, handler and normalised error, each ended by a NUL byte.
std::string failure_group_id(std::string_view topic, std::string_view subscription,
                             std::string_view handler, std::string_view normalised_error);

}  // namespace metro::ledger
