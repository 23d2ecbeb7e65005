// The C++ Service Bus client against the in-process emulator, plain and TLS.
#include <condition_variable>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

namespace metro::sb {
namespace {

using namespace std::chrono_literals;

emulator::EmulatorOptions bus_options(bool tls = false) {
  emulator::EmulatorOptions o;
  o.port = 0;
  if (tls) o.tls_port = 0;
  emulator::EntityOptions short_lock;
  short_lock.lock_duration = 30s;
  short_lock.max_delivery_count = 3;
  o.bus.queues.push_back({"q", short_lock});
  emulator::TopicOptions topic{"metro-demo", {}, {}};
  topic.subscriptions.push_back({"sub", short_lock, {}});
  o.bus.topics.push_back(topic);
  return o;
}

Message text(std::string body) {
  Message m;
  m.body = std::move(body);
  return m;
}

ClientOptions quick() {
  ClientOptions o;
  o.operation_timeout = 10s;
  return o;
}

class SbClient : public ::testing::Test {
 protected:
  void SetUp() override { bus_.start(); }
  emulator::Emulator bus_{bus_options()};
};

TEST_F(SbClient, SendsAndReceivesEveryField) {
  Client client(bus_.connection_string(), quick());
  auto sender = client.create_sender("metro-demo");
  Message m;
  m.body = R"({"subject":"MetroDemo/Type/GeekJokes"})";
  m.subject = "MetroDemo/Type/GeekJokes";
  m.message_id = "id-1";
  m.correlation_id = "corr-1";
  m.content_type = "application/json";
  m.application_properties = {{"n", std::int64_t{7}}, {"colour", std::string("red")}, {"ok", true}};
  sender.send(m);
  auto receiver = client.create_receiver("metro-demo/Subscriptions/sub");
  auto got = receiver.receive(1, 5s);
  ASSERT_EQ(got.size(), 1u);
  const auto& r = got[0];
  EXPECT_EQ(r.body, m.body);
  EXPECT_EQ(r.subject, m.subject);
  EXPECT_EQ(r.message_id, m.message_id);
  EXPECT_EQ(r.correlation_id, m.correlation_id);
  EXPECT_EQ(r.content_type, m.content_type);
  EXPECT_EQ(r.application_properties, m.application_properties);
  EXPECT_EQ(r.sequence_number, 1);
  EXPECT_EQ(r.delivery_count, 0u);
  EXPECT_EQ(r.lock_token.size(), 36u);
  ASSERT_TRUE(r.locked_until);
  EXPECT_GT(*r.locked_until, Clock::now());
  receiver.complete(r);
  EXPECT_EQ(bus_.counts("metro-demo/Subscriptions/sub").total(), 0u);
}

TEST_F(SbClient, ReceiveWithACallbackWaitsWithoutAThread) {
  Client client(bus_.connection_string(), quick());
  auto sender = client.create_sender("q");
  auto receiver = client.create_receiver("q");
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::vector<ReceivedMessage>> calls;
  auto record = [&](std::vector<ReceivedMessage> got) {
    std::lock_guard lock(mutex);
    calls.push_back(std::move(got));
    changed.notify_all();
  };
  auto wait_for_calls = [&](std::size_t n) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 10s, [&] { return calls.size() >= n; });
  };

  // Waiting: a message that arrives later is handed over.
  receiver.receive_async(5, 30s, record);
  EXPECT_THROW(receiver.receive_async(5, 30s, record), InvalidArgument);
  sender.send(text("late"));
  ASSERT_TRUE(wait_for_calls(1));
  ASSERT_EQ(calls[0].size(), 1u);
  EXPECT_EQ(calls[0][0].body, "late");
  receiver.complete(calls[0][0]);

  // Nothing comes: an empty answer once the time is up.
  receiver.receive_async(5, 100ms, record);
  ASSERT_TRUE(wait_for_calls(2));
  EXPECT_TRUE(calls[1].empty());

  // Cancelled: never called; what arrives stays for the next receive.
  receiver.receive_async(5, 30s, record);
  EXPECT_TRUE(receiver.cancel_receive_async());
  EXPECT_FALSE(receiver.cancel_receive_async());
  sender.send(text("kept"));
  auto kept = receiver.receive(1, 5s);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].body, "kept");
  receiver.complete(kept[0]);
  {
    std::lock_guard lock(mutex);
    EXPECT_EQ(calls.size(), 2u);
  }

  // Waiting when the client closes: answered, empty.
  receiver.receive_async(5, 30s, record);
  client.close();
  ASSERT_TRUE(wait_for_calls(3));
  EXPECT_TRUE(calls[2].empty());
}

