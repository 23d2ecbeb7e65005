#pragma once

// Bearer tokens with roles, and the audit line every action writes.
//
// Thread-safety: `Tokens` is immutable after construction; `audit` logs through spdlog.

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <metro/config/config.hpp>

namespace metro::admin {

/// Who is calling.
struct Caller {
  std::string name;
  config::Role role = config::Role::kViewer;
};

class Tokens {
 public:
  explicit Tokens(const std::vector<config::AdminToken>& tokens);

  /// No tokens configured: reads are open (loopback only) and every action is refused.
  bool empty() const { return digests_.empty(); }
  /// The caller an `Authorization` header value names, or nullopt. Tokens are compared as
  /// SHA-256 digests in constant time, every one of them, so neither timing nor length tells
  /// anything. With no tokens configured, everyone is the viewer "local".
  std::optional<Caller> identify(std::string_view authorization) const;

 private:
  using Digest = std::array<unsigned char, 32>;
  std::vector<std::pair<Digest, Caller>> digests_;
};

/// Writes `audit: token=… action=… message=… outcome=…` at info. Values made of plain characters
/// are written as they are; any other value is quoted with `"` and `\` escaped, control
/// characters escaped, and cut at 200 bytes, so that no value can forge a field or a line.
void audit(std::string_view who, std::string_view action, std::string_view target,
           std::string_view outcome);

/// One audit value as `audit` writes it.
std::string audit_value(std::string_view value);

}  // namespace metro::admin
