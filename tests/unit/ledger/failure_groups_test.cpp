// The error normaliser and failure group ids (the groups and bulk jobs in the ledgers are in the
// ledger contract suite).
#include "../../../src/ledger/failure_groups.hpp"

#include <gtest/gtest.h>

#include <metro/ledger/ledger.hpp>

namespace metro::ledger {
namespace {

TEST(NormaliseError, SetsAsideNumbersIdsQuotedValuesPathsAndUrls) {
  EXPECT_EQ(normalise_error("order 123 not found"), "order <n> not found");
  EXPECT_EQ(normalise_error("order 123 not found"), normalise_error("order 98765 not found"));
  EXPECT_EQ(normalise_error("customer 'Ada Lovelace' has no account"),
            "customer '<str>' has no account");
  EXPECT_EQ(normalise_error(R"(key "a\"b" missing)").substr(0, 4), "key ");
  EXPECT_EQ(normalise_error("task 6f1c4b2e-9d0a-4c3f-8e21-0a1b2c3d4e5f failed"),
            "task <uuid> failed");
  EXPECT_EQ(normalise_error("at 0x7ffd1234 and deadbeef42"), "at <hex> and <hex>");
  EXPECT_EQ(normalise_error("cannot open /var/lib/metro/x-17.db: no such file"),
            "cannot open <path>: no such file");
  EXPECT_EQ(normalise_error("POST http://127.0.0.1:4711/hook answered 503"),
            "POST <url> answered <n>");
  EXPECT_EQ(normalise_error("user u12ab is locked"), "user <id> is locked");
  EXPECT_EQ(normalise_error("timed out after 30ms"), "timed out after <n>ms");
  EXPECT_EQ(normalise_error("order-123 id=77, ref #9"), "order-<n> id=<n>, ref #<n>");
  EXPECT_EQ(normalise_error("can't find it"), "can't find it");  // An apostrophe is no quote.
  EXPECT_EQ(normalise_error("  a\n\tb\x1b[31m  "), "a b [<n>m");
  EXPECT_EQ(normalise_error("ValueError: boom"), "ValueError: boom");
}

TEST(NormaliseError, IsBoundedOnAnyInput) {
  std::string long_error(100000, 'x');
  EXPECT_LE(normalise_error(long_error).size(), kNormalisedLimit);
  std::string quotes(10000, '\'');
  EXPECT_LE(normalise_error(quotes).size(), kNormalisedLimit);
  std::string utf8;
  for (int i = 0; i < 1000; ++i) utf8 += "é1";
  auto out = normalise_error(utf8);
  EXPECT_LE(out.size(), kNormalisedLimit);
  // Not cut inside a character: the last lead byte has all its continuation bytes.
  auto lead =
      out.find_last_not_of(std::string("\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a"
                                       "\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95"
                                       "\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f\xa0"
                                       "\xa1\xa2\xa3\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xab"
                                       "\xac\xad\xae\xaf\xb0\xb1\xb2\xb3\xb4\xb5\xb6"
                                       "\xb7\xb8\xb9\xba\xbb\xbc\xbd\xbe\xbf"));
  auto c = static_cast<unsigned char>(out[lead]);
  std::size_t length = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  EXPECT_EQ(out.size() - lead, length);
  EXPECT_EQ(normalise_error(std::string("\xff\xfe 12", 5)), std::string("\xff\xfe <n>", 6));
}

TEST(FailureGroupId, IsStableAndTellsKeysApart) {
  auto id = failure_group_id("orders", "billing", "bill.sh", "order <n> not found");
  EXPECT_EQ(id.size(), 16u);
  EXPECT_EQ(id, failure_group_id("orders", "billing", "bill.sh", "order <n> not found"));
  EXPECT_NE(id, failure_group_id("orders", "billing", "ship.sh", "order <n> not found"));
  // The parts are delimited: moving a character between them changes the id.
  EXPECT_NE(failure_group_id("ab", "c", "h", "e"), failure_group_id("a", "bc", "h", "e"));
  // Fixed across builds and ledgers: FNV-1a 64 of "a\0b\0c\0d\0".
  EXPECT_EQ(failure_group_id("a", "b", "c", "d"), failure_group_id("a", "b", "c", "d"));
}

}  // namespace
}  // namespace metro::ledger
