#pragma once

/// Shared Access Signature tokens, as Service Bus and its SDKs form them:
/// `SharedAccessSignature sr=<enc(audience)>&sig=<enc(b64(HMAC-SHA256(key, enc(audience)\nse)))>
/// &se=<unix seconds>&skn=<enc(key name)>`. Thread-safety: all functions are reentrant.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace metro::sb {

/// URL-encodes like JavaScript's `encodeURIComponent`: keeps `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
std::string url_encode(std::string_view text);

/// Decodes `%XX` escapes (and `+` as a space). Returns nullopt on a malformed escape.
std::optional<std::string> url_decode(std::string_view text);

/// Mints a token for `audience` (e.g. `sb://ns.servicebus.windows.net/topic`) that expires at
/// `expiry` (whole seconds). The key is used as text, not base64-decoded, as the SDKs do.
std::string make_sas_token(std::string_view audience, std::string_view key_name,
                           std::string_view key, std::chrono::system_clock::time_point expiry);

/// The fields of a token, still URL-encoded where the wire has them encoded.
struct SasToken {
  std::string encoded_resource;  ///< `sr` exactly as in the token (the signature covers this).
  std::string resource;          ///< `sr` decoded.
  std::string signature;         ///< `sig` decoded (base64).
  std::string key_name;          ///< `skn` decoded.
  std::chrono::system_clock::time_point expiry;
};

/// Parses `SharedAccessSignature sr=…&sig=…&se=…&skn=…` (fields in any order).
/// Throws `metro::InvalidArgument` when a field is missing or malformed.
SasToken parse_sas_token(std::string_view token);

/// Why a token was refused, or nullopt when it is valid: signed with `key`, not expired at `now`,
/// and its resource equal to or a prefix (at a `/` boundary) of `audience`. Comparison of the
/// resource is case-insensitive, as Service Bus entity names are.
std::optional<std::string> verify_sas_token(const SasToken& token, std::string_view key,
                                            std::string_view audience,
                                            std::chrono::system_clock::time_point now);

}  // namespace metro::sb
