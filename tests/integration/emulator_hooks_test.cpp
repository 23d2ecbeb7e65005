// The emulator in-process with its test hooks, driven by the official JS SDK as the client.
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include <metro/emulator/emulator.hpp>

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

}  // namespace
}  // namespace metro::emulator
