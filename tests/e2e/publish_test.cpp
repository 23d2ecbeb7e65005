// `metro publish` (the real binary) against an in-process emulator.
#include <cstdio>
#include <fstream>
#include <memory>

#include <gtest/gtest.h>

#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../support/test_support.hpp"

namespace {

using metro::test::run_command;

using namespace std::chrono_literals;

TEST(Publish, SendsToTheTopicOfTheConfig) {
  metro::emulator::EmulatorOptions options;
  options.port = 0;
  metro::emulator::TopicOptions topic{"metro-demo", {}, {}};
  topic.subscriptions.push_back({"sub-metrodemo-metrooj", {}, {}});
  options.bus.topics.push_back(topic);
  metro::emulator::Emulator bus(options);
  bus.start();

  auto config = std::filesystem::temp_directory_path() /
                ("metro-publish-" + std::to_string(::getpid()) + ".toml");
  std::ofstream(config) << "[[subscriptions]]\n"
                           "topic_name = \"metro-demo\"\n"
                           "subscription_name = \"sub-metrodemo-metrooj\"\n"
                           "connection_string = \""
                        << bus.connection_string()
                        << "\"\n[[subscriptions.handlers]]\nsubject = \"x\"\nhandler = \"f\"\n";
  auto [code, out] =
      run_command(std::string(METRO_BIN) + " publish --config " + config.string() +
                  " --topic metro-demo --subject MetroDemo/Type/GeekJokes --count 3 --body "
                  "'{\"subject\":\"MetroDemo/Type/GeekJokes\",\"joke\":\"x\"}'");
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(out, "published 3 messages to metro-demo with subject MetroDemo/Type/GeekJokes\n");
  EXPECT_EQ(bus.counts("metro-demo/Subscriptions/sub-metrodemo-metrooj").active, 3u);

  metro::sb::Client client(bus.connection_string());
  auto m =
      client.create_receiver("metro-demo/Subscriptions/sub-metrodemo-metrooj").receive(1, 5s).at(0);
  EXPECT_EQ(m.body, R"({"subject":"MetroDemo/Type/GeekJokes","joke":"x"})");
  EXPECT_EQ(m.subject, "MetroDemo/Type/GeekJokes");

  std::tie(code, out) = run_command(std::string(METRO_BIN) + " publish --config " +
                                    config.string() + " --topic other --body '{}'");
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("no subscription on topic 'other'"), std::string::npos) << out;

  std::tie(code, out) = run_command(std::string(METRO_BIN) + " publish --connection-string '" +
                                    bus.connection_string() + "' --topic nope --body '{}'");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("amqp:not-found"), std::string::npos) << out;
  EXPECT_EQ(out.find("SAS_KEY_VALUE"), std::string::npos) << out;
  std::filesystem::remove(config);
}

}  // namespace
