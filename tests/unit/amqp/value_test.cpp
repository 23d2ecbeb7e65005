#include "../../../src/amqp/value.hpp"

#include <gtest/gtest.h>

#include "../../../src/amqp/message.hpp"
#include "../../../src/amqp/value_pn.hpp"
#include "../../support/amqp_bytes.hpp"

namespace metro::amqp {
namespace {

TEST(Value, RoundTripsEveryKind) {
  Uuid u{};
  for (std::uint8_t i = 0; i < 16; ++i) u[i] = i;
  auto v = Value::map({
      {Value::symbol("s"), Value::string("text")},
      {Value::string("n"), Value::long_(-5)},
      {Value::string("u"), Value::uint(7)},
      {Value::string("t"), Value::timestamp(1700000000123)},
      {Value::string("id"), Value::uuid(u)},
      {Value::string("b"), Value::binary(std::string("\0\1\2", 3))},
      {Value::string("list"),
       Value::list({Value::boolean(true), Value::null(), Value::double_(1.5)})},
      {Value::string("array"), Value::array(Type::kLong, {Value::long_(1), Value::long_(2)})},
      {Value::string("described"), Value::described(Value::ulong(0x70), Value::list({}))},
  });
  std::size_t consumed = 0;
  auto bytes = encode(v);
  auto back = decode(bytes, &consumed);
  EXPECT_EQ(consumed, bytes.size());
  EXPECT_EQ(back, v);
  EXPECT_EQ(back.find("n")->as_int64(), -5);
  EXPECT_EQ(back.find("s")->as_bytes(), "text");
  EXPECT_EQ(back.find("missing"), nullptr);
}

TEST(Value, RejectsGarbageAndWrongTypes) {
  EXPECT_THROW(decode(""), DecodeError);
  EXPECT_THROW(decode("\xff\xff"), DecodeError);
  EXPECT_THROW(Value::string("x").as_int64(), DecodeError);
  EXPECT_THROW(Value::long_(-1).as_uint64(), DecodeError);
  EXPECT_THROW(Value::ulong(~0ULL).as_int64(), DecodeError);
}

TEST(Uuid, TextAndGuidByteOrder) {
  auto u = uuid_from_string("00112233-4455-6677-8899-aabbccddeeff");
  ASSERT_TRUE(u);
  EXPECT_EQ(to_string(*u), "00112233-4455-6677-8899-aabbccddeeff");
  // The delivery-tag layout of servicebus-amqp §4.4.
  EXPECT_EQ(to_string(swap_guid_bytes(*u)), "33221100-5544-7766-8899-aabbccddeeff");
  EXPECT_EQ(swap_guid_bytes(swap_guid_bytes(*u)), *u);
  EXPECT_FALSE(uuid_from_string("not-a-uuid"));
  auto r = random_uuid();
  EXPECT_EQ(r[6] >> 4, 4);
}

TEST(Message, SplitsSectionsAndKeepsTheBareMessageBytes) {
  Message m;
  m.set_property(kMessageId, Value::string("id-1"));
  m.set_property(kSubject, Value::string("MetroDemo/Type/GeekJokes"));
  m.application_properties = Value::map({{Value::string("k"), Value::int_(1)}});
  m.data_sections = {R"({"subject":"x"})"};
  m.message_annotations = Value::map({{Value::symbol("x-opt-partition-key"), Value::string("p")}});
  auto bytes = encode_message(m);
  auto parsed = parse_message(bytes);
  EXPECT_EQ(parsed.property_text(kMessageId), "id-1");
  EXPECT_EQ(parsed.property_text(kSubject), "MetroDemo/Type/GeekJokes");
  EXPECT_EQ(parsed.body_bytes(), R"({"subject":"x"})");
  EXPECT_EQ(parsed.application_properties.find("k")->as_int64(), 1);
  // Re-encoding without changes gives the same bytes: the bare message passes through.
  EXPECT_EQ(encode_message(parsed), bytes);
  EXPECT_TRUE(looks_like_encoded_message(bytes));
  EXPECT_FALSE(looks_like_encoded_message(R"({"a":1})"));
  EXPECT_THROW(parse_message(std::string_view("\x00\x53\x99\x45", 4)), DecodeError);
}

namespace bytes = metro::test::amqp_bytes;

// Values from the network may nest without limit; a decoder that recurses per level overflows
// its stack at some depth. Every kind of nesting is refused past kMaxDepth, and the limit itself
// still decodes.
TEST(ValueDepth, NestingPastTheLimitIsADecodeErrorForEveryKind) {
  for (std::size_t depth :
       {std::size_t{kMaxDepth + 1}, std::size_t{30'000}, std::size_t{100'000}}) {
    for (const auto& deep :
         {bytes::nested_lists(depth), bytes::nested_maps(depth), bytes::nested_arrays(depth)}) {
      try {
        decode(deep);
        FAIL() << "decoded a value " << depth << " levels deep";
      } catch (const DecodeError& e) {
        EXPECT_NE(std::string(e.what()).find("nested more than"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(ValueDepth, TheLimitItselfDecodes) {
  EXPECT_EQ(decode(bytes::nested_lists(kMaxDepth)).type(), Type::kList);
  EXPECT_EQ(decode(bytes::nested_maps(kMaxDepth)).type(), Type::kMap);
  EXPECT_EQ(decode(bytes::nested_arrays(kMaxDepth)).type(), Type::kArray);
  EXPECT_EQ(decode(bytes::described_chain(1)).type(), Type::kDescribed);
}

TEST(ValueDepth, ADescribedValueDescribingAnotherIsRefusedAtAnyDepth) {
  // Proton miscounts such values inside a compound; nothing that talks to Service Bus sends one.
  for (std::size_t depth : {2, 100'000}) {
    EXPECT_THROW(decode(bytes::described_chain(depth)), DecodeError);
    EXPECT_THROW(decode(bytes::map_of("k", bytes::described_chain(depth))), DecodeError);
  }
}

TEST(ValueDepth, EveryMessageSectionIsBounded) {
  auto deep = bytes::nested_lists(30'000);
  for (const auto& message : {
           bytes::section(bytes::kApplicationProperties, bytes::map_of("deep", deep)),
           bytes::section(bytes::kMessageAnnotations, bytes::map_of("x-deep", deep)),
           bytes::section(bytes::kAmqpValue, deep),
           bytes::section(bytes::kAmqpSequence, deep),
           bytes::data_section("ok") + bytes::section(bytes::kAmqpValue, deep),
       }) {
    EXPECT_THROW(parse_message(message), DecodeError);
    EXPECT_FALSE(looks_like_encoded_message(message));
  }
}

TEST(ValueDepth, ProtonDataFilledByTheTransportIsBoundedToo) {
  // Dispositions and link properties reach metro as pn_data_t that Proton decoded itself.
  auto* data = pn_data(0);
  for (int i = 0; i < 10'000; ++i) {
    pn_data_put_list(data);
    pn_data_enter(data);
  }
  EXPECT_THROW(read_data(data), DecodeError);
  pn_data_free(data);
}

TEST(ValueDepth, TruncatedAndLyingSizesAreDecodeErrors) {
  auto lists = bytes::nested_lists(10);
  EXPECT_THROW(decode(lists.substr(0, lists.size() - 1)), DecodeError);
  // A list that claims more elements than its bytes hold.
  EXPECT_THROW(decode(std::string("\xd0\x00\x00\x00\x05\x7f\xff\xff\xff\x40", 10)), DecodeError);
  EXPECT_THROW(decode(std::string("\xb1\xff\xff\xff\xff", 5)), DecodeError);
}

}  // namespace
}  // namespace metro::amqp
