// What a log line may contain: one line, whatever the values in it hold.

#include "../../../src/cli/log_escape.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace {

using metro::cli::log_escape::escaped;
using metro::cli::log_escape::Style;

TEST(LogEscape, ANewlineInAValueCannotStartALine) {
  std::string forged =
      "order-7\n2026-01-01 00:00:00.000 info  audit: token=ops action=complete outcome=ok";
  auto text = escaped(forged, Style::kText);
  EXPECT_EQ(text.find('\n'), std::string::npos);
  EXPECT_EQ(text,
            "order-7\\n2026-01-01 00:00:00.000 info  audit: token=ops action=complete outcome=ok");
  auto in_json = escaped(forged, Style::kJson);
  EXPECT_EQ(nlohmann::json::parse("\"" + in_json + "\"").get<std::string>(), forged);
}

TEST(LogEscape, EveryControlCharacterAndLineSeparatorIsEscaped) {
  std::string all;
  for (int c = 0; c < 0x20; ++c) all += static_cast<char>(c);
  all += "\x7f";
  all += "\xc2\x85";      // NEL
  all += "\xe2\x80\xa8";  // LINE SEPARATOR
  all += "\xe2\x80\xa9";  // PARAGRAPH SEPARATOR
  all += "\x1b[31mred";   // a terminal escape
  for (auto style : {Style::kText, Style::kJson}) {
    auto out = escaped(all, style);
    for (unsigned char c : out) EXPECT_FALSE(c < 0x20 || c == 0x7f) << static_cast<int>(c);
    EXPECT_EQ(out.find("\xe2\x80\xa8"), std::string::npos);
    EXPECT_EQ(out.find("\xc2\x85"), std::string::npos);
  }
  EXPECT_NE(escaped(all, Style::kText).find("\\x1b[31mred"), std::string::npos);
  EXPECT_NE(escaped(all, Style::kJson).find("\\u001b[31mred"), std::string::npos);
  EXPECT_NE(escaped(all, Style::kJson).find("\\u2028"), std::string::npos);
}

TEST(LogEscape, JsonStaysJsonWhateverTheBytes) {
  std::string bytes;
  for (int c = 0; c < 256; ++c) bytes += static_cast<char>(c);
  bytes += "\"\\\xc3\x28\xe2\x82\xf0\x9f\x98\x80";  // Quotes, bad UTF-8, a valid emoji.
  auto line = "{\"message\":\"" + escaped(bytes, Style::kJson) + "\"}";
  auto parsed = nlohmann::json::parse(line, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << line;
  EXPECT_NE(parsed["message"].get<std::string>().find("\xf0\x9f\x98\x80"), std::string::npos);
  EXPECT_NE(escaped("\xff", Style::kText).find("\\xff"), std::string::npos);
}

TEST(LogEscape, AMessageIsCutAtItsCap) {
  std::string reason(200 * 1024, 'r');
  auto text = escaped(reason, Style::kText);
  EXPECT_LE(text.size(), metro::cli::log_escape::kMaxMessageBytes + 40);
  EXPECT_NE(text.find("[" + std::to_string(reason.size() - 8192) + " more bytes]"),
            std::string::npos)
      << text.substr(8000);
  // An escape is never split: newlines count as the two bytes they become.
  auto newlines = escaped(std::string(10000, '\n'), Style::kJson, 11);
  EXPECT_EQ(newlines.substr(0, 10), "\\n\\n\\n\\n\\n");
  EXPECT_EQ(newlines.substr(10), "… [9995 more bytes]");
  // Nor a character.
  EXPECT_EQ(escaped("ab\xc3\xa9", Style::kText, 3), "ab… [2 more bytes]");
}

}  // namespace
