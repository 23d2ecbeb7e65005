#pragma once

// Redis URLs as Celery and redis-py write them: `redis://[[user]:password@]host[:port][/db]` and
// `rediss://…` (TLS), with the query parameters that matter to a client that only sends tasks and
// reads results. The password never appears in what this file returns or throws except in
// `RedisUrl::password`. Thread-safety: plain functions and values.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace metro::celery {

/// How a `rediss://` connection checks the server's certificate (`ssl_cert_reqs`).
enum class TlsVerify {
  kRequired,  ///< A certificate that chains to a trusted CA (the default).
  kOptional,  ///< Python's CERT_OPTIONAL: checked like kRequired when the server sends one.
  kNone,      ///< Not checked (testing only).
};

struct RedisUrl {
  bool tls = false;  ///< `rediss://`.
  std::string host;  ///< A name or an address (IPv6 without brackets).
  std::uint16_t port = 6379;
  std::string username;                 ///< Empty: Redis's default user.
  std::optional<std::string> password;  ///< A secret.
  int db = 0;
  TlsVerify verify = TlsVerify::kRequired;
  bool check_hostname = true;  ///< `ssl_check_hostname` (redis-py's default is false).
  std::string ca_file;         ///< `ssl_ca_certs`: PEM file of trusted CAs; else the system's.
  std::string cert_file;       ///< `ssl_certfile`: a client certificate (PEM).
  std::string key_file;        ///< `ssl_keyfile`: its private key (PEM).

  /// The URL again, with the password written as `***`.
  std::string redacted() const;
  /// `host:port/db`, for messages.
  std::string endpoint() const;
};

/// Parses a Redis URL. Throws `metro::InvalidArgument` saying what is wrong; the message shows
/// the URL only in its redacted form.
RedisUrl parse_redis_url(std::string_view url);

/// `text` with the password of every URL in it (`scheme://user:password@…`) replaced by `***`;
/// for user info without a `:`, all of it. Used on every text that may hold a broker URL.
std::string redact_url_passwords(std::string_view text);

}  // namespace metro::celery
