#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <string>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <metro/error.hpp>
#include <metro/sb/sas.hpp>

namespace metro::sb {
namespace {

constexpr std::string_view kPrefix = "SharedAccessSignature ";

std::string base64(const unsigned char* data, std::size_t size) {
  std::string out(4 * ((size + 2) / 3) + 1, '\0');
  int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(size));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string hmac_sha256_base64(std::string_view key, std::string_view text) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data(),
           &length) == nullptr) {
    throw Error("HMAC-SHA256 failed in OpenSSL");
  }
  return base64(digest.data(), length);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

}  // namespace

std::string url_encode(std::string_view text) {
  constexpr std::string_view kHex = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size() * 3);
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || std::string_view("-_.!~*'()").find(c) != std::string_view::npos) {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 0xF];
    }
  }
  return out;
}

std::optional<std::string> url_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out += ' ';
    } else if (text[i] == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      int hi = hex_value(text[i + 1]);
      int lo = hex_value(text[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

std::string make_sas_token(std::string_view audience, std::string_view key_name,
                           std::string_view key, std::chrono::system_clock::time_point expiry) {
  auto seconds = std::chrono::duration_cast<std::chrono::seconds>(expiry.time_since_epoch());
  std::string se = std::to_string(seconds.count());
  std::string sr = url_encode(audience);
  std::string sig = hmac_sha256_base64(key, sr + "\n" + se);
  return std::string(kPrefix) + "sr=" + sr + "&sig=" + url_encode(sig) + "&se=" + se +
         "&skn=" + url_encode(key_name);
}

SasToken parse_sas_token(std::string_view token) {
  if (token.substr(0, kPrefix.size()) != kPrefix) {
    throw InvalidArgument("a SAS token must start with 'SharedAccessSignature '");
  }
  token.remove_prefix(kPrefix.size());
  SasToken out;
  bool have_sr = false, have_sig = false, have_se = false, have_skn = false;
  while (!token.empty()) {
    auto end = token.find('&');
    auto field = token.substr(0, end);
    token = end == std::string_view::npos ? std::string_view{} : token.substr(end + 1);
    auto eq = field.find('=');
    if (eq == std::string_view::npos) {
      throw InvalidArgument("SAS token field '" + std::string(field) + "' has no '='");
    }
    auto name = field.substr(0, eq);
    auto raw = field.substr(eq + 1);
    auto decoded = url_decode(raw);
    if (!decoded)
      throw InvalidArgument("SAS token field '" + std::string(name) + "' is badly escaped");
    if (name == "sr") {
      out.encoded_resource = std::string(raw);
      out.resource = *decoded;
      have_sr = true;
    } else if (name == "sig") {
      out.signature = *decoded;
      have_sig = true;
    } else if (name == "se") {
      long long seconds = 0;
      auto [ptr, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), seconds);
      if (raw.empty() || ec != std::errc{} || ptr != raw.data() + raw.size() || seconds < 0) {
        throw InvalidArgument("SAS token expiry 'se' is not a number of seconds");
      }
      out.expiry = std::chrono::system_clock::time_point(std::chrono::seconds(seconds));
      have_se = true;
    } else if (name == "skn") {
      out.key_name = *decoded;
      have_skn = true;
    }
  }
  if (!have_sr || !have_sig || !have_se || !have_skn) {
    throw InvalidArgument("a SAS token needs the fields sr, sig, se and skn");
  }
  return out;
}

std::optional<std::string> verify_sas_token(const SasToken& token, std::string_view key,
                                            std::string_view audience,
                                            std::chrono::system_clock::time_point now) {
  auto seconds = std::chrono::duration_cast<std::chrono::seconds>(token.expiry.time_since_epoch());
  std::string expected =
      hmac_sha256_base64(key, token.encoded_resource + "\n" + std::to_string(seconds.count()));
  if (expected.size() != token.signature.size() ||
      CRYPTO_memcmp(expected.data(), token.signature.data(), expected.size()) != 0) {
    return "the token's signature does not match the key '" + token.key_name + "'";
  }
  if (token.expiry <= now) return std::string("the token has expired");
  std::string resource(token.resource);
  std::string target(audience);
  std::transform(resource.begin(), resource.end(), resource.begin(), lower);
  std::transform(target.begin(), target.end(), target.begin(), lower);
  while (resource.size() > 1 && resource.back() == '/') resource.pop_back();
  bool covers =
      target == resource || (target.rfind(resource, 0) == 0 && target.size() > resource.size() &&
                             target[resource.size()] == '/');
  if (!covers) {
    return "the token is for '" + token.resource + "', which does not cover '" +
           std::string(audience) + "'";
  }
  return std::nullopt;
}

}  // namespace metro::sb
