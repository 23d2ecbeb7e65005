// Intake's classification alone (no bus): bodies bounded before parsing, subjects, routing,
// correlation ids; and the task JSON built from whatever a body is.
#include "../../../src/dispatch/intake.hpp"

#include "../../../src/dispatch/held.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <metro/config/config.hpp>

namespace metro::dispatch {
namespace {

using Kind = Classification::Kind;

class ClassifyTest : public ::testing::Test {
 protected:
  ClassifyTest() {
    options_.topic_name = "orders";
    options_.subscription_name = "billing";
    router_.add(routing::SubjectMatcher(routing::MatchKind::kExact, "s"));
    router_.add(routing::SubjectMatcher(routing::MatchKind::kGlob, "s/**"));
  }
  Classification classify_body(const std::string& body) {
    sb::ReceivedMessage m;
    m.sequence_number = 5;
    m.body = body;
    return classify(m, options_, router_, std::chrono::system_clock::now());
  }
  config::SubscriptionOptions options_;
  routing::Router router_;
};

TEST_F(ClassifyTest, RoutesAJsonBodyBySubject) {
  auto c = classify_body(R"({"subject": "s", "id": "order-7"})");
  ASSERT_EQ(c.kind, Kind::kWork);
  EXPECT_EQ(c.handlers, (std::vector<std::size_t>{0}));
  EXPECT_EQ(c.base.subject, "s");
  EXPECT_EQ(c.base.correlation_id, "order-7");
  EXPECT_EQ(c.base.sequence_number, 5);
  EXPECT_EQ(classify_body(R"({"subject": "s/a/b"})").handlers, (std::vector<std::size_t>{1}));
}

TEST_F(ClassifyTest, DeepNestingIsMalformedBeforeAnythingParsesIt) {
  // 100,000 levels once crashed metro (a recursive copy of the parsed body), at every restart.
  for (std::size_t depth : {129u, 1000u, 100000u}) {
    for (auto [open, close] : {std::pair{'[', ']'}, std::pair{'{', '}'}}) {
      std::string body = R"({"subject":"s","x":)";
      for (std::size_t i = 0; i < depth; ++i) body += open == '{' ? "{\"a\":" : "[";
      body += "1";
      for (std::size_t i = 0; i < depth; ++i) body += close;
      body += "}";
      auto c = classify_body(body);
      EXPECT_EQ(c.kind, Kind::kMalformed) << depth;
      EXPECT_NE(c.reason.find("nested more than 128 levels"), std::string::npos) << c.reason;
      // The task JSON of such a body (a row resumed from an older ledger) is a string.
      Task t;
      t.body = body;
      EXPECT_TRUE(nlohmann::json::parse(to_json(t))["message"].is_string());
    }
  }
  // Unbalanced, and brackets inside strings, are measured the same way.
  EXPECT_EQ(classify_body(std::string(200, '[')).kind, Kind::kMalformed);
  EXPECT_EQ(classify_body(R"({"subject": "s", "x": ")" + std::string(1000, '[') + "\"}").kind,
            Kind::kWork);
}

TEST_F(ClassifyTest, AnOversizedBodyIsMalformed) {
  std::string body = R"({"subject": "s", "pad": ")" + std::string(kMaxBodyBytes, 'x') + "\"}";
  auto c = classify_body(body);
  EXPECT_EQ(c.kind, Kind::kMalformed);
  EXPECT_NE(c.reason.find("over the limit"), std::string::npos) << c.reason;
}

TEST_F(ClassifyTest, WhatIsNotJsonOrHasNoSubjectSaysWhy) {
  auto bad = classify_body("{\"subject\": \"s\", oops}");
  EXPECT_EQ(bad.kind, Kind::kMalformed);
  EXPECT_NE(bad.reason.find("line 1, column 18"), std::string::npos) << bad.reason;
  EXPECT_EQ(classify_body("\xff\xfe").kind, Kind::kMalformed);
  EXPECT_EQ(classify_body("").kind, Kind::kMalformed);
  auto array = classify_body("[1, 2]");
  EXPECT_EQ(array.kind, Kind::kNoMatch);
  EXPECT_EQ(array.reason, "the JSON body is not an object");
  auto number = classify_body(R"({"subject": 7})");
  EXPECT_EQ(number.kind, Kind::kNoMatch);
  EXPECT_EQ(number.reason, "the JSON body's \"subject\" is a number, not a string");
  auto unrouted = classify_body(R"({"subject": "other"})");
  EXPECT_EQ(unrouted.kind, Kind::kNoMatch);
  EXPECT_EQ(unrouted.reason, "no handler matches the subject 'other'");
}

