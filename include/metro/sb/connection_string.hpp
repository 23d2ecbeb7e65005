#pragma once

/// Service Bus connection strings: parsing, the endpoint they name, and redaction for output.
/// Thread-safety: free functions are reentrant; `ConnectionString` is a plain value.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace metro::sb {

/// A parsed connection string. Either `shared_access_key_name` + `shared_access_key` or
/// `shared_access_signature` is set, never both.
struct ConnectionString {
  std::string endpoint;        ///< As written, e.g. `sb://myns.servicebus.windows.net/`.
  std::string host;            ///< `myns.servicebus.windows.net`, without port.
  std::uint16_t port = 5671;   ///< From the endpoint, else 5672 (emulator) or 5671 (TLS).
  bool explicit_port = false;  ///< The endpoint named the port.
  bool use_tls = true;         ///< False only with `UseDevelopmentEmulator=true`.
  bool use_development_emulator = false;
  std::string shared_access_key_name;
  std::string shared_access_key;
  std::string shared_access_signature;  ///< A ready-made token, `SharedAccessSignature sr=…`.
  std::string entity_path;              ///< Optional queue or topic bound to the string.

  /// `sb://host[:port]/` — the base of every token audience, as the JS SDK forms it.
  std::string audience_base() const;
  /// `sb://host[:port]/<entity_path>`.
  std::string audience(std::string_view entity_path) const;
  /// True when the string carries a key (tokens are minted) rather than a fixed signature.
  bool has_key() const { return !shared_access_key.empty(); }
};

/// Parses a connection string (servicebus-amqp grammar: `;`-separated `Key=Value`, each split at
/// the first `=`, key names compared case-insensitively, unknown keys ignored).
/// Throws `metro::InvalidArgument` naming the problem; the message never contains a secret.
ConnectionString parse_connection_string(std::string_view text);

/// The text with the values of `SharedAccessKey`, `SharedAccessSignature` and a token's `sig`
/// replaced by `***`, wherever they stand in it. Safe to log. Works on any text: a connection
/// string that does not parse, or a log line that embeds one.
std::string redact_connection_string(std::string_view text);

}  // namespace metro::sb
