// The SAS tokens metro mints must equal, byte for byte, those of the official JS SDK.

#include <array>
#include <cstdio>
#include <memory>

#include <gtest/gtest.h>

#include <metro/sb/sas.hpp>

namespace metro::sb {
namespace {

std::string shell_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string js_token(std::string_view key_name, std::string_view key, std::string_view audience,
                     long long expiry) {
  std::string command = "cd " + shell_quote(METRO_SOURCE_DIR) +
                        " && node tests/conformance/js/sas-token.js " + shell_quote(key_name) +
                        " " + shell_quote(key) + " " + shell_quote(audience) + " " +
                        std::to_string(expiry) + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return "popen failed";
  std::string out;
  std::array<char, 4096> buffer{};
  std::size_t n = 0;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe.get())) > 0) out.append(buffer.data(), n);
  return out;
}

struct Case {
  const char* key_name;
  const char* key;
  const char* audience;
  long long expiry;
};

class SasTokenMatchesJsSdk : public ::testing::TestWithParam<Case> {};

TEST_P(SasTokenMatchesJsSdk, ByteForByte) {
  const auto& c = GetParam();
  auto ours = make_sas_token(c.audience, c.key_name, c.key,
                             std::chrono::system_clock::time_point(std::chrono::seconds(c.expiry)));
  EXPECT_EQ(ours, js_token(c.key_name, c.key, c.audience, c.expiry));
}

INSTANTIATE_TEST_SUITE_P(
    Sdk, SasTokenMatchesJsSdk,
    ::testing::Values(
        Case{"RootManageSharedAccessKey", "SAS_KEY_VALUE", "sb://localhost/metro-demo", 1700000000},
        Case{"RootManageSharedAccessKey", "SAS_KEY_VALUE",
             "sb://localhost/metro-demo/Subscriptions/sub-metrodemo-metrooj/$management",
             2000000000},
        Case{"send listen", "s0me+Base64/Key==",
             "sb://myns.servicebus.windows.net/q/$DeadLetterQueue", 1800000123},
        Case{"k", "k\xC3\xA9y", "sb://localhost:5673/topic with space", 1}),
    [](const auto& p) { return "case" + std::to_string(p.index); });

}  // namespace
}  // namespace metro::sb