TEST_F(SbClient, DefersAndCompletesBySequenceNumberInOneBatch) {
  Client client(bus_.connection_string(), quick());
  auto sender = client.create_sender("q");
  sender.send(std::vector<Message>{text("a"), text("b"), text("c")});
  auto receiver = client.create_receiver("q");
  std::vector<ReceivedMessage> got;
  while (got.size() < 3) {
    auto more = receiver.receive(3 - got.size(), 5s);
    ASSERT_FALSE(more.empty());
    got.insert(got.end(), more.begin(), more.end());
  }
  std::vector<std::int64_t> numbers;
  for (const auto& m : got) {
    receiver.defer(m);
    numbers.push_back(m.sequence_number);
  }
  EXPECT_EQ(bus_.counts("q").deferred, 3u);
  auto peeked = receiver.peek(1, 10);
  ASSERT_EQ(peeked.size(), 3u);
  EXPECT_EQ(peeked[0].state, MessageState::kDeferred);
  EXPECT_TRUE(peeked[0].lock_token.empty());
  auto deferred = receiver.receive_deferred(numbers);
  ASSERT_EQ(deferred.size(), 3u);
  EXPECT_EQ(deferred[1].body, "b");
  EXPECT_FALSE(deferred[1].lock_token.empty());
  receiver.complete(deferred[0]);  // one by itself, the rest in one request
  receiver.complete_deferred({deferred[1], deferred[2]});
  EXPECT_EQ(bus_.counts("q").total(), 0u);
  EXPECT_THROW(receiver.receive_deferred(numbers), NotFoundError);
}

TEST_F(SbClient, AbandonCountsAndDeadLetterCarriesTheReason) {
  Client client(bus_.connection_string(), quick());
  client.create_sender("q").send(text("x"));
  auto receiver = client.create_receiver("q");
  auto first = receiver.receive(1, 5s).at(0);
  receiver.abandon(first, {{"why", std::string("busy")}});
  auto second = receiver.receive(1, 5s).at(0);
  EXPECT_EQ(second.delivery_count, 1u);
  EXPECT_EQ(std::get<std::string>(second.application_properties.at("why")), "busy");
  receiver.dead_letter(second, "MalformedBody", "not JSON");
  auto dlq = client.create_receiver("q/$DeadLetterQueue");
  auto dead = dlq.receive(1, 5s).at(0);
  EXPECT_EQ(dead.dead_letter_reason, "MalformedBody");
  EXPECT_EQ(dead.dead_letter_description, "not JSON");
  dlq.complete(dead);
}

TEST_F(SbClient, ALostLockIsAClearError) {
  Client client(bus_.connection_string(), quick());
  client.create_sender("q").send(text("x"));
  auto receiver = client.create_receiver("q");
  auto m = receiver.receive(1, 5s).at(0);
  auto renewed = receiver.renew_lock(m);
  EXPECT_GE(renewed, *m.locked_until);
  bus_.expire_locks("q");
  EXPECT_THROW(receiver.complete(m), LockLostError);
  EXPECT_THROW(receiver.renew_lock(m), LockLostError);
  auto again = receiver.receive(1, 5s).at(0);
  EXPECT_EQ(again.delivery_count, 1u);
  receiver.complete(again);
}

TEST_F(SbClient, SchedulesAndCancels) {
  Client client(bus_.connection_string(), quick());
  auto sender = client.create_sender("q");
  auto soon = sender.schedule({text("soon")}, Clock::now() + 300ms);
  auto later = sender.schedule({text("later")}, Clock::now() + 1h);
  ASSERT_EQ(soon.size(), 1u);
  EXPECT_EQ(bus_.counts("q").scheduled, 2u);
  sender.cancel_scheduled(later);
  auto receiver = client.create_receiver("q");
  auto got = receiver.receive(1, 5s);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].body, "soon");
  EXPECT_EQ(got[0].sequence_number, soon[0]);
  receiver.complete(got[0]);
  EXPECT_EQ(bus_.counts("q").total(), 0u);
}

