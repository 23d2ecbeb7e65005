// The emulator in-process with its test hooks, driven by the official JS SDK as the client.
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <proton/disposition.h>

#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>
#include <metro/sb/sas.hpp>

#include "../support/amqp_bytes.hpp"
#include "../support/raw_amqp.hpp"
#include "peer.hpp"

namespace metro::emulator {
namespace {

using nlohmann::json;

EmulatorOptions options(std::filesystem::path data_dir = {}) {
  EmulatorOptions o;
  o.port = 0;
  o.data_dir = std::move(data_dir);
  EntityOptions slow;
  slow.lock_duration = std::chrono::minutes(5);
  o.bus.queues.push_back({"hooks", slow});
  o.bus.queues.push_back({"drop", {}});
  o.bus.queues.push_back({"durable", {}});
  return o;
}

template <typename F>
void wait_until(F condition, std::chrono::milliseconds timeout, const char* what) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) FAIL() << "timed out waiting for " << what;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

TEST(EmulatorHooks, CountsFollowEveryState) {
  Emulator bus(options());
  bus.start();
  testing::JsPeer peer(bus.connection_string());
  ASSERT_TRUE(peer.call({{"op", "send"}, {"entity", "hooks"}, {"bodies", {"a", "b", "c"}}})["ok"]);
  auto counts = bus.counts("hooks");
  EXPECT_EQ(counts.active, 3u);
  EXPECT_EQ(counts.locked, 0u);
  auto got = peer.call({{"op", "receive"}, {"entity", "hooks"}, {"count", 1}});
  auto sequence = got["messages"][0]["sequence"];
  EXPECT_EQ(bus.counts("hooks").locked, 1u);
  ASSERT_TRUE(peer.call({{"op", "settle"}, {"sequence", sequence}, {"how", "defer"}})["ok"]);
  counts = bus.counts("hooks");
  EXPECT_EQ(counts.active, 2u);
  EXPECT_EQ(counts.deferred, 1u);
  EXPECT_EQ(counts.locked, 0u);
  EXPECT_THROW(bus.counts("no-such-entity"), InvalidArgument);
}

TEST(EmulatorHooks, ExpiringALockMakesSettlementFailAndRedelivers) {
  Emulator bus(options());
  bus.start();
  testing::JsPeer peer(bus.connection_string());
  peer.call({{"op", "send"}, {"entity", "hooks"}, {"bodies", {"held"}}});
  auto first = peer.call({{"op", "receive"}, {"entity", "hooks"}})["messages"][0];
  bus.expire_locks("hooks");
  EXPECT_EQ(bus.counts("hooks").locked, 0u);
  auto settled =
      peer.call({{"op", "settle"}, {"sequence", first["sequence"]}, {"how", "complete"}});
  EXPECT_FALSE(settled["ok"]) << settled.dump();
  EXPECT_EQ(settled["code"], "MessageLockLost") << settled.dump();
  auto again = peer.call({{"op", "receive"}, {"entity", "hooks"}})["messages"][0];
  EXPECT_EQ(again["body"], "held");
  EXPECT_EQ(again["deliveryCount"], 1);
  EXPECT_TRUE(
      peer.call({{"op", "settle"}, {"sequence", again["sequence"]}, {"how", "complete"}})["ok"]);
  EXPECT_EQ(bus.counts("hooks").total(), 0u);
}

TEST(EmulatorHooks, DroppedConnectionsReconnectAndLoseNothing) {
  Emulator bus(options());
  bus.start();
  testing::JsPeer peer(bus.connection_string());
  peer.call({{"op", "subscribe"}, {"entity", "drop"}});
  peer.call({{"op", "send"}, {"entity", "drop"}, {"bodies", {"before"}}});
  wait_until(
      [&] {
        return peer.call({{"op", "subscribed"}})["bodies"].size() == 1;
      },
      std::chrono::seconds(10), "the first message");
  bus.drop_connections();
  // The SDK notices the drop and reconnects on its own schedule (retries with backoff).
  EXPECT_TRUE(peer.call({{"op", "send"}, {"entity", "drop"}, {"bodies", {"after"}}},
                        std::chrono::seconds(90))["ok"]);
  wait_until(
      [&] {
        return peer.call({{"op", "subscribed"}})["bodies"].size() == 2;
      },
      std::chrono::seconds(20), "the message sent after the drop");
  EXPECT_EQ(peer.call({{"op", "subscribed"}})["bodies"], json({"before", "after"}));
  wait_until([&] { return bus.counts("drop").total() == 0; }, std::chrono::seconds(10),
             "both messages completed");
}

TEST(EmulatorLatency, EveryReplyComesLaterAndTheSdkLosesNothing) {
  using std::chrono::milliseconds;
  auto o = options();
  o.latency = milliseconds(150);
  Emulator bus(o);
  bus.start();
  testing::JsPeer peer(bus.connection_string());
  ASSERT_TRUE(peer.call({{"op", "send"}, {"entity", "hooks"}, {"bodies", {"a", "b"}}},
                        std::chrono::seconds(60))["ok"]);
  auto got = peer.call({{"op", "receive"}, {"entity", "hooks"}, {"count", 1}},
                       std::chrono::seconds(60))["messages"][0];
  // A settlement is one request and its reply: it cannot come back sooner than the latency.
  auto before = std::chrono::steady_clock::now();
  ASSERT_TRUE(peer.call({{"op", "settle"}, {"sequence", got["sequence"]}, {"how", "defer"}},
                        std::chrono::seconds(60))["ok"]);
  EXPECT_GE(std::chrono::steady_clock::now() - before, milliseconds(150));
  auto counts = bus.counts("hooks");
  EXPECT_EQ(counts.deferred, 1u);
  EXPECT_EQ(counts.active, 1u);
  // A drop reaches the client through the relay, and the SDK comes back through it.
  bus.drop_connections();
  EXPECT_TRUE(peer.call({{"op", "send"}, {"entity", "hooks"}, {"bodies", {"c"}}},
                        std::chrono::seconds(90))["ok"]);
  wait_until([&] { return bus.counts("hooks").active == 2; }, std::chrono::seconds(20),
             "the message sent after the drop");
  bus.stop();  // with the client still connected through the relay
}

TEST(EmulatorLatency, ARelayPortInUseIsAClearError) {
  Emulator first(options());
  first.start();
  auto o = options();
  o.latency = std::chrono::milliseconds(2);
  o.port = first.port();
  Emulator second(o);
  try {
    second.start();
    FAIL() << "started on a port in use";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(first.port())), std::string::npos)
        << e.what();
  }
}

