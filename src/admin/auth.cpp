#include "auth.hpp"

#include <algorithm>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include "../common/audit.hpp"
#include "target.hpp"

namespace metro::admin {
namespace {

std::array<unsigned char, 32> digest(std::string_view text) {
  static_assert(SHA256_DIGEST_LENGTH == 32);
  std::array<unsigned char, 32> d{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d.data());
  return d;
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

std::string audit_value(std::string_view value) { return audit::value(value); }

void audit(std::string_view who, std::string_view action, std::string_view target,
           std::string_view outcome) {
  audit::line(who, action, target, outcome);
}

}  // namespace metro::admin
