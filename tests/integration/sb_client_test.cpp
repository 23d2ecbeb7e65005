// The C++ Service Bus client against the in-process emulator, plain and TLS, and against a raw
// AMQP server that misbehaves.
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include <gtest/gtest.h>
#include <proton/disposition.h>

#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>
#include <metro/sb/sas.hpp>

#include "../support/amqp_bytes.hpp"
#include "../support/raw_amqp.hpp"
#include "../support/test_support.hpp"

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

TEST_F(SbClient, ACallbackGetsWhatArrivedTogetherNotOnlyTheFirstMessage) {
  Client client(bus_.connection_string(), quick());
  auto sender = client.create_sender("q");
  std::vector<Message> batch;
  for (int i = 0; i < 10; ++i) batch.push_back(text("m" + std::to_string(i)));
  sender.send(batch);
  ASSERT_TRUE(test::wait_until([&] { return bus_.counts("q").active == 10; }, 10s));
  auto receiver = client.create_receiver("q");  // No prefetch: credit only for what is asked.
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<ReceivedMessage> got;
  receiver.receive_async(10, 30s, [&](std::vector<ReceivedMessage> messages) {
    std::lock_guard lock(mutex);
    got = std::move(messages);
    changed.notify_all();
  });
  {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(changed.wait_for(lock, 10s, [&] { return !got.empty(); }));
  }
  // The ten answer one grant of credit and come in one read: the callback gets them together
  // (it used to get the first alone, and every other waiter one each).
  EXPECT_GT(got.size(), 1u);
  for (const auto& m : got) receiver.complete(m);
  auto rest = receiver.receive(10, 5s);
  for (const auto& m : rest) receiver.complete(m);
  EXPECT_EQ(got.size() + rest.size(), 10u);
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
  // Once the client knows, settling on the dead link is a clear lock-lost error, not a silent
  // success. (A settlement under way while the connection drops fails as ConnectionLostError.)
  ASSERT_TRUE(test::wait_until([&] { return disconnects.load() == 1; }, 10s));
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

namespace metro::sb {
namespace {

// ---- Lifetimes: what outlives what, and calls after close ------------------------------------

TEST_F(SbClient, ASenderOrReceiverOutlivingItsClientIsRefusedClearly) {
  std::optional<Sender> sender;
  std::optional<Receiver> receiver;
  {
    Client client(bus_.connection_string(), quick());
    sender = client.create_sender("q");
    receiver = client.create_receiver("q");
  }
  try {
    sender->send(text("late"));
    FAIL() << "sent through a destroyed client";
  } catch (const ClientClosedError& e) {
    EXPECT_NE(std::string(e.what()).find("the client is closed"), std::string::npos) << e.what();
    EXPECT_FALSE(e.is_transient());
  }
  EXPECT_THROW(sender->send_async({text("late")}).get(), ClientClosedError);
  EXPECT_THROW(sender->schedule({text("late")}, Clock::now()), ClientClosedError);
  EXPECT_THROW(receiver->receive(1, 100ms), ClientClosedError);
  EXPECT_THROW(receiver->receive_async(1, 100ms).get(), ClientClosedError);
  EXPECT_THROW(receiver->receive_async(1, 100ms, [](std::vector<ReceivedMessage>) {}),
               ClientClosedError);
  EXPECT_THROW(receiver->peek(1, 1), ClientClosedError);
  EXPECT_FALSE(receiver->cancel_receive_async());
  EXPECT_EQ(bus_.counts("q").total(), 0u);
}

TEST_F(SbClient, CallsAfterCloseAreRefusedAndSettlementsOfHeldMessagesToo) {
  Client client(bus_.connection_string(), quick());
  auto sender = client.create_sender("q");
  auto receiver = client.create_receiver("q");
  sender.send(text("held"));
  auto held = receiver.receive(1, 5s).at(0);
  client.close();
  client.close();  // idempotent
  EXPECT_EQ(client.state(), ConnectionState::kClosed);
  EXPECT_THROW(receiver.complete(held), ClientClosedError);
  EXPECT_THROW(receiver.complete_async(held).get(), ClientClosedError);
  EXPECT_THROW(client.create_sender("q"), ClientClosedError);
}

// The event thread is held inside a receive_async callback while a receiver that has started an
// asynchronous settlement goes away: the settlement must not reach into the receiver.
TEST_F(SbClient, AnAsyncSettlementOutlivesTheReceiverThatStartedIt) {
  Client client(bus_.connection_string(), quick());
  client.create_sender("q").send(text("deferred"));
  auto first = client.create_receiver("q");
  auto m = first.receive(1, 5s).at(0);
  first.defer(m);
  std::optional<Receiver> temporary = client.create_receiver("q");
  auto deferred = temporary->receive_deferred({m.sequence_number});
  ASSERT_EQ(deferred.size(), 1u);

  auto blocker = client.create_receiver("metro-demo/Subscriptions/sub");
  std::promise<void> inside;
  std::promise<void> release;
  auto released = release.get_future().share();
  blocker.receive_async(1, 30s, [&, released](std::vector<ReceivedMessage>) {
    inside.set_value();
    released.wait();  // the event thread waits here
  });
  client.create_sender("metro-demo").send(text("wake the event thread"));
  ASSERT_EQ(inside.get_future().wait_for(10s), std::future_status::ready);
  // Started while the event thread is busy, and the receiver gone before it runs.
  auto settled = temporary->complete_async(deferred.at(0));
  temporary.reset();
  release.set_value();
  ASSERT_EQ(settled.wait_for(10s), std::future_status::ready);
  EXPECT_NO_THROW(settled.get());
  EXPECT_EQ(bus_.counts("q").total(), 0u);
}

TEST_F(SbClient, ASubscriptionStopsFromItsOwnCallback) {
  Client client(bus_.connection_string(), quick());
  auto receiver = client.create_receiver("q");
  Subscription subscription;
  std::promise<void> stopped;
  std::atomic<int> calls{0};
  subscription = receiver.subscribe([&](ReceivedMessage& m) {
    receiver.complete(m);
    if (++calls == 1) {
      subscription.stop();  // from its own thread
      stopped.set_value();
    }
  });
  client.create_sender("q").send(std::vector<Message>{text("1"), text("2")});
  ASSERT_EQ(stopped.get_future().wait_for(10s), std::future_status::ready);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(calls.load(), 1);  // nothing after the stop
}

TEST_F(SbClient, MoveAssigningOverARunningSubscriptionStopsIt) {
  Client client(bus_.connection_string(), quick());
  auto receiver = client.create_receiver("q");
  std::atomic<int> first{0};
  std::atomic<int> second{0};
  auto subscription = receiver.subscribe([&](ReceivedMessage& m) {
    ++first;
    receiver.complete(m);
  });
  subscription = receiver.subscribe([&](ReceivedMessage& m) {
    ++second;
    receiver.complete(m);
  });
  client.create_sender("q").send(std::vector<Message>{text("a"), text("b")});
  ASSERT_TRUE(test::wait_until([&] { return second == 2; }, 10s));
  EXPECT_EQ(first.load(), 0);
}

TEST_F(SbClient, ACallbackThatThrowsDoesNotEndTheSubscription) {
  Client client(bus_.connection_string(), quick());
  auto receiver = client.create_receiver("q");
  std::mutex mutex;
  std::vector<std::string> bodies;
  auto subscription = receiver.subscribe([&](ReceivedMessage& m) {
    receiver.complete(m);
    if (m.body == "boom") throw std::runtime_error("the callback failed");
    if (m.body == "odd") throw 42;
    std::lock_guard lock(mutex);
    bodies.push_back(m.body);
  });
  client.create_sender("q").send(std::vector<Message>{text("boom"), text("odd"), text("after")});
  ASSERT_TRUE(test::wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return bodies.size() == 1;
      },
      10s));
  EXPECT_EQ(bodies.front(), "after");
}

TEST_F(SbClient, ADroppedReceiverLetsGoOfItsLinkAndItsCredit) {
  Client client(bus_.connection_string(), quick());
  auto sender = client.create_sender("q");
  for (int i = 0; i < 20; ++i) {
    auto gone = client.create_receiver("q", {ReceiveMode::kPeekLock, 10});
  }
  sender.send(text("for the receiver that is there"));
  auto receiver = client.create_receiver("q");
  // A dropped receiver still attached would hold the message under its lock (30 s here).
  auto got = receiver.receive(1, 5s);
  ASSERT_EQ(got.size(), 1u);
  receiver.complete(got[0]);
}

TEST_F(SbClient, ReceiveAsyncWaitsWithoutAThreadPerCall) {
  Client client(bus_.connection_string(), quick());
  auto receiver = client.create_receiver("q");
  auto threads = [] {
    return std::distance(std::filesystem::directory_iterator("/proc/self/task"),
                         std::filesystem::directory_iterator{});
  };
  auto before = threads();
  std::vector<std::future<std::vector<ReceivedMessage>>> waiting;
  for (int i = 0; i < 20; ++i) waiting.push_back(receiver.receive_async(1, 20s));
  EXPECT_LT(threads() - before, 3);
  std::vector<Message> messages;
  for (int i = 0; i < 20; ++i) messages.push_back(text(std::to_string(i)));
  client.create_sender("q").send(messages);
  std::size_t got = 0;
  for (auto& f : waiting) {
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    for (auto& m : f.get()) {
      receiver.complete(m);
      ++got;
    }
  }
  EXPECT_EQ(got, 20u);
  // One that times out answers empty, on time.
  auto nothing = receiver.receive_async(1, 200ms);
  ASSERT_EQ(nothing.wait_for(5s), std::future_status::ready);
  EXPECT_TRUE(nothing.get().empty());
}

TEST(SbClientStart, AFailedStartFreesWhatItMadeAndSaysWhy) {
  ClientOptions options;
  options.ca_file = "/nonexistent/ca.pem";
  try {
    Client client("Endpoint=sb://localhost:5671;SharedAccessKeyName=k;SharedAccessKey=v", options);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/ca.pem"), std::string::npos);
  }
  // Under ASan, LeakSanitizer checks that the proactor and the TLS domain were freed.
}

TEST_F(SbClient, CloseFromTwoThreadsAtOnceAndFromTheClientsOwnThread) {
  for (int i = 0; i < 10; ++i) {
    Client client(bus_.connection_string(), quick());
    client.create_sender("q");
    std::thread a([&] { client.close(); });
    std::thread b([&] { client.close(); });
    a.join();
    b.join();
    EXPECT_EQ(client.state(), ConnectionState::kClosed);
  }
  // From a callback on the client's own thread: it cannot wait for itself, and must not hang.
  std::promise<void> closed;
  auto options = quick();
  Client* self = nullptr;
  options.on_state_change = [&](ConnectionState s, const std::string&) {
    if (s == ConnectionState::kDisconnected) self->close();
    if (s == ConnectionState::kClosed) closed.set_value();
  };
  Client client(bus_.connection_string(), options);
  self = &client;
  auto sender = client.create_sender("q");
  bus_.drop_connections();
  ASSERT_EQ(closed.get_future().wait_for(10s), std::future_status::ready);
  EXPECT_THROW(sender.send(text("after")), ClientClosedError);
}

// ---- A raw server that misbehaves ------------------------------------------------------------

ClientOptions brief() {
  ClientOptions o;
  o.operation_timeout = 1s;
  return o;
}

TEST(SbClientRawPeer, APutTokenWithNoReplyDoesNotBlockTheEntityAfterwards) {
  test::RawAmqpServer server;
  server.ignore_put_tokens(1);
  Client client(server.connection_string(), brief());
  EXPECT_THROW(client.create_sender("q"), TimeoutError);
  // Once that put-token is past its deadline, the next attach of the entity puts a token again,
  // and works (it used to wait behind the unanswered one until a reconnect).
  ASSERT_TRUE(test::wait_until(
      [&] {
        try {
          client.create_sender("q");
          return true;
        } catch (const TimeoutError&) {
          return false;
        }
      },
      10s));
  EXPECT_GE(server.put_tokens(), 2);
  EXPECT_EQ(client.state(), ConnectionState::kConnected);
}

TEST(SbClientRawPeer, AnUnansweredRequestFailsItsFutureAtTheDeadline) {
  test::RawAmqpServer server;
  // receive-by-sequence-number is answered with one deferred message; nothing else is.
  server.on_management([](const std::string&, const amqp::Message& request)
                           -> std::optional<std::pair<amqp::Value, amqp::Value>> {
    const auto* op = request.application_properties.find("operation");
    if (op == nullptr || op->as_bytes() != "com.microsoft:receive-by-sequence-number") {
      return std::nullopt;
    }
    amqp::Message message;
    message.data_sections.push_back("deferred");
    message.message_annotations =
        amqp::Value::map({{amqp::Value::symbol("x-opt-sequence-number"), amqp::Value::long_(7)}});
    auto entry = amqp::Value::map(
        {{amqp::Value::string("message"), amqp::Value::binary(amqp::encode_message(message))},
         {amqp::Value::string("lock-token"), amqp::Value::uuid(amqp::random_uuid())}});
    return std::pair{
        amqp::Value::map({{amqp::Value::string("statusCode"), amqp::Value::int_(200)}}),
        amqp::Value::map({{amqp::Value::string("messages"), amqp::Value::list({entry})}})};
  });
  Client client(server.connection_string(), brief());
  auto receiver = client.create_receiver("q");
  auto deferred = receiver.receive_deferred({7});
  ASSERT_EQ(deferred.size(), 1u);
  auto settled = receiver.complete_async(deferred[0]);
  // No reply ever comes: the future fails by itself at the deadline, with nothing waiting on it.
  ASSERT_EQ(settled.wait_for(10s), std::future_status::ready);
  EXPECT_THROW(settled.get(), TimeoutError);
  EXPECT_THROW(receiver.peek(1, 1), TimeoutError);
  // The peer is alive (its heartbeats come): a slow answer is not a dead connection.
  EXPECT_EQ(client.state(), ConnectionState::kConnected);
}

namespace bytes = metro::test::amqp_bytes;

TEST(SbClientRawPeer, APoisonMessageIsRejectedWithADecodeErrorAndTheRestFlows) {
  test::RawAmqpServer server;
  auto deep = bytes::nested_lists(30'000);
  server.deliver("q", bytes::section(bytes::kApplicationProperties, bytes::map_of("deep", deep)));
  server.deliver("q", bytes::section(bytes::kAmqpValue, bytes::nested_maps(100'000)));
  server.deliver("q", bytes::data_section("fine"));
  Client client(server.connection_string(), quick());
  auto receiver = client.create_receiver("q");
  std::vector<ReceivedMessage> got;
  ASSERT_TRUE(test::wait_until(
      [&] {
        for (auto& m : receiver.receive(3, 200ms)) got.push_back(std::move(m));
        return !got.empty();
      },
      10s));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].body, "fine");
  ASSERT_TRUE(test::wait_until([&] { return server.outcomes().size() >= 2; }, 10s));
  for (const auto& outcome : server.outcomes()) {
    EXPECT_EQ(outcome.state, PN_REJECTED);
    EXPECT_EQ(outcome.condition, "amqp:decode-error");
    EXPECT_NE(outcome.description.find("nested more than"), std::string::npos)
        << outcome.description;
  }
  EXPECT_EQ(client.state(), ConnectionState::kConnected);
}

TEST(SbClientRawPeer, ADeeplyNestedReplyIsAClearErrorNotATimeout) {
  test::RawAmqpServer server;
  server.on_management(
      [](const std::string&,
         const amqp::Message&) -> std::optional<std::pair<amqp::Value, amqp::Value>> {
        // A body nested past the limit: built as a Value 200 deep, which the client must refuse.
        auto deep = amqp::Value::list({});
        for (int i = 0; i < 200; ++i) deep = amqp::Value::list({deep});
        return std::pair{
            amqp::Value::map({{amqp::Value::string("statusCode"), amqp::Value::int_(200)}}), deep};
      });
  auto options = quick();
  Client client(server.connection_string(), options);
  auto receiver = client.create_receiver("q");
  auto start = std::chrono::steady_clock::now();
  try {
    receiver.peek(1, 1);
    FAIL();
  } catch (const ServiceBusError& e) {
    EXPECT_EQ(e.condition(), "amqp:decode-error") << e.what();
    EXPECT_NE(std::string(e.what()).find("nested more than"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, options.operation_timeout);
}

// ---- What the body was ------------------------------------------------------------------------

TEST_F(SbClient, AReceivedMessageSaysWhichBodySectionItHad) {
  test::RawAmqpClient raw("127.0.0.1", bus_.port());
  auto audience = std::string("sb://localhost/q");
  ASSERT_EQ(raw.put_token(audience, make_sas_token(audience, "RootManageSharedAccessKey",
                                                   "SAS_KEY_VALUE", Clock::now() + 1h)),
            202);
  auto value_of = [](const amqp::Value& v) { return amqp::encode(v); };
  struct Case {
    std::string bytes;
    BodySection section;
    std::string body;
  };
  std::vector<Case> cases = {
      {bytes::data_section(R"({"a":1})"), BodySection::kData, R"({"a":1})"},
      {bytes::section(bytes::kAmqpValue, value_of(amqp::Value::string(R"({"a":1})"))),
       BodySection::kAmqpValue, R"({"a":1})"},
      {bytes::section(bytes::kAmqpValue, value_of(amqp::Value::map({}))), BodySection::kAmqpValue,
       ""},
      {bytes::section(bytes::kAmqpSequence, value_of(amqp::Value::list({amqp::Value::int_(1)}))),
       BodySection::kAmqpSequence, ""},
      {amqp::encode_section(amqp::kProperties, amqp::Value::list({amqp::Value::string("id")})),
       BodySection::kNone, ""},
  };
  for (const auto& c : cases) ASSERT_EQ(raw.send("q", c.bytes).state, PN_ACCEPTED);
  Client client(bus_.connection_string(), quick());
  auto receiver = client.create_receiver("q");
  std::vector<ReceivedMessage> got;
  while (got.size() < cases.size()) {
    auto more = receiver.receive(cases.size(), 5s);
    ASSERT_FALSE(more.empty());
    for (auto& m : more) got.push_back(std::move(m));
  }
  for (std::size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(got[i].body_section, cases[i].section) << i;
    EXPECT_EQ(got[i].body, cases[i].body) << i;
    receiver.complete(got[i]);
  }
}

}  // namespace
}  // namespace metro::sb