TEST_F(SbClient, ReceiveAndDeleteTakesWithoutLocks) {
  Client client(bus_.connection_string(), quick());
  client.create_sender("q").send(text("gone"));
  auto receiver = client.create_receiver("q", {ReceiveMode::kReceiveAndDelete, 0});
  auto got = receiver.receive(1, 5s);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0].lock_token.empty());
  EXPECT_THROW(receiver.complete(got[0]), InvalidArgument);
  EXPECT_EQ(bus_.counts("q").total(), 0u);
}

TEST_F(SbClient, UnknownEntitiesAndWrongKeysAreDistinctErrors) {
  Client client(bus_.connection_string(), quick());
  try {
    client.create_sender("nope");
    FAIL();
  } catch (const NotFoundError& e) {
    EXPECT_EQ(e.condition(), "amqp:not-found");
    EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos);
    EXPECT_FALSE(e.is_transient());
  }
  auto wrong = bus_.connection_string();
  wrong.replace(wrong.find("SAS_KEY_VALUE"), 13, "wrong");
  Client bad(wrong, quick());
  EXPECT_THROW(bad.create_sender("q"), UnauthorizedError);
}

TEST_F(SbClient, ReconnectsAfterTheConnectionDropsAndLosesNothing) {
  std::atomic<int> disconnects{0};
  auto options = quick();
  options.on_state_change = [&](ConnectionState s, const std::string&) {
    if (s == ConnectionState::kDisconnected) ++disconnects;
  };
  Client client(bus_.connection_string(), options);
  auto sender = client.create_sender("q");
  auto receiver = client.create_receiver("q");
  sender.send(text("before"));
  auto held = receiver.receive(1, 5s).at(0);
  bus_.drop_connections();
  // Settling on the dead link is a clear lock-lost error, not a silent success.
  EXPECT_THROW(receiver.complete(held), LockLostError);
  sender.send(text("after"));  // re-attached without the caller doing anything
  std::vector<std::string> bodies;
  for (int i = 0; i < 10 && bodies.size() < 2; ++i) {
    for (auto& m : receiver.receive(2, 2s)) {
      bodies.push_back(m.body);
      receiver.complete(m);
    }
  }
  std::sort(bodies.begin(), bodies.end());
  EXPECT_EQ(bodies, (std::vector<std::string>{"after", "before"}));
  EXPECT_EQ(disconnects.load(), 1);
  EXPECT_EQ(client.state(), ConnectionState::kConnected);
}

TEST(SbClientTls, WorksOverTlsWithTheEmulatorsCertificate) {
  emulator::Emulator bus(bus_options(true));
  bus.start();
  auto options = quick();
  options.ca_file = bus.certificate_file().string();
  Client client("Endpoint=sb://localhost:" + std::to_string(*bus.tls_port()) +
                    ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE",
                options);
  client.create_sender("q").send(text("secure"));
  auto receiver = client.create_receiver("q");
  auto got = receiver.receive(1, 5s);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].body, "secure");
  receiver.complete(got[0]);
}

}  // namespace
}  // namespace metro::sb

namespace metro::sb {
namespace {

TEST_F(SbClient, ShortLivedTokensAreRenewedForNewLinks) {
  auto options = quick();
  options.token_lifetime = std::chrono::seconds(2);
  Client client(bus_.connection_string(), options);
  auto sender = client.create_sender("q");
  // The first token has expired by now; a new link on the same entity needs the refreshed one.
  std::this_thread::sleep_for(3s);
  auto second = client.create_sender("q");
  second.send(text("fresh"));
  sender.send(text("old link"));
  EXPECT_EQ(bus_.counts("q").active, 2u);
}

}  // namespace
}  // namespace metro::sb

namespace metro::sb {
namespace {

TEST(SbClientLocks, AutomaticRenewalKeepsAHeldMessageLocked) {
  auto options = bus_options();
  emulator::EntityOptions brief;
  brief.lock_duration = std::chrono::seconds(2);
  options.bus.queues.push_back({"brief", brief});
  emulator::Emulator bus(options);
  bus.start();
  Client client(bus.connection_string(), quick());
  client.create_sender("brief").send(text("slow handler"));
  ReceiverOptions renewing;
  renewing.auto_renew_lock_for = std::chrono::seconds(30);
  auto receiver = client.create_receiver("brief", renewing);
  auto m = receiver.receive(1, 5s).at(0);
  std::this_thread::sleep_for(4500ms);  // more than two lock durations
  EXPECT_EQ(bus.counts("brief").locked, 1u);
  receiver.complete(m);
  EXPECT_EQ(bus.counts("brief").total(), 0u);
}

}  // namespace
}  // namespace metro::sb

