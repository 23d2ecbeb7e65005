#include <algorithm>
#include <cctype>
#include <charconv>
#include <string>
#include <string_view>
#include <vector>

#include <metro/error.hpp>
#include <metro/sb/connection_string.hpp>

namespace metro::sb {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

struct Pair {
  std::string_view key;
  std::string_view value;
};

// Splits at `;`, each part at its first `=`. Empty parts are allowed (a trailing `;`).
std::vector<Pair> split_pairs(std::string_view text) {
  std::vector<Pair> pairs;
  while (!text.empty()) {
    auto end = text.find(';');
    auto part = trim(text.substr(0, end));
    text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);
    if (part.empty()) continue;
    auto eq = part.find('=');
    if (eq == std::string_view::npos) {
      pairs.push_back({part, {}});
      continue;
    }
    pairs.push_back({trim(part.substr(0, eq)), trim(part.substr(eq + 1))});
  }
  return pairs;
}

bool is_secret_key(std::string_view key) {
  return iequals(key, "SharedAccessKey") || iequals(key, "SharedAccessSignature");
}

void parse_endpoint(std::string_view endpoint, ConnectionString& out) {
  constexpr std::string_view kScheme = "sb://";
  if (endpoint.size() < kScheme.size() || !iequals(endpoint.substr(0, kScheme.size()), kScheme)) {
    throw InvalidArgument("Endpoint must start with sb:// (got '" + std::string(endpoint) + "')");
  }
  auto authority = endpoint.substr(kScheme.size());
  authority = authority.substr(0, authority.find('/'));
  auto host = authority;
  auto colon = authority.rfind(':');
  if (colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    auto digits = authority.substr(colon + 1);
    unsigned port = 0;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (digits.empty() || ec != std::errc{} || ptr != digits.data() + digits.size() || port == 0 ||
        port > 65535) {
      throw InvalidArgument("Endpoint has an invalid port '" + std::string(digits) + "'");
    }
    out.port = static_cast<std::uint16_t>(port);
    out.explicit_port = true;
  }
  if (host.empty()) throw InvalidArgument("Endpoint has no host name");
  for (char c : host) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') {
      throw InvalidArgument("Endpoint host '" + std::string(host) + "' contains '" +
                            std::string(1, c) + "'");
    }
  }
  out.host = std::string(host);
  out.endpoint = std::string(endpoint);
}

}  // namespace

std::string ConnectionString::audience_base() const {
  // As the JS SDK forms it: the endpoint's authority, an explicit port kept.
  return "sb://" + host + (explicit_port ? ":" + std::to_string(port) : std::string()) + "/";
}

std::string ConnectionString::audience(std::string_view path) const {
  return audience_base() + std::string(path);
}

ConnectionString parse_connection_string(std::string_view text) {
  if (trim(text).empty()) throw InvalidArgument("connection string is empty");
  ConnectionString out;
  bool have_endpoint = false;
  for (const auto& [key, value] : split_pairs(text)) {
    if (value.empty() && !is_secret_key(key)) {
      throw InvalidArgument("'" + std::string(key) + "' has no value (expected Key=Value)");
    }
    if (iequals(key, "Endpoint")) {
      parse_endpoint(value, out);
      have_endpoint = true;
    } else if (iequals(key, "SharedAccessKeyName")) {
      out.shared_access_key_name = std::string(value);
    } else if (iequals(key, "SharedAccessKey")) {
      if (value.empty()) throw InvalidArgument("SharedAccessKey is empty");
      out.shared_access_key = std::string(value);
    } else if (iequals(key, "SharedAccessSignature")) {
      if (value.empty()) throw InvalidArgument("SharedAccessSignature is empty");
      out.shared_access_signature = std::string(value);
    } else if (iequals(key, "EntityPath")) {
      out.entity_path = std::string(value);
    } else if (iequals(key, "UseDevelopmentEmulator")) {
      if (iequals(value, "true")) {
        out.use_development_emulator = true;
      } else if (iequals(value, "false")) {
        out.use_development_emulator = false;
      } else {
        throw InvalidArgument("UseDevelopmentEmulator must be true or false (got '" +
                              std::string(value) + "')");
      }
    }
    // Other keys (TransportType, …) are accepted and ignored, as the official SDKs do.
  }
  if (!have_endpoint) throw InvalidArgument("connection string has no Endpoint");
  bool has_key = !out.shared_access_key.empty();
  bool has_name = !out.shared_access_key_name.empty();
  bool has_signature = !out.shared_access_signature.empty();
  if (has_key != has_name) {
    throw InvalidArgument(
        "SharedAccessKeyName and SharedAccessKey must be given together (found only " +
        std::string(has_key ? "SharedAccessKey" : "SharedAccessKeyName") + ")");
  }
  if (has_key && has_signature) {
    throw InvalidArgument("SharedAccessSignature and SharedAccessKey are mutually exclusive");
  }
  if (!has_key && !has_signature) {
    throw InvalidArgument(
        "connection string has no credentials (SharedAccessKeyName + SharedAccessKey, or "
        "SharedAccessSignature)");
  }
  if (has_signature && out.shared_access_signature.rfind("SharedAccessSignature ", 0) != 0) {
    throw InvalidArgument("SharedAccessSignature must start with 'SharedAccessSignature sr='");
  }
  out.use_tls = !out.use_development_emulator;
  if (!out.explicit_port) out.port = out.use_development_emulator ? 5672 : 5671;
  return out;
}

std::string redact_connection_string(std::string_view text) {
  // Scans for the secret-bearing keys anywhere, so that the same function also cleans a log line
  // or an error message that embeds a connection string or a token. Matching follows the parser:
  // key names in any case, blanks around `=`.
  constexpr std::string_view kKeys[] = {"sharedaccesskey", "sharedaccesssignature", "sig"};
  std::string lowered(text);
  std::transform(lowered.begin(), lowered.end(), lowered.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  auto blank = [&](std::size_t i) {  // what the parser's trim() drops
    return i < text.size() && std::isspace(static_cast<unsigned char>(text[i])) != 0;
  };
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t value = std::string_view::npos;
    std::string_view key;
    for (auto k : kKeys) {
      if (std::string_view(lowered).substr(i, k.size()) != k) continue;
      auto j = i + k.size();
      while (blank(j)) ++j;
      if (j < text.size() && text[j] == '=') {
        ++j;
        while (blank(j)) ++j;
        value = j;
        key = k;
        break;
      }
    }
    if (value == std::string_view::npos) {
      out += text[i++];
      continue;
    }
    out.append(text.substr(i, value - i));
    i = value;
    // As the parser reads them: a value runs to the next `;` (a token's sig to the next `&`).
    // Quotes are not part of the grammar, so they end nothing; over-redacting a log line is safe.
    std::string_view stops = key == "sig" ? "&; \n" : ";";
    auto end = text.find_first_of(stops, i);
    if (end == std::string_view::npos) end = text.size();
    if (end > i) out += "***";
    i = end;
  }
  return out;
}

}  // namespace metro::sb