TEST_F(ClassifyTest, ABodyThatIsNotADataSectionSaysWhatItWas) {
  auto with_section = [&](sb::BodySection section, const std::string& body) {
    sb::ReceivedMessage m;
    m.sequence_number = 5;
    m.body_section = section;
    m.body = body;
    return classify(m, options_, router_, std::chrono::system_clock::now());
  };
  auto map = with_section(sb::BodySection::kAmqpValue, "");
  EXPECT_EQ(map.kind, Kind::kMalformed);
  EXPECT_NE(map.reason.find("AMQP value section that is not text"), std::string::npos)
      << map.reason;
  auto sequence = with_section(sb::BodySection::kAmqpSequence, "");
  EXPECT_EQ(sequence.kind, Kind::kMalformed);
  EXPECT_NE(sequence.reason.find("AMQP sequence section"), std::string::npos) << sequence.reason;
  EXPECT_EQ(with_section(sb::BodySection::kNone, "").reason, "the message has no body");
  // Text in a value section is read like data.
  EXPECT_EQ(with_section(sb::BodySection::kAmqpValue, R"({"subject": "s"})").kind, Kind::kWork);
}

TEST_F(ClassifyTest, ANulInASubjectIsPartOfIt) {
  router_.add(routing::SubjectMatcher(routing::MatchKind::kExact, std::string("a\0b", 3)));
  auto c = classify_body(R"({"subject": "a\u0000b"})");
  ASSERT_EQ(c.kind, Kind::kWork);
  EXPECT_EQ(c.base.subject, std::string("a\0b", 3));
  EXPECT_EQ(classify_body(R"({"subject": "a\u0000c"})").kind, Kind::kNoMatch);
}

TEST_F(ClassifyTest, CorrelationIdFromThePropertyElseTheBodysId) {
  sb::ReceivedMessage m;
  m.body = R"({"subject": "s", "id": 42})";
  auto now = std::chrono::system_clock::now();
  EXPECT_EQ(classify(m, options_, router_, now).base.correlation_id, "42");
  m.correlation_id = "from-property";
  EXPECT_EQ(classify(m, options_, router_, now).base.correlation_id, "from-property");
  m.body = R"({"subject": "s", "id": {"nested": [1]}})";
  m.correlation_id.reset();
  EXPECT_EQ(classify(m, options_, router_, now).base.correlation_id, "");
  m.locked_until = now - std::chrono::seconds(1);
  EXPECT_EQ(classify(m, options_, router_, now).kind, Kind::kLockExpired);
}

TEST(TaskJson, TheLedgerRowKeepsTheBodyLimitAndTheEnqueuedTime) {
  Task t;
  t.topic_name = "orders";
  t.subscription_name = "billing";
  t.sequence_number = 3;
  t.body = std::string(100, 'x');
  auto at = std::chrono::system_clock::time_point(std::chrono::seconds(1000));
  auto row = row_of(t, at, ledger::State::kDeferring, 10);
  EXPECT_EQ(row.body.size(), 10u);
  EXPECT_TRUE(row.body_truncated);
  EXPECT_EQ(row.enqueued_time, at);
}

TEST(DeferAfter, AQuarterOfTheLockUnlessConfigured) {
  using std::chrono::milliseconds;
  config::SubscriptionOptions options;
  sb::ReceivedMessage m;
  auto now = std::chrono::system_clock::now();
  m.locked_until = now + std::chrono::seconds(60);
  EXPECT_EQ(defer_after(options, m, now), milliseconds(15000));
  m.locked_until = now + std::chrono::seconds(5);
  EXPECT_EQ(defer_after(options, m, now), milliseconds(1250));
  // Without a lock time (or one already past): a quarter of Service Bus's default minute.
  m.locked_until.reset();
  EXPECT_EQ(defer_after(options, m, now), milliseconds(15000));
  m.locked_until = now - std::chrono::seconds(1);
  EXPECT_EQ(defer_after(options, m, now), milliseconds(15000));
  // At most four minutes, well within the five its lock is renewed for.
  m.locked_until = now + std::chrono::minutes(30);
  EXPECT_EQ(defer_after(options, m, now), milliseconds(240000));
  options.defer_after = milliseconds(300);
  EXPECT_EQ(defer_after(options, m, now), milliseconds(300));
}

}  // namespace
}  // namespace metro::dispatch