namespace metro::sb {
namespace {

TEST_F(SbClient, SubscribeDeliversToACallback) {
  Client client(bus_.connection_string(), quick());
  auto receiver = client.create_receiver("q", {ReceiveMode::kPeekLock, 16});
  std::mutex mutex;
  std::vector<std::string> bodies;
  auto subscription = receiver.subscribe([&](ReceivedMessage& m) {
    receiver.complete(m);
    std::lock_guard lock(mutex);
    bodies.push_back(m.body);
  });
  client.create_sender("q").send(std::vector<Message>{text("1"), text("2"), text("3")});
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard lock(mutex);
      if (bodies.size() == 3) break;
    }
    std::this_thread::sleep_for(10ms);
  }
  subscription.stop();
  EXPECT_EQ(bodies, (std::vector<std::string>{"1", "2", "3"}));
  EXPECT_EQ(bus_.counts("q").total(), 0u);
}

TEST_F(SbClient, ManagesRules) {
  Client client(bus_.connection_string(), quick());
  auto receiver = client.create_receiver("metro-demo/Subscriptions/sub");
  receiver.add_sql_rule("big", "quantity > 10");
  RuleInfo red;
  red.label = "order";
  red.properties = {{"colour", std::string("red")}};
  receiver.add_correlation_rule("red", red);
  EXPECT_THROW(receiver.add_sql_rule("big", "1=1"), ServiceBusError);
  receiver.remove_rule("$Default");
  auto rules = receiver.rules();
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_EQ(rules[0].name, "big");
  EXPECT_EQ(rules[0].sql, "quantity > 10");
  EXPECT_EQ(rules[1].label, "order");
  EXPECT_EQ(std::get<std::string>(rules[1].properties.at("colour")), "red");
  receiver.remove_rule("big");
  EXPECT_THROW(receiver.remove_rule("big"), NotFoundError);
}

TEST_F(SbClient, AnUnansweredCallTimesOut) {
  auto options = quick();
  options.operation_timeout = 300ms;
  // Nothing listens on this port: the client keeps reconnecting and the call gives up in time.
  Client client(
      "Endpoint=sb://localhost:1;SharedAccessKeyName=k;SharedAccessKey=v;"
      "UseDevelopmentEmulator=true",
      options);
  auto start = std::chrono::steady_clock::now();
  try {
    client.create_sender("q");
    FAIL();
  } catch (const TimeoutError& e) {
    EXPECT_TRUE(e.is_transient());
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

}  // namespace
}  // namespace metro::sb

namespace metro::sb {
namespace {

TEST_F(SbClient, FutureFormsAndBatchedSettlementOfDeferredMessages) {
  Client client(bus_.connection_string(), quick());
  client.create_sender("q").send(std::vector<Message>{text("1"), text("2"), text("3"), text("4")});
  auto receiver = client.create_receiver("q", {ReceiveMode::kPeekLock, 8});
  std::vector<ReceivedMessage> got;
  while (got.size() < 4) {
    auto more = receiver.receive(4, 5s);
    got.insert(got.end(), more.begin(), more.end());
  }
  std::vector<std::future<void>> pending;
  for (auto& m : got) pending.push_back(receiver.defer_async(m));
  for (auto& f : pending) f.get();
  EXPECT_EQ(bus_.counts("q").deferred, 4u);
  auto deferred = receiver.receive_deferred({got[0].sequence_number, got[1].sequence_number,
                                             got[2].sequence_number, got[3].sequence_number});
  receiver.settle_deferred({deferred[0], deferred[1]}, Disposition::kDeadLetter, "Poison", "bad");
  receiver.complete_async(deferred[2]).get();
  receiver.settle_deferred({deferred[3]}, Disposition::kAbandon);  // stays deferred
  auto counts = bus_.counts("q");
  EXPECT_EQ(counts.deferred, 1u);
  EXPECT_EQ(counts.dead_lettered, 2u);
  auto dead = client.create_receiver("q/$DeadLetterQueue").receive(2, 5s);
  ASSERT_FALSE(dead.empty());
  EXPECT_EQ(dead[0].dead_letter_reason, "Poison");
}

}  // namespace
}  // namespace metro::sb
