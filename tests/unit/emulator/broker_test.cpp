// Service Bus semantics of the emulator's broker, without any networking.
#include "../../../src/emulator/broker.hpp"

#include <filesystem>

#include <gtest/gtest.h>
#include <unistd.h>

namespace metro::emulator {
namespace {

using amqp::Value;

amqp::Message text_message(const std::string& body, const std::string& subject = "") {
  amqp::Message m;
  m.value_body = Value::string(body);
  if (!subject.empty()) m.set_property(amqp::kSubject, Value::string(subject));
  return m;
}

class BrokerTest : public ::testing::Test {
 protected:
  BrokerTest() : broker_(config()) {}

  static BusConfig config() {
    BusConfig c;
    EntityOptions q;
    q.lock_duration = std::chrono::seconds(10);
    q.max_delivery_count = 2;
    c.queues.push_back({"q", q});
    EntityOptions ttl;
    ttl.default_ttl = std::chrono::seconds(1);
    ttl.dead_lettering_on_expiration = true;
    c.queues.push_back({"ttl", ttl});
    TopicOptions t{"t", {}, {}};
    t.subscriptions.push_back({"all", {}, {}});
    SubscriptionOptions red{"red", {}, {}};
    RuleOptions rule;
    rule.name = "red";
    rule.sql = "colour = 'red'";
    red.rules.push_back(rule);
    t.subscriptions.push_back(red);
    c.topics.push_back(t);
    return c;
  }

