#include "auth.hpp"

#include <algorithm>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include "target.hpp"

namespace metro::admin {
namespace {

constexpr std::size_t kAuditValueBytes = 200;

std::array<unsigned char, 32> digest(std::string_view text) {
  static_assert(SHA256_DIGEST_LENGTH == 32);
  std::array<unsigned char, 32> d{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d.data());
  return d;
}

bool plain(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == '/' || c == '#' || c == ':' || c == '@' || c == '~' ||
         c == '+';
}

}  // namespace

Tokens::Tokens(const std::vector<config::AdminToken>& tokens) {
  for (const auto& t : tokens) {
    digests_.emplace_back(digest(t.token),
                          Caller{t.name.empty() ? std::string(to_string(t.role)) : t.name, t.role});
  }
}

std::optional<Caller> Tokens::identify(std::string_view authorization) const {
  if (digests_.empty()) return Caller{"local", config::Role::kViewer};
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.size() <= kBearer.size() ||
      !iequals(authorization.substr(0, kBearer.size()), kBearer)) {
    return std::nullopt;
  }
  auto presented = digest(authorization.substr(kBearer.size()));
  const Caller* match = nullptr;
  for (const auto& [d, caller] : digests_) {
    if (CRYPTO_memcmp(d.data(), presented.data(), d.size()) == 0) match = &caller;
  }
  if (match == nullptr) return std::nullopt;
  return *match;
}

std::string audit_value(std::string_view value) {
  bool bare = !value.empty() && value.size() <= kAuditValueBytes;
  for (unsigned char c : value) bare = bare && plain(c);
  if (bare) return std::string(value);
  constexpr std::string_view kHex = "0123456789abcdef";
  // Cut on a UTF-8 boundary: never inside a character.
  std::size_t cut = std::min(value.size(), kAuditValueBytes);
  while (cut > 0 && cut < value.size() && (static_cast<unsigned char>(value[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  std::string out = "\"";
  for (std::size_t i = 0; i < cut; ++i) {
    auto c = static_cast<unsigned char>(value[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (cut < value.size()) out += "… [" + std::to_string(value.size() - cut) + " more bytes]";
  out += '"';
  return out;
}

void audit(std::string_view who, std::string_view action, std::string_view target,
           std::string_view outcome) {
  spdlog::info("audit: token={} action={} message={} outcome={}", audit_value(who),
               audit_value(action), audit_value(target), audit_value(outcome));
}

}  // namespace metro::admin
