// Redis URLs: parsed the way redis-py reads them (the netloc ends at the first '/', '?' or '#'),
// redacted more eagerly than that (everything up to the last '@' of a URL-looking word), so that a
// password with an unencoded '/' in it is still hidden.

#include "redis_url.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <vector>

#include <metro/error.hpp>

namespace metro::celery {
namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

/// Length of the `redis://` or `rediss://` scheme at the start of `text`, or 0.
std::size_t scheme_length(std::string_view text) {
  auto head = lower(text.substr(0, 9));
  if (head.rfind("rediss://", 0) == 0) return 9;
  if (head.rfind("redis://", 0) == 0) return 8;
  return 0;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// Percent-decoding, as urllib.parse.unquote does (a '%' not followed by two hex digits stays).
std::string unquote(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size()) {
      int high = hex_value(text[i + 1]);
      int low = hex_value(text[i + 2]);
      if (high >= 0 && low >= 0) {
        out.push_back(static_cast<char>(high * 16 + low));
        i += 2;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

std::optional<long> number(std::string_view text) {
  long value = 0;
  if (text.empty() || text.size() > 9) return std::nullopt;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::string quoted(std::string_view text) { return "'" + std::string(text) + "'"; }

bool word_end(char c) {
  return std::isspace(static_cast<unsigned char>(c)) != 0 || c == '"' || c == '\'' || c == '<' ||
         c == '>' || c == '`';
}

}  // namespace

std::string redact_url_passwords(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t copied = 0;
  std::size_t search = 0;
  while (true) {
    auto sep = text.find("://", search);
    if (sep == std::string_view::npos) break;
    // Only `scheme://` counts: letters, digits, '+', '-', '.', starting with a letter.
    std::size_t scheme = sep;
    while (scheme > copied) {
      char c = text[scheme - 1];
      if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '+' && c != '-' && c != '.') {
        break;
      }
      --scheme;
    }
    std::size_t start = sep + 3;
    std::size_t end = start;
    while (end < text.size() && !word_end(text[end])) ++end;
    search = end;
    if (scheme == sep || std::isalpha(static_cast<unsigned char>(text[scheme])) == 0) continue;
    auto word = text.substr(start, end - start);
    auto at = word.rfind('@');
    if (at == std::string_view::npos) continue;
    out.append(text.substr(copied, start - copied));
    auto userinfo = word.substr(0, at);
    auto colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      out.append("***");
    } else {
      out.append(userinfo.substr(0, colon + 1));
      if (colon + 1 < userinfo.size()) out.append("***");
    }
    copied = start + at;
  }
  out.append(text.substr(copied));
  return out;
}

std::string RedisUrl::endpoint() const {
  bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port) + "/" + std::to_string(db);
}

std::string RedisUrl::redacted() const {
  std::string out = tls ? "rediss://" : "redis://";
  if (password) out += username + ":***@";
  out += endpoint();
  std::vector<std::string> params;
  if (tls) {
    if (verify != TlsVerify::kRequired) {
      params.push_back(std::string("ssl_cert_reqs=") +
                       (verify == TlsVerify::kOptional ? "optional" : "none"));
    }
    if (!check_hostname) params.emplace_back("ssl_check_hostname=false");
    if (!ca_file.empty()) params.push_back("ssl_ca_certs=" + ca_file);
    if (!cert_file.empty()) params.push_back("ssl_certfile=" + cert_file);
    if (!key_file.empty()) params.push_back("ssl_keyfile=" + key_file);
  }
  for (std::size_t i = 0; i < params.size(); ++i) out += (i == 0 ? "?" : "&") + params[i];
  return out;
}

RedisUrl parse_redis_url(std::string_view url) {
  auto fail = [&](const std::string& why) -> InvalidArgument {
    return InvalidArgument("\"" + redact_url_passwords(url) + "\" is not a Redis URL: " + why);
  };
  RedisUrl out;
  auto scheme = scheme_length(url);
  if (scheme == 0) {
    auto colon = url.find("://");
    throw fail(colon == std::string_view::npos
                   ? "expected redis://host:port/db or rediss://host:port/db"
                   : "the scheme " + quoted(url.substr(0, colon)) +
                         " is not redis:// or rediss:// (metro speaks to Redis only)");
  }
  out.tls = scheme == 9;
  auto rest = url.substr(scheme);
  if (rest.find('#') != std::string_view::npos) throw fail("a fragment ('#') has no meaning here");
  std::string_view query;
  if (auto q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  std::string_view path;
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    path = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
  }
  auto hostport = rest;
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {
    auto userinfo = rest.substr(0, at);
    hostport = rest.substr(at + 1);
    auto colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      throw fail(
          "it names a user but no password (write redis://:password@host or "
          "redis://user:password@host)");
    }
    out.username = unquote(userinfo.substr(0, colon));
    auto password = unquote(userinfo.substr(colon + 1));
    if (!password.empty()) out.password = password;
  }
  if (hostport.empty()) throw fail("no host");
  std::string_view port_text;
  if (hostport.front() == '[') {
    auto close = hostport.find(']');
    if (close == std::string_view::npos) throw fail("an IPv6 address without its closing ']'");
    out.host = std::string(hostport.substr(1, close - 1));
    auto after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') throw fail("unexpected text after the IPv6 address");
      port_text = after.substr(1);
    } else {
      port_text = {};
    }
    if (!after.empty() && port_text.empty()) throw fail("an empty port");
  } else {
    auto colon = hostport.rfind(':');
    if (colon != std::string_view::npos) {
      out.host = std::string(hostport.substr(0, colon));
      port_text = hostport.substr(colon + 1);
      if (port_text.empty()) throw fail("an empty port");
    } else {
      out.host = std::string(hostport);
    }
  }
  if (out.host.empty()) throw fail("no host");
  for (char c : out.host) {
    if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '.' && c != '-' && c != '_' &&
        c != ':' && c != '%') {
      throw fail("the host " + quoted(out.host) + " has a character a host name cannot have");
    }
  }
  if (!port_text.empty()) {
    auto port = number(port_text);
    if (!port || *port < 1 || *port > 65535) {
      throw fail("the port " + quoted(port_text) + " is not a number from 1 to 65535");
    }
    out.port = static_cast<std::uint16_t>(*port);
  }
  if (!path.empty()) {
    auto db = number(path);
    if (!db || *db < 0 || *db > 65535) {
      throw fail("the path " + quoted("/" + std::string(path)) +
                 " is not a database number (expected /0, /1, …)");
    }
    out.db = static_cast<int>(*db);
  }
  bool saw_tls_param = false;
  while (!query.empty()) {
    auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (pair.empty()) continue;
    auto eq = pair.find('=');
    auto key = lower(unquote(pair.substr(0, eq)));
    auto value = eq == std::string_view::npos ? std::string() : unquote(pair.substr(eq + 1));
    auto lowered = lower(value);
    if (key == "db") {
      auto db = number(value);
      if (!db || *db < 0 || *db > 65535) {
        throw fail("db=" + quoted(value) + " is not a database number");
      }
      out.db = static_cast<int>(*db);
    } else if (key == "ssl_cert_reqs") {
      saw_tls_param = true;
      if (lowered == "required" || lowered == "cert_required") {
        out.verify = TlsVerify::kRequired;
      } else if (lowered == "optional" || lowered == "cert_optional") {
        out.verify = TlsVerify::kOptional;
      } else if (lowered == "none" || lowered == "cert_none") {
        out.verify = TlsVerify::kNone;
      } else {
        throw fail("ssl_cert_reqs=" + quoted(value) + " is not one of required, optional or none");
      }
    } else if (key == "ssl_check_hostname") {
      saw_tls_param = true;
      if (lowered == "true" || lowered == "1" || lowered == "yes") {
        out.check_hostname = true;
      } else if (lowered == "false" || lowered == "0" || lowered == "no") {
        out.check_hostname = false;
      } else {
        throw fail("ssl_check_hostname=" + quoted(value) + " is not true or false");
      }
    } else if (key == "ssl_ca_certs" || key == "ssl_certfile" || key == "ssl_keyfile") {
      saw_tls_param = true;
      if (value.empty()) throw fail(key + " needs a file name");
      (key == "ssl_ca_certs"   ? out.ca_file
       : key == "ssl_certfile" ? out.cert_file
                               : out.key_file) = value;
    } else {
      throw fail("the parameter " + quoted(key) +
                 " is not one metro reads (db, ssl_cert_reqs, ssl_check_hostname, "
                 "ssl_ca_certs, ssl_certfile, ssl_keyfile)");
    }
  }
  if (saw_tls_param && !out.tls) throw fail("ssl_* parameters need a rediss:// URL");
  if (out.cert_file.empty() != out.key_file.empty()) {
    throw fail("ssl_certfile and ssl_keyfile go together");
  }
  return out;
}

}  // namespace metro::celery