  Entity& q() { return *broker_.find("q"); }
  Broker broker_;
  TimeMs now_ = 1'000'000;
};

TEST_F(BrokerTest, FindsEntitiesCaseInsensitivelyFromAnyAddressForm) {
  EXPECT_NE(broker_.find("Q"), nullptr);
  EXPECT_NE(broker_.find("amqps://localhost/q"), nullptr);
  EXPECT_NE(broker_.find("/t/subscriptions/ALL"), nullptr);
  EXPECT_NE(broker_.find("t/Subscriptions/all/$DeadLetterQueue"), nullptr);
  EXPECT_NE(broker_.find("t/Subscriptions/%72ed"), nullptr);  // percent-escapes decoded
  EXPECT_EQ(broker_.find("nope"), nullptr);
}

TEST_F(BrokerTest, AssignsSequenceNumbersAndMessageIds) {
  auto numbers = broker_.send(q(), {text_message("a"), text_message("b")}, now_);
  EXPECT_EQ(numbers, (std::vector<std::int64_t>{1, 2}));
  auto out = broker_.acquire(q(), true, 1, now_);
  ASSERT_TRUE(out);
  auto parsed = amqp::parse_message(out->bytes);
  EXPECT_EQ(parsed.property_text(amqp::kMessageId)->size(), 32u);
  EXPECT_EQ(parsed.message_annotations.find("x-opt-sequence-number")->as_int64(), 1);
  EXPECT_EQ(parsed.message_annotations.find("x-opt-locked-until")->as_timestamp(), now_ + 10'000);
  EXPECT_EQ(parsed.delivery_annotations.find("x-opt-lock-token")->as_uuid(), *out->lock);
}

TEST_F(BrokerTest, TopicsFanOutByRulesKeepingTheTopicSequence) {
  auto red = text_message("r");
  red.application_properties = Value::map({{Value::string("colour"), Value::string("red")}});
  broker_.send(*broker_.find("t"), {text_message("plain"), red}, now_);
  EXPECT_EQ(broker_.counts(*broker_.find("t/Subscriptions/all")).active, 2u);
  EXPECT_EQ(broker_.counts(*broker_.find("t/Subscriptions/red")).active, 1u);
  auto out = broker_.acquire(*broker_.find("t/Subscriptions/red"), true, 1, now_);
  EXPECT_EQ(out->sequence_number, 2);
}

TEST_F(BrokerTest, AbandonCountsDeliveriesAndDeadLettersAtTheMaximum) {
  broker_.send(q(), {text_message("x")}, now_);
  auto first = broker_.acquire(q(), true, 1, now_);
  EXPECT_FALSE(broker_.abandon(q(), *first->lock, Value::null(), now_));
  auto second = broker_.acquire(q(), true, 1, now_);
  EXPECT_EQ(amqp::parse_message(second->bytes).header_field(amqp::kDeliveryCount).as_uint64(), 1u);
  EXPECT_FALSE(broker_.abandon(q(), *second->lock, Value::null(), now_));
  EXPECT_EQ(broker_.counts(q()).total(), 0u);
  EXPECT_EQ(broker_.counts(q()).dead_lettered, 1u);
  auto dead = broker_.acquire(*broker_.find("q/$DeadLetterQueue"), true, 1, now_);
  auto props = amqp::parse_message(dead->bytes).application_properties;
  EXPECT_EQ(props.find("DeadLetterReason")->as_bytes(), "MaxDeliveryCountExceeded");
}

TEST_F(BrokerTest, SettlingALostLockFails) {
  broker_.send(q(), {text_message("x")}, now_);
  auto out = broker_.acquire(q(), true, 1, now_);
  auto failure = broker_.complete(q(), *out->lock, now_ + 10'001);
  ASSERT_TRUE(failure);
  EXPECT_EQ(failure->condition, "com.microsoft:message-lock-lost");
  EXPECT_EQ(failure->status, 410);
  // The expired lock made the message available again, counted once.
  auto again = broker_.acquire(q(), true, 1, now_ + 10'001);
  ASSERT_TRUE(again);
  EXPECT_NE(*again->lock, *out->lock);
}

TEST_F(BrokerTest, DeferredMessagesAreFetchedOnlyBySequenceNumber) {
  broker_.send(q(), {text_message("x")}, now_);
  auto out = broker_.acquire(q(), true, 1, now_);
  EXPECT_FALSE(broker_.defer(q(), *out->lock, Value::null(), now_));
  EXPECT_FALSE(broker_.acquire(q(), true, 1, now_));
  EXPECT_EQ(broker_.counts(q()).deferred, 1u);
  std::optional<Failure> error;
  auto fetched = broker_.receive_deferred(q(), {1}, true, now_, error);
  ASSERT_FALSE(error);
  ASSERT_EQ(fetched.size(), 1u);
  EXPECT_EQ(amqp::parse_message(fetched[0].bytes)
                .message_annotations.find("x-opt-message-state")
                ->as_int64(),
            1);
  // Locked now: a second fetch fails until it is settled.
  broker_.receive_deferred(q(), {1}, true, now_, error);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->condition, "com.microsoft:message-not-found");
  // Abandoning a deferred message keeps it deferred.
  EXPECT_FALSE(broker_.abandon(q(), *fetched[0].lock, Value::null(), now_));
  EXPECT_EQ(broker_.counts(q()).deferred, 1u);
  error.reset();
  fetched = broker_.receive_deferred(q(), {1}, true, now_, error);
  EXPECT_FALSE(broker_.complete(q(), *fetched[0].lock, now_));
  EXPECT_EQ(broker_.counts(q()).total(), 0u);
}

TEST_F(BrokerTest, ReleaseDoesNotCountADelivery) {
  broker_.send(q(), {text_message("x")}, now_);
  auto out = broker_.acquire(q(), true, 7, now_);
  EXPECT_FALSE(broker_.release(q(), *out->lock, now_));
  out = broker_.acquire(q(), true, 7, now_);
  EXPECT_EQ(amqp::parse_message(out->bytes).header_field(amqp::kDeliveryCount).as_uint64(), 0u);
  broker_.drop_owner(7, now_);  // The link went away: its lock is abandoned.
  out = broker_.acquire(q(), true, 8, now_);
  EXPECT_EQ(amqp::parse_message(out->bytes).header_field(amqp::kDeliveryCount).as_uint64(), 1u);
}

TEST_F(BrokerTest, ScheduledMessagesAppearAtTheirTime) {
  auto m = text_message("later");
  m.message_annotations =
      Value::map({{Value::symbol("x-opt-scheduled-enqueue-time"), Value::timestamp(now_ + 500)}});
  broker_.send(q(), {m}, now_);
  EXPECT_EQ(broker_.counts(q()).scheduled, 1u);
  EXPECT_FALSE(broker_.acquire(q(), true, 1, now_));
  EXPECT_TRUE(broker_.tick(now_ + 500));
  EXPECT_TRUE(broker_.acquire(q(), true, 1, now_ + 500));
}

TEST_F(BrokerTest, ExpiredMessagesAreDeadLetteredWhenTheEntitySaysSo) {
  auto& ttl = *broker_.find("ttl");
  broker_.send(ttl, {text_message("short-lived")}, now_);
  broker_.tick(now_ + 1'000);
  EXPECT_EQ(broker_.counts(ttl).total(), 0u);
  auto dead = broker_.acquire(*broker_.find("ttl/$DeadLetterQueue"), true, 1, now_ + 1'000);
  ASSERT_TRUE(dead);
  EXPECT_EQ(
      amqp::parse_message(dead->bytes).application_properties.find("DeadLetterReason")->as_bytes(),
      "TTLExpiredException");
}

TEST_F(BrokerTest, RulesCanBeAddedOnceAndRemoved) {
  auto& sub = *broker_.find("t/Subscriptions/all");
  EXPECT_FALSE(broker_.add_rule(sub, "extra", true_filter(), now_));
  auto duplicate = broker_.add_rule(sub, "EXTRA", true_filter(), now_);
  ASSERT_TRUE(duplicate);
  EXPECT_EQ(duplicate->status, 409);
  EXPECT_FALSE(broker_.remove_rule(sub, "extra"));
  EXPECT_EQ(broker_.remove_rule(sub, "extra")->status, 404);
}

/// Every table of `entity` is empty: nothing of a settled message is left behind.
void expect_empty_tables(const Broker& broker, const Entity& entity) {
  auto t = broker.tables(entity);
  SCOPED_TRACE(entity.path());
  EXPECT_EQ(t.messages, 0u);
  EXPECT_EQ(t.available, 0u);
  EXPECT_EQ(t.locks, 0u);
  EXPECT_EQ(t.lock_expiries, 0u);
  EXPECT_EQ(t.schedule, 0u);
  EXPECT_EQ(t.expiries, 0u);
  EXPECT_EQ(t.message_ids, 0u);
  EXPECT_EQ(t.pending_changes, 0u);
}

/// Each way a message can leave an entity, many times over.
enum class Settle {
  kComplete,
  kReceiveAndDelete,
  kDeferThenComplete,
  kAbandonThenComplete,
  kDeadLetterThenComplete,
  kLockExpiryThenComplete,
  kExpiry,
  kCancelSchedule
};

class SettledMessages : public BrokerTest, public ::testing::WithParamInterface<Settle> {};

TEST_P(SettledMessages, LeaveNothingInTheEntitysTables) {
  constexpr int kMessages = 200;
  auto& topic = *broker_.find("t");
  auto& sub = *broker_.find("t/Subscriptions/all");
  auto& ttl = *broker_.find("ttl");
  for (int i = 0; i < kMessages; ++i) {
    auto m = text_message("m" + std::to_string(i));
    if (GetParam() == Settle::kCancelSchedule) {
      m.message_annotations = Value::map(
          {{Value::symbol("x-opt-scheduled-enqueue-time"), Value::timestamp(now_ + 60'000)}});
    }
    if (GetParam() == Settle::kExpiry) {
      broker_.send(ttl, {m}, now_);
    } else {
      broker_.send(topic, {m}, now_);
      broker_.send(q(), {std::move(m)}, now_);
    }
  }
  auto drain = [&](Entity& e) {
    auto* dlq = broker_.find(e.path() + "/$DeadLetterQueue");
    while (auto out = broker_.acquire(e, GetParam() != Settle::kReceiveAndDelete, 1, now_)) {
      if (!out->lock) continue;
      switch (GetParam()) {
        case Settle::kDeferThenComplete: {
          ASSERT_FALSE(broker_.defer(e, *out->lock, Value::null(), now_));
          std::optional<Failure> error;
          auto fetched = broker_.receive_deferred(e, {out->sequence_number}, true, now_, error);
          ASSERT_FALSE(error);
          ASSERT_FALSE(broker_.complete(e, *fetched.at(0).lock, now_));
          break;
        }
        case Settle::kAbandonThenComplete:
          ASSERT_FALSE(broker_.abandon(e, *out->lock, Value::null(), now_));
          ASSERT_FALSE(broker_.complete(e, *broker_.acquire(e, true, 1, now_)->lock, now_));
          break;
        case Settle::kDeadLetterThenComplete:
          ASSERT_FALSE(broker_.dead_letter(e, *out->lock, "r", "d", Value::null(), now_));
          ASSERT_FALSE(broker_.complete(*dlq, *broker_.acquire(*dlq, true, 1, now_)->lock, now_));
          break;
        case Settle::kLockExpiryThenComplete: {
          broker_.expire_locks(e, now_);
          auto again = broker_.acquire(e, true, 1, now_);
          ASSERT_TRUE(again);
          ASSERT_FALSE(broker_.complete(e, *again->lock, now_));
          break;
        }
        default:
          ASSERT_FALSE(broker_.complete(e, *out->lock, now_));
      }
    }
    expect_empty_tables(broker_, e);
    if (dlq != nullptr) expect_empty_tables(broker_, *dlq);
  };
  switch (GetParam()) {
    case Settle::kExpiry:
      broker_.tick(now_ + 1'000);
      broker_.tick(now_ + 1'001);
      drain(*broker_.find("ttl/$DeadLetterQueue"));
      expect_empty_tables(broker_, ttl);
      break;
    case Settle::kCancelSchedule: {
      std::vector<std::int64_t> numbers;
      for (int i = 1; i <= kMessages; ++i) numbers.push_back(i);
      broker_.cancel_scheduled(q(), numbers);
      broker_.cancel_scheduled(topic, numbers);
      expect_empty_tables(broker_, q());
      expect_empty_tables(broker_, sub);
      break;
    }
    default:
      drain(q());
      drain(sub);
      drain(*broker_.find("t/Subscriptions/red"));
  }
  expect_empty_tables(broker_, topic);
}

INSTANTIATE_TEST_SUITE_P(EveryWay, SettledMessages,
                         ::testing::Values(Settle::kComplete, Settle::kReceiveAndDelete,
                                           Settle::kDeferThenComplete, Settle::kAbandonThenComplete,
                                           Settle::kDeadLetterThenComplete,
                                           Settle::kLockExpiryThenComplete, Settle::kExpiry,
                                           Settle::kCancelSchedule));

TEST(BrokerJournal, ChangesAreKeptOnlyUntilTheyAreWritten) {
  BusConfig c;
  c.queues.push_back({"q", {}});
  auto dir = std::filesystem::temp_directory_path() /
             ("metro-broker-tables-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  {
    Journal journal(dir);
    Broker broker(c, true);
    auto& q = *broker.find("q");
    broker.send(q, {text_message("a"), text_message("b")}, 1);
    EXPECT_EQ(broker.tables(q).pending_changes, 2u);
    broker.flush(journal);
    EXPECT_EQ(broker.tables(q).pending_changes, 0u);
    while (auto out = broker.acquire(q, true, 1, 1))
      ASSERT_FALSE(broker.complete(q, *out->lock, 1));
    broker.flush(journal);
    expect_empty_tables(broker, q);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace metro::emulator