TEST(EmulatorHooks, DataDirKeepsMessagesAcrossARestart) {
  auto dir = std::filesystem::temp_directory_path() / ("metro-hooks-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  {
    Emulator bus(options(dir));
    bus.start();
    testing::JsPeer peer(bus.connection_string());
    peer.call({{"op", "send"}, {"entity", "durable"}, {"bodies", {"one", "two"}}});
    auto got = peer.call({{"op", "receive"}, {"entity", "durable"}})["messages"][0];
    peer.call({{"op", "settle"}, {"sequence", got["sequence"]}, {"how", "defer"}});
  }
  Emulator bus(options(dir));
  bus.start();
  auto counts = bus.counts("durable");
  EXPECT_EQ(counts.active, 1u);
  EXPECT_EQ(counts.deferred, 1u);
  std::filesystem::remove_all(dir);
}

namespace bytes = metro::test::amqp_bytes;

/// A raw client allowed to send to and receive from `entity`.
std::unique_ptr<test::RawAmqpClient> raw_client(Emulator& bus, const std::string& entity) {
  auto client = std::make_unique<test::RawAmqpClient>("127.0.0.1", bus.port());
  auto audience = "sb://localhost/" + entity;
  auto token = sb::make_sas_token(audience, "RootManageSharedAccessKey", "SAS_KEY_VALUE",
                                  std::chrono::system_clock::now() + std::chrono::hours(1));
  EXPECT_EQ(client->put_token(audience, token), 202);
  return client;
}

