// The C++ client and the official JS SDK on the same emulator: each reads what the other wrote
// with every field intact, and each settles by sequence number what the other deferred.
#include <gtest/gtest.h>

#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../integration/peer.hpp"

namespace metro::sb {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

class CrossCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    emulator::EmulatorOptions o;
    o.port = 0;
    o.bus.queues.push_back({"cross", {}});
    bus_ = std::make_unique<emulator::Emulator>(o);
    bus_->start();
    ClientOptions options;
    options.operation_timeout = 10s;
    client_ = std::make_unique<Client>(bus_->connection_string(), options);
    peer_ = std::make_unique<testing::JsPeer>(bus_->connection_string());
  }
  std::unique_ptr<emulator::Emulator> bus_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<testing::JsPeer> peer_;
};

TEST_F(CrossCheck, AMessageFromTheJsSdkArrivesIntact) {
  auto sent = peer_->call({{"op", "send-full"},
                           {"entity", "cross"},
                           {"message",
                            {{"body", {{"subject", "MetroDemo/Type/GeekJokes"}, {"joke", "why"}}},
                             {"subject", "MetroDemo/Type/GeekJokes"},
                             {"messageId", "js-1"},
                             {"correlationId", "corr-js"},
                             {"contentType", "application/json"},
                             {"applicationProperties",
                              {{"n", 7}, {"neg", -3}, {"pi", 3.5}, {"s", "x"}, {"b", true}}}}}});
  ASSERT_TRUE(sent["ok"]) << sent.dump();
  auto receiver = client_->create_receiver("cross");
  auto got = receiver.receive(1, 5s);
  ASSERT_EQ(got.size(), 1u);
  const auto& m = got[0];
  EXPECT_EQ(json::parse(m.body), json({{"subject", "MetroDemo/Type/GeekJokes"}, {"joke", "why"}}));
  EXPECT_EQ(m.subject, "MetroDemo/Type/GeekJokes");
  EXPECT_EQ(m.message_id, "js-1");
  EXPECT_EQ(m.correlation_id, "corr-js");
  EXPECT_EQ(m.content_type, "application/json");
  EXPECT_EQ(std::get<std::int64_t>(m.application_properties.at("n")), 7);
  EXPECT_EQ(std::get<std::int64_t>(m.application_properties.at("neg")), -3);
  EXPECT_EQ(std::get<double>(m.application_properties.at("pi")), 3.5);
  EXPECT_EQ(std::get<std::string>(m.application_properties.at("s")), "x");
  EXPECT_EQ(std::get<bool>(m.application_properties.at("b")), true);
  receiver.complete(m);
}

TEST_F(CrossCheck, AMessageFromTheCppClientArrivesIntactInTheJsSdk) {
  Message m;
  m.body = R"({"subject":"MetroDemo/Type/GeekJokes","joke":"why"})";
  m.subject = "MetroDemo/Type/GeekJokes";
  m.message_id = "cpp-1";
  m.correlation_id = "corr-cpp";
  m.content_type = "application/json";
  m.application_properties = {
      {"n", std::int64_t{7}}, {"pi", 3.5}, {"s", std::string("x")}, {"b", true}};
  client_->create_sender("cross").send(m);
  auto got = peer_->call({{"op", "receive"}, {"entity", "cross"}});
  ASSERT_TRUE(got["ok"]) << got.dump();
  auto r = got["messages"][0];
  EXPECT_EQ(r["body"], json({{"subject", "MetroDemo/Type/GeekJokes"}, {"joke", "why"}}));
  EXPECT_EQ(r["subject"], "MetroDemo/Type/GeekJokes");
  EXPECT_EQ(r["messageId"], "cpp-1");
  EXPECT_EQ(r["correlationId"], "corr-cpp");
  EXPECT_EQ(r["contentType"], "application/json");
  EXPECT_EQ(r["applicationProperties"], json({{"n", 7}, {"pi", 3.5}, {"s", "x"}, {"b", true}}));
  EXPECT_TRUE(
      peer_->call({{"op", "settle"}, {"sequence", r["sequence"]}, {"how", "complete"}})["ok"]);
}

TEST_F(CrossCheck, CppDefersAndTheJsSdkCompletesBySequenceNumber) {
  Message m;
  m.body = "deferred by C++";
  client_->create_sender("cross").send(m);
  auto receiver = client_->create_receiver("cross");
  auto got = receiver.receive(1, 5s).at(0);
  receiver.defer(got);
  auto fetched = peer_->call(
      {{"op", "receive-deferred"}, {"entity", "cross"}, {"sequences", {got.sequence_number}}});
  ASSERT_TRUE(fetched["ok"]) << fetched.dump();
  EXPECT_EQ(fetched["messages"][0]["state"], "deferred");
  auto settled =
      peer_->call({{"op", "settle"}, {"sequence", got.sequence_number}, {"how", "complete"}});
  EXPECT_TRUE(settled["ok"]) << settled.dump();
  EXPECT_EQ(bus_->counts("cross").total(), 0u);
}

TEST_F(CrossCheck, TheJsSdkDefersAndCppCompletesBySequenceNumber) {
  peer_->call({{"op", "send"}, {"entity", "cross"}, {"bodies", {"deferred by JS"}}});
  auto got = peer_->call({{"op", "receive"}, {"entity", "cross"}})["messages"][0];
  ASSERT_TRUE(
      peer_->call({{"op", "settle"}, {"sequence", got["sequence"]}, {"how", "defer"}})["ok"]);
  auto receiver = client_->create_receiver("cross");
  auto deferred = receiver.receive_deferred({got["sequence"].get<std::int64_t>()});
  ASSERT_EQ(deferred.size(), 1u);
  EXPECT_EQ(deferred[0].body, "\"deferred by JS\"");  // the JS SDK sends strings as JSON
  EXPECT_EQ(deferred[0].state, MessageState::kDeferred);
  receiver.complete(deferred[0]);
  EXPECT_EQ(bus_->counts("cross").total(), 0u);
}

}  // namespace
}  // namespace metro::sb
