// The client's pure codec: messages out and in, $management bodies, without a connection.
#include "../../../src/sb/codec.hpp"

#include <gtest/gtest.h>

namespace metro::sb::codec {
namespace {

using amqp::Value;

TEST(Codec, AMessageGoesOutAndComesBackWithEveryField) {
  Message m;
  m.body = R"({"subject":"x"})";
  m.subject = "MetroDemo/Type/GeekJokes";
  m.message_id = "id-1";
  m.correlation_id = "c-1";
  m.content_type = "application/json";
  m.to = "to";
  m.reply_to = "reply";
  m.application_properties = {{"n", std::int64_t{7}}, {"ok", true}, {"s", std::string("v")}};
  m.time_to_live = milliseconds(5000);
  auto r = decode_received(amqp::parse_message(encode(m)));
  EXPECT_EQ(r.body, m.body);
  EXPECT_EQ(r.body_section, BodySection::kData);
  EXPECT_EQ(r.subject, m.subject);
  EXPECT_EQ(r.message_id, m.message_id);
  EXPECT_EQ(r.correlation_id, m.correlation_id);
  EXPECT_EQ(r.content_type, m.content_type);
  EXPECT_EQ(r.to, m.to);
  EXPECT_EQ(r.reply_to, m.reply_to);
  EXPECT_EQ(r.application_properties, m.application_properties);
  EXPECT_EQ(r.time_to_live, m.time_to_live);
}

TEST(Codec, FieldsOfUnexpectedTypesAreLeftOutNotThrown) {
  amqp::Message m;
  m.set_property(amqp::kMessageId, Value::ulong(~0ULL));  // beyond int64: still an id
  m.set_property(amqp::kSubject, Value::list({}));        // not text: left out
  m.set_header_field(amqp::kDeliveryCount, Value::int_(-3));
  m.message_annotations =
      Value::map({{Value::symbol("x-opt-sequence-number"), Value::ulong(~0ULL)},
                  {Value::symbol("x-opt-enqueued-time"), Value::string("yesterday")},
                  {Value::symbol("x-opt-message-state"), Value::int_(99)}});
  m.value_body = Value::map({});
  m.body_section = amqp::kAmqpValue;
  auto r = decode_received(m);
  EXPECT_EQ(r.message_id, "18446744073709551615");
  EXPECT_FALSE(r.subject);
  EXPECT_EQ(r.delivery_count, 0u);
  EXPECT_EQ(r.sequence_number, 0);
  EXPECT_EQ(r.state, MessageState::kActive);
  EXPECT_EQ(r.body_section, BodySection::kAmqpValue);
  EXPECT_TRUE(r.body.empty());
}

TEST(Codec, RepliesOfManagementAndCbsReadAlike) {
  amqp::Message management;
  management.application_properties =
      Value::map({{Value::string("statusCode"), Value::int_(404)},
                  {Value::string("statusDescription"), Value::string("gone")},
                  {Value::string("errorCondition"), Value::symbol("amqp:not-found")}});
  auto r = reply_of(management);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.description, "gone");
  EXPECT_EQ(r.condition, "amqp:not-found");
  amqp::Message cbs;
  cbs.application_properties = Value::map({{Value::string("status-code"), Value::int_(202)}});
  EXPECT_EQ(reply_of(cbs).status, 202);
  EXPECT_EQ(reply_of(amqp::Message{}).status, -1);
}

TEST(Codec, TheCorrelationIdOfAReplyWhoseBodyCannotBeDecoded) {
  std::vector<Value> properties(amqp::kPropertyFieldCount);
  properties[amqp::kCorrelationId] = Value::string("request-7");
  auto bytes = amqp::encode_section(amqp::kProperties, Value::list(properties)) +
               std::string("\x00\x53\x77\xd0\x00\x00\x00\x05\xff\xff\xff\xff", 12);
  EXPECT_THROW(amqp::parse_message(bytes), amqp::DecodeError);
  EXPECT_EQ(correlation_id_of(bytes), "request-7");
  EXPECT_FALSE(correlation_id_of("garbage"));
}

TEST(Codec, RulesAndDeferredMessagesFromReplyBodies) {
  auto rule = [](Value filter, const std::string& name) {
    return Value::map(
        {{Value::string("rule-description"),
          Value::described(Value::ulong(0x0000013700000004ULL),
                           Value::list({std::move(filter), Value::null(), Value::string(name)}))}});
  };
  auto sql =
      Value::described(Value::ulong(0x0000001370000006ULL), Value::list({Value::string("a > 1")}));
  std::vector<Value> correlation_fields(9);
  correlation_fields[4] = Value::string("label");
  correlation_fields[8] = Value::map({{Value::string("colour"), Value::string("red")}});
  auto correlation =
      Value::described(Value::ulong(0x0000001370000009ULL), Value::list(correlation_fields));
  auto rules = rules_of(Value::map(
      {{Value::string("rules"), Value::list({rule(sql, "s"), rule(correlation, "c")})}}));
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_EQ(rules[0].sql, "a > 1");
  EXPECT_EQ(rules[1].label, "label");
  EXPECT_EQ(std::get<std::string>(rules[1].properties.at("colour")), "red");

  Message m;
  m.body = "deferred";
  auto lock = amqp::random_uuid();
  auto body =
      Value::map({{Value::string("messages"),
                   Value::list({Value::map({{Value::string("message"), Value::binary(encode(m))},
                                            {Value::string("lock-token"), Value::uuid(lock)}})})}});
  auto locked = messages_of(body, true);
  ASSERT_EQ(locked.size(), 1u);
  EXPECT_EQ(locked[0].body, "deferred");
  EXPECT_EQ(locked[0].lock_token, amqp::to_string(lock));
  EXPECT_TRUE(messages_of(body, false)[0].lock_token.empty());
  EXPECT_TRUE(messages_of(Value::null(), true).empty());
}

}  // namespace
}  // namespace metro::sb::codec