// A message whose values nest 30,000 or 100,000 deep (900 KB in all) must be refused with
// amqp:decode-error in every place a value can be, and the emulator must keep serving.
TEST(EmulatorBadInput, DeeplyNestedValuesAreRefusedWithADecodeError) {
  Emulator bus(options());
  bus.start();
  auto client = raw_client(bus, "hooks");
  auto deep_value = bytes::nested_lists(30'000);
  for (std::size_t depth : {std::size_t{30'000}, std::size_t{100'000}}) {
    for (const auto& deep :
         {bytes::nested_lists(depth), bytes::nested_maps(depth), bytes::nested_arrays(depth)}) {
      for (const auto& message : {
               bytes::section(bytes::kApplicationProperties, bytes::map_of("deep", deep)),
               bytes::section(bytes::kMessageAnnotations, bytes::map_of("x-deep", deep)),
               bytes::section(bytes::kAmqpValue, deep),
               bytes::section(bytes::kAmqpSequence, deep),
           }) {
        auto outcome = client->send("hooks", message);
        EXPECT_EQ(outcome.state, PN_REJECTED);
        EXPECT_EQ(outcome.condition, "amqp:decode-error") << outcome.description;
        EXPECT_NE(outcome.description.find("nested more than"), std::string::npos)
            << outcome.description;
      }
    }
  }
  // A $management request with a deep body, and a put-token with one, are refused the same way.
  test::Outcome request_outcome;
  std::vector<amqp::Value> properties(amqp::kPropertyFieldCount);
  properties[amqp::kMessageId] = amqp::Value::string("deep-request");
  properties[amqp::kReplyTo] = amqp::Value::string("r");
  auto request = amqp::encode_section(amqp::kProperties, amqp::Value::list(properties)) +
                 amqp::encode_section(
                     amqp::kApplicationProperties,
                     amqp::Value::map({{amqp::Value::string("operation"),
                                        amqp::Value::string("com.microsoft:peek-message")}})) +
                 bytes::section(bytes::kAmqpValue, bytes::nested_maps(30'000));
  for (const auto* node : {"hooks/$management", "$cbs"}) {
    auto reply = client->request(node, "r", request, &request_outcome);
    EXPECT_EQ(request_outcome.condition, "amqp:decode-error") << node;
    EXPECT_FALSE(reply) << node;
  }

  // Inside a data section the same bytes are an opaque payload, not a batch of messages.
  EXPECT_EQ(
      client->send("hooks", bytes::data_section(bytes::section(bytes::kAmqpValue, deep_value)))
          .state,
      PN_ACCEPTED);
  EXPECT_EQ(bus.counts("hooks").total(), 1u);

  // The emulator still takes a plain message on the same connection.
  EXPECT_EQ(client->send("hooks", bytes::data_section("fine")).state, PN_ACCEPTED);
  EXPECT_EQ(bus.counts("hooks").active, 2u);
  EXPECT_TRUE(client->open());
}

// Proton decodes a disposition itself; what it hands over nests as deep as the peer likes.
TEST(EmulatorBadInput, ADeeplyNestedDispositionIsRefusedAndTheLockKept) {
  Emulator bus(options());
  bus.start();
  auto client = raw_client(bus, "hooks");
  ASSERT_EQ(client->send("hooks", bytes::data_section("held")).state, PN_ACCEPTED);
  auto outcome =
      client->receive_and_modify("hooks", bytes::map_of("x-deep", bytes::nested_lists(10'000)));
  EXPECT_EQ(outcome.state, PN_REJECTED);
  EXPECT_EQ(outcome.condition, "amqp:decode-error") << outcome.description;
  auto counts = bus.counts("hooks");
  EXPECT_EQ(counts.active, 1u);
  EXPECT_EQ(counts.locked, 1u);  // not abandoned by a disposition it could not read
  EXPECT_TRUE(client->open());
}

TEST(EmulatorLifetime, StopFromTwoThreadsAtOnceStopsOnce) {
  for (int i = 0; i < 20; ++i) {
    Emulator bus(options());
    bus.start();
    std::thread a([&] { bus.stop(); });
    std::thread b([&] { bus.stop(); });
    a.join();
    b.join();
    EXPECT_THROW(bus.counts("hooks"), Error);  // a hook after stop is refused, not a crash
  }
}

TEST(EmulatorLifetime, AFailedStartFreesWhatItMadeAndSaysWhy) {
  auto o = options();
  o.tls_port = 0;
  o.certificate_file = "/nonexistent/cert.pem";
  o.private_key_file = "/nonexistent/key.pem";
  Emulator bus(o);
  try {
    bus.start();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/cert.pem"), std::string::npos);
  }
  // Under ASan, LeakSanitizer checks that the proactor and the TLS domain were freed.
}

// The emulator keeps nothing per settled message: after a few thousand messages sent in batches
// and settled on the link and over $management, with or without a journal, every table of the
// entity is empty again (its sequence counter is all that remains).
TEST(EmulatorHooks, SettledMessagesLeaveTheTablesEmpty) {
  for (bool journaled : {false, true}) {
    SCOPED_TRACE(journaled ? "with a journal" : "in memory");
    auto dir = std::filesystem::temp_directory_path() /
               ("metro-hooks-tables-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    Emulator bus(options(journaled ? dir : std::filesystem::path{}));
    bus.start();
    sb::Client client(bus.connection_string());
    auto sender = client.create_sender("hooks");
    constexpr int kMessages = 3000;
    std::vector<sb::Message> batch(100);
    for (auto& m : batch) m.body = "steady";
    for (int sent = 0; sent < kMessages; sent += 100) sender.send(batch);
    auto receiver = client.create_receiver("hooks", {sb::ReceiveMode::kPeekLock, 200});
    int settled = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (settled < kMessages && std::chrono::steady_clock::now() < deadline) {
      for (auto& m : receiver.receive(50, std::chrono::milliseconds(500))) {
        // Every tenth goes the long way: deferred, fetched by sequence number, completed.
        if (m.sequence_number % 10 == 0) {
          receiver.defer(m);
          receiver.complete_deferred(receiver.receive_deferred({m.sequence_number}));
        } else {
          receiver.complete(m);
        }
        ++settled;
      }
    }
    ASSERT_EQ(settled, kMessages);
    EntityTables t;
    wait_until(
        [&] {
          t = bus.tables("hooks");
          return t.messages == 0 && t.unsettled_deliveries == 0;
        },
        std::chrono::seconds(30), "every message settled");
    EXPECT_EQ(t.available, 0u);
    EXPECT_EQ(t.locks, 0u);
    EXPECT_EQ(t.lock_expiries, 0u);
    EXPECT_EQ(t.schedule, 0u);
    EXPECT_EQ(t.expiries, 0u);
    EXPECT_EQ(t.message_ids, 0u);
    EXPECT_EQ(t.pending_changes, 0u);
    EXPECT_THROW(bus.tables("no-such-entity"), InvalidArgument);
    client.close();
    bus.stop();
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace metro::emulator
