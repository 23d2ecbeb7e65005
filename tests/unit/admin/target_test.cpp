// The request-target of the admin API, read from untrusted text.

#include "../../../src/admin/target.hpp"

#include <gtest/gtest.h>

namespace {

using metro::admin::is_utf8;
using metro::admin::parse_path;
using metro::admin::parse_query;

TEST(Target, PathSegmentsArePercentDecodedOneByOne) {
  std::string why;
  auto s = parse_path("/api/v1/deferred/a%2Fb/%41%62c/7", why);
  ASSERT_TRUE(s) << why;
  EXPECT_EQ(*s, (std::vector<std::string>{"api", "v1", "deferred", "a/b", "Abc", "7"}));
  EXPECT_EQ(*parse_path("/", why), (std::vector<std::string>{""}));
  EXPECT_EQ(*parse_path("/a//b/", why), (std::vector<std::string>{"a", "", "b", ""}));
}

TEST(Target, BadEscapesBytesAndControlCharactersAreRefusedWithAReason) {
  for (const char* bad :
       {"/a%", "/a%4", "/a%G0", "/%FF", "/%C0%80", "/%ED%A0%80", "/%0A", "/%00", "/%7F", "a", ""}) {
    std::string why;
    EXPECT_FALSE(parse_path(bad, why)) << bad;
    EXPECT_FALSE(why.empty()) << bad;
  }
  std::string why;
  EXPECT_TRUE(parse_path("/caf%C3%A9", why)) << why;
}

TEST(Target, QueryParametersAreDecodedWithPlusAsSpace) {
  std::string why;
  auto q = parse_query("subject=Orders%2F*+x&limit=5&&flag&subject=2", why);
  ASSERT_TRUE(q) << why;
  EXPECT_EQ(q->count("subject"), 2u);
  EXPECT_EQ(q->find("subject")->second, "Orders/* x");
  EXPECT_EQ(q->find("flag")->second, "");
  EXPECT_FALSE(parse_query("after=%FF", why));
  EXPECT_FALSE(parse_query("a%ZZ=1", why));
}

TEST(Target, Utf8IsCheckedStrictly) {
  EXPECT_TRUE(is_utf8("plain"));
  EXPECT_TRUE(is_utf8("\xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_utf8("\xf0\x9f\x98"));      // Cut short.
  EXPECT_FALSE(is_utf8("\xc1\xbf"));          // Overlong.
  EXPECT_FALSE(is_utf8("\xf4\x90\x80\x80"));  // Past U+10FFFF.
  EXPECT_FALSE(is_utf8("\x80"));
}

}  // namespace
