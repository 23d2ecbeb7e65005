// The service end to end against the in-process emulator: routing, the ledger-first deferral,
// handler runs, retries, parking, retry by sequence number, settlement policies, reconciliation,
// the reaper, graceful stop and an emulator restart.

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../support/fault_proxy.hpp"
#include "../support/test_support.hpp"

namespace {

using metro::test::wait_until;

using namespace std::chrono_literals;
using metro::dispatch::Service;
using metro::dispatch::ServiceOptions;
using metro::dispatch::Task;
using metro::ledger::MessageKey;
using metro::ledger::State;

constexpr const char* kEntity = "orders/Subscriptions/billing";

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("METRO_TEST_DEBUG") != nullptr) spdlog::set_level(spdlog::level::debug);
    dir_ = std::filesystem::temp_directory_path() /
           ("metro-service-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    start_emulator(0);
  }

  void TearDown() override {
    service_.reset();
    bus_.reset();
    std::filesystem::remove_all(dir_);
  }

  void start_emulator(std::uint16_t port, bool durable = false,
                      std::chrono::milliseconds lock_duration = 60s) {
    metro::emulator::EmulatorOptions options;
    options.port = port;
    if (durable) options.data_dir = dir_ / "bus";
    metro::emulator::TopicOptions topic{"orders", {}, {}};
    metro::emulator::EntityOptions subscription;
    subscription.lock_duration = lock_duration;
    topic.subscriptions.push_back({"billing", subscription, {}});
    options.bus.topics.push_back(topic);
    bus_ = std::make_unique<metro::emulator::Emulator>(options);
    bus_->start();
  }

  /// A config with one subscription (orders/billing) and the given handler tables.
  metro::config::Config config(const std::string& handlers, const std::string& extra = {}) {
    std::string text = "[metro]\nworkers = 4\nledger = \"sqlite://" +
                       (dir_ / "ledger.db").string() + "\"\n" + extra +
                       "\n[[subscriptions]]\ntopic_name = \"orders\"\n"
                       "subscription_name = \"billing\"\nconnection_string = \"" +
                       (through_.empty() ? bus_->connection_string() : through_) + "\"\n" +
                       handlers +
                       "\n[admin]\nenabled = false\n";
    return metro::config::parse_config(text, "test.toml");
  }

  Service& start(const metro::config::Config& c, ServiceOptions options = {}) {
    options.reaper_interval = reaper_interval_;
    service_ = std::make_unique<Service>(c, std::move(options));
    service_->start();
    return *service_;
  }

  void publish(const std::string& body, int count = 1, const std::string& subject = {}) {
    metro::sb::Client client(bus_->connection_string());
    auto sender = client.create_sender("orders");
    std::vector<metro::sb::Message> batch;
    for (int i = 0; i < count; ++i) {
      metro::sb::Message m;
      m.body = body;
      if (!subject.empty()) m.subject = subject;
      batch.push_back(m);
    }
    sender.send(batch);
  }

  metro::emulator::EntityCounts counts() const { return bus_->counts(kEntity); }

  std::optional<State> state_of(std::int64_t sequence_number) {
    auto row = service_->ledger().find({"orders", "billing", sequence_number});
    if (!row) return std::nullopt;
    return row->state;
  }

  bool all_completed(std::size_t n) {
    auto c = service_->ledger().counts();
    return c[State::kCompleted] == n && counts().total() == 0;
  }

  std::filesystem::path dir_;
  std::unique_ptr<metro::emulator::Emulator> bus_;
  std::unique_ptr<Service> service_;
  std::chrono::milliseconds reaper_interval_{0};
  std::string through_;  // A connection string metro uses instead of the emulator's own.
};

const char* kJoke = R"({"subject": "MetroDemo/Type/GeekJokes", "joke": "x"})";

TEST_F(ServiceTest, FansOutToEveryMatchingHandlerAndCompletesWhenAllSucceeded) {
  std::mutex mutex;
  std::multiset<std::string> ran;
  ServiceOptions options;
  auto record = [&](const std::string& name) {
    return [&, name](const Task& t) {
      std::lock_guard lock(mutex);
      ran.insert(name + ":" + t.subject);
    };
  };
  options.functions = {
      {"exact", record("exact")}, {"glob", record("glob")}, {"other", record("other")}};
  start(config(R"(
[[subscriptions.handlers]]
subject = "MetroDemo/Type/GeekJokes"
handler = "exact"
[[subscriptions.handlers]]
subject = "MetroDemo/**"
glob = true
handler = "glob"
[[subscriptions.handlers]]
subject = "Other/.*"
regex = true
handler = "other"
)"),
        std::move(options));
  publish(kJoke, 5);
  ASSERT_TRUE(wait_until([&] { return all_completed(5); }));
  std::lock_guard lock(mutex);
  EXPECT_EQ(ran.count("exact:MetroDemo/Type/GeekJokes"), 5u);
  EXPECT_EQ(ran.count("glob:MetroDemo/Type/GeekJokes"), 5u);
  EXPECT_EQ(ran.size(), 10u);
  auto runs = service_->ledger().runs({"orders", "billing", 1});
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].outcome, metro::ledger::HandlerRun::Outcome::kSucceeded);
  auto c = service_->counters();
  EXPECT_EQ(c.received, 5u);
  EXPECT_EQ(c.routed, 10u);
  EXPECT_EQ(c.completed, 5u);
}

TEST_F(ServiceTest, TheMessageIsDeferredWhileItsHandlerRunsAndGoneAfter) {
  std::promise<void> release;
  auto released = release.get_future().share();
  std::atomic<bool> running{false};
  ServiceOptions options;
  options.functions = {{"slow", [&](const Task&) {
                          running = true;
                          released.wait();
                        }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"MetroDemo/Type/GeekJokes\"\n"
               "handler = \"slow\"\n"),
        std::move(options));
  publish(kJoke);
  ASSERT_TRUE(wait_until([&] { return running.load(); }));
  EXPECT_EQ(counts().deferred, 1u);
  EXPECT_EQ(counts().active, 0u);
  EXPECT_EQ(state_of(1), State::kRunning);
  auto row = service_->ledger().find({"orders", "billing", 1});
  EXPECT_EQ(row->body, kJoke);
  EXPECT_EQ(row->subject, "MetroDemo/Type/GeekJokes");
  release.set_value();
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
}

TEST_F(ServiceTest, ExplicitCompletionByTheHandlerSyncAndAsync) {
  ServiceOptions options;
  options.functions = {
      {"sync",
       [](const Task& t) {
         metro::complete_deferred_message(t.sequence_number, t.topic_name, t.subscription_name);
         // Twice is harmless.
         metro::complete_deferred_message(t.sequence_number, t.topic_name, t.subscription_name);
       }},
      {"async", [](const Task& t) {
         metro::complete_deferred_message_async(t.sequence_number, t.topic_name,
                                                t.subscription_name)
             .get();
       }}};
  start(config(R"(
[[subscriptions.handlers]]
subject = "sync"
handler = "sync"
completion = "explicit"
[[subscriptions.handlers]]
subject = "async"
handler = "async"
completion = "explicit"
)"),
        std::move(options));
  publish(R"({"subject": "sync"})", 3);
  publish(R"({"subject": "async"})", 3);
  ASSERT_TRUE(wait_until([&] { return all_completed(6); }));
  EXPECT_THROW(metro::complete_deferred_message(1, "orders", "unknown"),
               metro::UnknownMessageError);
}

TEST_F(ServiceTest, AnExplicitHandlerThatDoesNotCompleteLeavesTheMessageDeferred) {
  ServiceOptions options;
  std::atomic<int> runs{0};
  options.functions = {{"forgetful", [&](const Task&) { ++runs; }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"forgetful\"\n"
               "completion = \"explicit\"\n"),
        std::move(options));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return runs == 1 && state_of(1) == State::kDeferred; }));
  EXPECT_EQ(counts().deferred, 1u);
  service_->complete({"orders", "billing", 1}).get();
  EXPECT_EQ(state_of(1), State::kCompleted);
  EXPECT_EQ(counts().total(), 0u);
}

TEST_F(ServiceTest, RetriesThenParksAsFailedThenRetryBySequenceNumberCompletes) {
  std::atomic<bool> broken{true};
  std::atomic<int> attempts{0};
  ServiceOptions options;
  options.functions = {{"flaky", [&](const Task& t) {
                          ++attempts;
                          if (broken)
                            throw std::runtime_error("attempt " + std::to_string(t.attempt) +
                                                     " broke");
                        }}};
  start(config(R"(
[[subscriptions.handlers]]
subject = "s"
handler = "flaky"
max_attempts = 3
immediate_retries = 1
backoff = "20ms"
max_backoff = "50ms"
)"),
        std::move(options));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kFailed; }));
  EXPECT_EQ(attempts, 3);
  EXPECT_EQ(counts().deferred, 1u);  // Parked: still deferred in Service Bus.
  auto row = service_->ledger().find({"orders", "billing", 1});
  EXPECT_EQ(row->last_error, "flaky: attempt 3 broke");
  auto runs = service_->ledger().runs({"orders", "billing", 1});
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[2].attempt, 3);
  EXPECT_EQ(runs[2].outcome, metro::ledger::HandlerRun::Outcome::kFailed);
  EXPECT_EQ(service_->counters().retries, 2u);
  EXPECT_EQ(service_->counters().failed, 1u);

  broken = false;
  service_->retry({"orders", "billing", 1});
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
  EXPECT_EQ(attempts, 4);
  EXPECT_EQ(service_->ledger().runs({"orders", "billing", 1}).back().attempt, 4);

  EXPECT_THROW(service_->retry({"orders", "billing", 1}), metro::ConflictError);
  EXPECT_THROW(service_->retry({"orders", "billing", 99}), metro::UnknownMessageError);
  EXPECT_THROW(service_->retry({"orders", "nope", 1}), metro::UnknownMessageError);
}

TEST_F(ServiceTest, ExecHandlerAskingToRetryThenSucceeding) {
  auto script = dir_ / "handler.sh";
  std::ofstream(script) << "#!/bin/sh\ncat > /dev/null\n"
                           "if [ -e "
                        << (dir_ / "ok").string()
                        << " ]; then exit 0; fi\n"
                           "touch "
                        << (dir_ / "ok").string() << "\nexit 75\n";
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nexec = [\"" + script.string() +
               "\"]\nbackoff = \"10ms\"\n"));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
  auto runs = service_->ledger().runs({"orders", "billing", 1});
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].outcome, metro::ledger::HandlerRun::Outcome::kRetry);
}

TEST_F(ServiceTest, HttpHandlerRetriedOn5xxWithTheCorrelationIdInAHeader) {
  httplib::Server server;
  std::mutex mutex;
  std::vector<std::string> correlation_ids;
  std::atomic<int> calls{0};
  server.Post("/jokes", [&](const httplib::Request& request, httplib::Response& response) {
    {
      std::lock_guard lock(mutex);
      correlation_ids.push_back(request.get_header_value("X-Correlation-Id"));
    }
    response.status = ++calls == 1 ? 503 : 200;
  });
  int port = server.bind_to_any_port("127.0.0.1");
  std::thread serving([&] { server.listen_after_bind(); });
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhttp = \"http://127.0.0.1:" +
               std::to_string(port) + "/jokes\"\nbackoff = \"10ms\"\n"));
  metro::sb::Client client(bus_->connection_string());
  metro::sb::Message m;
  m.body = R"({"subject": "s"})";
  m.correlation_id = "order-42";
  client.create_sender("orders").send(m);
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
  server.stop();
  serving.join();
  std::lock_guard lock(mutex);
  EXPECT_EQ(correlation_ids, (std::vector<std::string>{"order-42", "order-42"}));
  EXPECT_EQ(service_->ledger().find({"orders", "billing", 1})->correlation_id, "order-42");
}

TEST_F(ServiceTest, DeadLetterPolicyAfterTheLastAttempt) {
  ServiceOptions options;
  options.functions = {{"bad", [](const Task&) { throw std::runtime_error("no such customer"); }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"bad\"\n"
               "max_attempts = 2\nbackoff = \"10ms\"\non_failure = \"dead-letter\"\n"),
        std::move(options));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kDeadLettered; }));
  EXPECT_EQ(counts().dead_lettered, 1u);
  EXPECT_EQ(counts().total(), 0u);
  metro::sb::Client client(bus_->connection_string());
  auto dlq = client.create_receiver(std::string(kEntity) + "/$DeadLetterQueue");
  auto m = dlq.receive(1, 5s).at(0);
  EXPECT_EQ(m.dead_letter_reason, "HandlerFailed");
  EXPECT_EQ(m.dead_letter_description, "bad: no such customer");
}

TEST_F(ServiceTest, AMalformedBodyIsDeadLetteredWithItsReason) {
  ServiceOptions options;
  std::atomic<int> runs{0};
  options.functions = {{"f", [&](const Task&) { ++runs; }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n"),
        std::move(options));
  publish("{\"subject\": \"s\", oops}");
  ASSERT_TRUE(wait_until([&] { return counts().dead_lettered == 1; }));
  metro::sb::Client client(bus_->connection_string());
  auto m = client.create_receiver(std::string(kEntity) + "/$DeadLetterQueue").receive(1, 5s).at(0);
  EXPECT_EQ(m.dead_letter_reason, "MalformedBody");
  ASSERT_TRUE(m.dead_letter_description);
  EXPECT_NE(m.dead_letter_description->find("the body is not JSON"), std::string::npos);
  EXPECT_NE(m.dead_letter_description->find("line 1, column 18"), std::string::npos)
      << *m.dead_letter_description;
  EXPECT_EQ(m.body, "{\"subject\": \"s\", oops}");
  EXPECT_EQ(runs, 0);
  EXPECT_EQ(service_->counters().malformed, 1u);
  EXPECT_TRUE(service_->ledger().counts().empty());
}

TEST_F(ServiceTest, NoMatchPolicies) {
  ServiceOptions options;
  options.functions = {{"f", [](const Task&) {}}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n"),
        std::move(options));
  publish(R"({"subject": "unrouted"})", 2);
  publish(R"({"no": "subject"})");
  ASSERT_TRUE(wait_until([&] { return service_->counters().no_match == 3; }));
  ASSERT_TRUE(wait_until([&] { return counts().total() == 0; }));  // Completed (the default).
  service_.reset();

  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n",
               "on_no_match = \"dead-letter\""),
        ServiceOptions{{{"f", [](const Task&) {}}}, nullptr, nullptr, {}, {}});
  publish(R"({"subject": "unrouted"})");
  ASSERT_TRUE(wait_until([&] { return counts().dead_lettered == 1; }));
  metro::sb::Client client(bus_->connection_string());
  auto m = client.create_receiver(std::string(kEntity) + "/$DeadLetterQueue").receive(1, 5s).at(0);
  EXPECT_EQ(m.dead_letter_reason, "NoHandler");
  EXPECT_EQ(m.dead_letter_description, "no handler matches the subject 'unrouted'");
}

TEST_F(ServiceTest, StartUpResolvesInterruptedDeferralsAndAdoptsOrphans) {
  // Three messages: #1 deferred with a `deferring` row (the crash came after the deferral),
  // #2 still active with a `deferring` row (the crash came before it), #3 deferred with no row.
  publish(R"({"subject": "s"})", 3);
  {
    metro::sb::Client client(bus_->connection_string());
    auto receiver = client.create_receiver(kEntity);
    std::vector<metro::sb::ReceivedMessage> got;
    while (got.size() < 3) {
      auto more = receiver.receive(3 - got.size(), 5s);
      ASSERT_FALSE(more.empty());
      got.insert(got.end(), more.begin(), more.end());
    }
    receiver.defer(got[0]);
    receiver.abandon(got[1]);
    receiver.defer(got[2]);
  }
  auto c = config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n");
  {
    auto ledger = metro::ledger::open_ledger(c.metro.ledger);
    for (std::int64_t seq : {1, 2}) {
      metro::ledger::DeferredMessage row;
      row.key = {"orders", "billing", seq};
      row.subject = "s";
      row.body = R"({"subject": "s"})";
      ledger->record(row);
    }
  }
  std::atomic<int> runs{0};
  ServiceOptions options;
  options.functions = {{"f", [&](const Task&) { ++runs; }}};
  start(c, std::move(options));
  // #1 resumed and completed; #2 forgotten, delivered again and handled; #3 adopted as orphaned.
  ASSERT_TRUE(wait_until([&] {
    return state_of(1) == State::kCompleted && state_of(2) == State::kCompleted &&
           state_of(3) == State::kOrphaned;
  }));
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(counts().deferred, 1u);
  // An orphan is retried like a parked message.
  service_->retry({"orders", "billing", 3});
  ASSERT_TRUE(wait_until([&] { return all_completed(3); }));
}

TEST_F(ServiceTest, TheReaperTakesUpStaleDeferrals) {
  // A message deferred elsewhere: adopted as orphaned at start; then another process sharing the
  // ledger marks it deferred and vanishes. Past deferred_deadline the reaper dispatches it.
  publish(R"({"subject": "s"})");
  {
    metro::sb::Client client(bus_->connection_string());
    auto receiver = client.create_receiver(kEntity);
    receiver.defer(receiver.receive(1, 5s).at(0));
  }
  reaper_interval_ = 50ms;
  std::atomic<int> runs{0};
  ServiceOptions options;
  options.functions = {{"f", [&](const Task&) { ++runs; }}};
  auto c = config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n",
                  "deferred_deadline = \"1s\"");
  start(c, std::move(options));
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kOrphaned; }));
  EXPECT_EQ(runs, 0);
  EXPECT_TRUE(metro::ledger::open_ledger(c.metro.ledger)
                  ->set_state({"orders", "billing", 1}, State::kDeferred));
  EXPECT_EQ(state_of(1), State::kDeferred);
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
  EXPECT_EQ(runs, 1);
}

TEST_F(ServiceTest, GracefulStopLeavesTheRestDeferredForTheNextStart) {
  std::atomic<int> runs{0};
  auto slow = [&](const Task&) {
    ++runs;
    std::this_thread::sleep_for(50ms);
  };
  auto c = config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"slow\"\n");
  start(c, ServiceOptions{{{"slow", slow}}, nullptr, nullptr, {}, {}});
  publish(R"({"subject": "s"})", 40);
  ASSERT_TRUE(wait_until([&] { return runs >= 4; }));
  EXPECT_TRUE(service_->stop(5s));
  auto after_stop = service_->ledger().counts();
  EXPECT_EQ(after_stop[State::kRunning], 0u);  // Every started run finished.
  EXPECT_EQ(after_stop[State::kDeferring], 0u);
  service_.reset();
  start(c, ServiceOptions{{{"slow", slow}}, nullptr, nullptr, {}, {}});
  ASSERT_TRUE(wait_until([&] { return all_completed(40); }, 60s));
}

TEST_F(ServiceTest, SurvivesAnEmulatorRestartWithNothingLost) {
  bus_.reset();
  start_emulator(0, true);
  auto port = bus_->port();
  std::mutex mutex;
  std::set<std::int64_t> handled;
  ServiceOptions options;
  options.functions = {{"f", [&](const Task& t) {
                          std::lock_guard lock(mutex);
                          handled.insert(t.sequence_number);
                        }}};
  options.client.reconnect_max_backoff = 200ms;
  options.client.operation_timeout = 5s;
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n"),
        std::move(options));
  publish(R"({"subject": "s"})", 50);
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard lock(mutex);
    return handled.size() >= 10;
  }));
  bus_->stop();
  bus_.reset();
  start_emulator(port, true);
  publish(R"({"subject": "s"})", 50);
  ASSERT_TRUE(wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return handled.size() == 100 && counts().total() == 0;
      },
      60s))
      << "handled " << handled.size() << ", left " << counts().total();
}

TEST_F(ServiceTest, AnUnreachableNamespaceIsAClearError) {
  auto text = "[metro]\nledger = \"sqlite://" + (dir_ / "ledger.db").string() +
              "\"\n[[subscriptions]]\ntopic_name = \"orders\"\nsubscription_name = \"billing\"\n"
              "connection_string = \"Endpoint=sb://localhost:1;SharedAccessKeyName=k;"
              "SharedAccessKey=v;UseDevelopmentEmulator=true\"\n[[subscriptions.handlers]]\n"
              "subject = \"s\"\nexec = [\"true\"]\n[admin]\nenabled = false\n";
  ServiceOptions options;
  options.client.operation_timeout = 1s;
  Service service(metro::config::parse_config(text, "t.toml"), options);
  try {
    service.start();
    FAIL();
  } catch (const metro::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("cannot consume orders/Subscriptions/billing at localhost"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("the connection: proton:io: Connection refused"), std::string::npos)
        << what;
    EXPECT_EQ(what.find("SharedAccessKey=v"), std::string::npos) << what;
  }
}

TEST_F(ServiceTest, UnknownFunctionHandlersAreAClearError) {
  try {
    Service s(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"my_func\"\n"));
    FAIL();
  } catch (const metro::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'my_func'"), std::string::npos) << e.what();
  }
}

/// A body nested `depth` levels deep, with a subject.
std::string deep_body(std::size_t depth) {
  std::string body = R"({"subject":"s","x":)";
  body.append(depth, '[');
  body += "1";
  body.append(depth, ']');
  return body + "}";
}

TEST_F(ServiceTest, ADeeplyNestedBodyIsDeadLetteredAsMalformedNeverParsed) {
  std::atomic<int> runs{0};
  ServiceOptions options;
  options.functions = {{"f", [&](const Task&) { ++runs; }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n"),
        std::move(options));
  publish(deep_body(100000));
  publish(deep_body(129));
  publish(deep_body(100));  // Within the bound: handled.
  ASSERT_TRUE(wait_until([&] { return counts().dead_lettered == 2 && runs == 1; }));
  metro::sb::Client client(bus_->connection_string());
  auto dlq = client.create_receiver(std::string(kEntity) + "/$DeadLetterQueue");
  for (auto& m : dlq.receive(2, 5s)) {
    EXPECT_EQ(m.dead_letter_reason, "MalformedBody");
    EXPECT_NE(m.dead_letter_description->find("nested more than 128 levels"), std::string::npos)
        << *m.dead_letter_description;
  }
  EXPECT_EQ(service_->counters().dead_lettered_by_reason.at("MalformedBody"), 2u);
}

TEST_F(ServiceTest, APoisonRowLeftByAnEarlierRunCannotStopTheNextStart) {
  // An earlier metro deferred a body nested 100,000 deep and died running it (the row says
  // `running`). Resuming it must be as safe as receiving it: dead-lettered, not run.
  publish(deep_body(100000));
  publish(R"({"subject": "s"})");
  {
    metro::sb::Client client(bus_->connection_string());
    auto receiver = client.create_receiver(kEntity);
    std::vector<metro::sb::ReceivedMessage> got;
    while (got.size() < 2) {
      auto more = receiver.receive(2 - got.size(), 5s);
      ASSERT_FALSE(more.empty());
      got.insert(got.end(), more.begin(), more.end());
    }
    for (auto& m : got) receiver.defer(m);
  }
  auto c = config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n");
  {
    auto ledger = metro::ledger::open_ledger(c.metro.ledger);
    for (std::int64_t seq : {1, 2}) {
      metro::ledger::DeferredMessage row;
      row.key = {"orders", "billing", seq};
      row.subject = "s";
      row.body = seq == 1 ? deep_body(100000) : R"({"subject": "s"})";
      row.state = State::kRunning;
      ledger->record(row);
    }
  }
  std::atomic<int> runs{0};
  ServiceOptions options;
  options.functions = {{"f", [&](const Task&) { ++runs; }}};
  start(c, std::move(options));
  ASSERT_TRUE(wait_until([&] {
    return state_of(1) == State::kDeadLettered && state_of(2) == State::kCompleted;
  }));
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(counts().dead_lettered, 1u);
}

TEST_F(ServiceTest, NamesAreComparedAsServiceBusComparesThem) {
  ServiceOptions options;
  std::atomic<int> runs{0};
  options.functions = {{"f", [&](const Task&) {
                          if (++runs <= 2) throw std::runtime_error("down");
                        }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\nmax_attempts = 1\n"),
        std::move(options));
  publish(R"({"subject": "s"})", 2);
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kFailed && state_of(2) == State::kFailed; }));
  service_->retry({"ORDERS", "Billing", 1});
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kCompleted; }));
  EXPECT_EQ(service_->complete({"Orders", "BILLING", 2}, 30s), metro::dispatch::Settlement::kDone);
  EXPECT_EQ(state_of(2), State::kCompleted);
  EXPECT_EQ(service_->ledger().counts("orders", "billing")[State::kCompleted], 2u);
  EXPECT_THROW(metro::complete_deferred_message(2, "ORDERS", "billing-x"),
               metro::UnknownMessageError);
  metro::complete_deferred_message(2, "ORDERS", "BILLING");  // Harmless twice, any case.
}

TEST_F(ServiceTest, EveryDeadLetterIsCountedByItsReason) {
  ServiceOptions options;
  options.functions = {{"bad", [](const Task&) { throw std::runtime_error("no"); }},
                       {"park", [](const Task&) { throw std::runtime_error("later"); }}};
  start(config(R"(
[[subscriptions.handlers]]
subject = "bad"
handler = "bad"
max_attempts = 1
on_failure = "dead-letter"
[[subscriptions.handlers]]
subject = "park"
handler = "park"
max_attempts = 1
)",
               "on_no_match = \"dead-letter\""),
        std::move(options));
  publish(R"({"subject": "bad"})");    // #1 HandlerFailed
  publish(R"({"subject": "park"})");   // #2 parked, then dead-lettered by an operator
  publish(R"({"subject": "nobody"})"); // #3 NoHandler
  publish("not json");                 // #4 MalformedBody
  ASSERT_TRUE(wait_until([&] { return state_of(2) == State::kFailed; }));
  EXPECT_EQ(service_->dead_letter({"orders", "billing", 2}, "Fraud", "by hand", 30s),
            metro::dispatch::Settlement::kDone);
  ASSERT_TRUE(wait_until([&] { return counts().dead_lettered == 4; }));
  ASSERT_TRUE(wait_until([&] { return service_->counters().dead_lettered == 4; }));
  auto by = service_->counters().dead_lettered_by_reason;
  EXPECT_EQ(by["HandlerFailed"], 1u);
  EXPECT_EQ(by["NoHandler"], 1u);
  EXPECT_EQ(by["MalformedBody"], 1u);
  EXPECT_EQ(by["operator"], 1u);
}

TEST_F(ServiceTest, ACompletionWithADeadlineAnswersUnderWayInsteadOfHanging) {
  bus_.reset();
  start_emulator(0, true);
  auto port = bus_->port();
  ServiceOptions options;
  options.functions = {{"f", [](const Task&) {}}};
  options.client.reconnect_max_backoff = 200ms;
  options.client.operation_timeout = 2s;
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n"
               "completion = \"explicit\"\n"),
        std::move(options));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kDeferred; }));
  bus_->stop();
  bus_.reset();
  // Service Bus cannot be reached: the settlement goes on being tried, the caller does not wait.
  EXPECT_EQ(service_->complete({"orders", "billing", 1}, 500ms),
            metro::dispatch::Settlement::kUnderWay);
  start_emulator(port, true);
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kCompleted; }, 60s));
  EXPECT_EQ(counts().total(), 0u);
}

TEST_F(ServiceTest, AMessageCompletedByRequestIsNotRetriedOrRevived) {
  // The handler completes the message, then fails: a retry would run it again and the ledger
  // would move it out of `completed`; the reaper would then take it up once more.
  reaper_interval_ = 50ms;
  std::atomic<int> runs{0};
  ServiceOptions options;
  options.functions = {{"f", [&](const Task& t) {
                          ++runs;
                          metro::complete_deferred_message(t.sequence_number, t.topic_name,
                                                           t.subscription_name);
                          throw std::runtime_error("failed after completing");
                        }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n"
               "completion = \"explicit\"\nbackoff = \"10ms\"\n",
               "deferred_deadline = \"1s\""),
        std::move(options));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kCompleted; }));
  std::this_thread::sleep_for(1500ms);  // Past the deadline: the reaper has looked.
  EXPECT_EQ(state_of(1), State::kCompleted);
  EXPECT_EQ(runs, 1);
}

TEST_F(ServiceTest, SequenceNumbersThatStartAgainKeepEachMessageApart) {
  auto port = bus_->port();
  std::mutex mutex;
  std::vector<std::string> subjects;
  ServiceOptions options;
  options.functions = {{"f", [&](const Task& t) {
                          std::lock_guard lock(mutex);
                          subjects.push_back(t.subject);
                        }}};
  options.client.reconnect_max_backoff = 200ms;
  options.client.operation_timeout = 5s;
  start(config("[[subscriptions.handlers]]\nsubject = \"s/**\"\nglob = true\nhandler = \"f\"\n"),
        std::move(options));
  publish(R"({"subject": "s/first"})");
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
  // An emulator without durable state restarts: its sequence numbers start at 1 again.
  bus_->stop();
  bus_.reset();
  start_emulator(port, false);
  publish(R"({"subject": "s/second"})");
  ASSERT_TRUE(wait_until([&] {
    auto row = service_->ledger().find({"orders", "billing", 1});
    return row && row->state == State::kCompleted && row->subject == "s/second";
  }, 60s));
  auto earlier = service_->ledger().find({"orders", "billing", 1, 1});
  ASSERT_TRUE(earlier);
  EXPECT_EQ(earlier->subject, "s/first");
  EXPECT_EQ(earlier->state, State::kCompleted);
  EXPECT_EQ(service_->ledger().runs(earlier->key).size(), 1u);
  EXPECT_EQ(service_->ledger().runs({"orders", "billing", 1}).size(), 1u);
  std::lock_guard lock(mutex);
  EXPECT_EQ(subjects, (std::vector<std::string>{"s/first", "s/second"}));
}

TEST_F(ServiceTest, ReadinessFollowsTheConnectionAndReconnectsAreCounted) {
  bus_.reset();
  start_emulator(0, true);
  auto port = bus_->port();
  ServiceOptions options;
  options.client.reconnect_max_backoff = 200ms;
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nexec = [\"true\"]\n"),
        std::move(options));
  ASSERT_TRUE(wait_until([&] { return service_->readiness().ready; }));
  EXPECT_EQ(service_->subscriptions().at(0).reconnects, 0u);
  bus_->stop();
  bus_.reset();
  ASSERT_TRUE(wait_until([&] { return !service_->readiness().ready; }));
  auto r = service_->readiness();
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_NE(r.problems[0].find("orders/billing is not connected"), std::string::npos)
      << r.problems[0];
  start_emulator(port, true);
  ASSERT_TRUE(wait_until([&] { return service_->readiness().ready; }, 30s));
  EXPECT_EQ(service_->subscriptions().at(0).reconnects, 1u);
}

TEST_F(ServiceTest, StartUpResumesOnlyAsManyMessagesAsThereIsRoomFor) {
  // 40 deferred messages an earlier run left `deferred`; one worker: at most 4 in hand at once.
  constexpr int kLeft = 40;
  publish(R"({"subject": "s"})", kLeft);
  {
    metro::sb::Client client(bus_->connection_string());
    auto receiver = client.create_receiver(kEntity);
    int deferred = 0;
    while (deferred < kLeft) {
      auto more = receiver.receive(static_cast<std::size_t>(kLeft - deferred), 5s);
      ASSERT_FALSE(more.empty());
      for (auto& m : more) receiver.defer(m);
      deferred += static_cast<int>(more.size());
    }
  }
  auto c = config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n");
  c.metro.workers = 1;
  {
    auto ledger = metro::ledger::open_ledger(c.metro.ledger);
    for (std::int64_t seq = 1; seq <= kLeft; ++seq) {
      metro::ledger::DeferredMessage row;
      row.key = {"orders", "billing", seq};
      row.subject = "s";
      row.body = R"({"subject": "s"})";
      row.state = State::kDeferred;
      ledger->record(row);
    }
  }
  std::atomic<std::size_t> most{0};
  std::atomic<int> runs{0};
  ServiceOptions options;
  options.functions = {{"f", [&](const Task&) {
                          auto now = service_ ? service_->in_flight() : 0;
                          if (now > most) most = now;
                          ++runs;
                          std::this_thread::sleep_for(5ms);
                        }}};
  start(c, std::move(options));
  ASSERT_TRUE(wait_until([&] { return all_completed(kLeft); }, 60s));
  EXPECT_EQ(runs, kLeft);
  EXPECT_LE(most.load(), 4u);
}

TEST_F(ServiceTest, TheListenerNeverHoldsMoreMessagesThanThereIsRoomFor) {
  // One worker: room for 4. Receives ask only for the room there is, so no more than 4 messages
  // are ever locked or deferred by this service, however many wait.
  constexpr int kPublished = 40;
  publish(R"({"subject": "s"})", kPublished);
  auto c = config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n");
  c.metro.workers = 1;
  std::mutex mutex;
  std::condition_variable released;
  bool release = false;
  ServiceOptions options;
  options.functions = {{"f", [&](const Task&) {
                          std::unique_lock lock(mutex);
                          released.wait_for(lock, 60s, [&] { return release; });
                        }}};
  start(c, std::move(options));
  ASSERT_TRUE(wait_until([&] { return counts().deferred == 4; }, 30s));
  for (int i = 0; i < 50; ++i) {
    auto now = counts();
    EXPECT_LE(now.deferred + now.locked, 4u);
    std::this_thread::sleep_for(5ms);
  }
  {
    std::lock_guard lock(mutex);
    release = true;
  }
  released.notify_all();
  ASSERT_TRUE(wait_until([&] { return all_completed(kPublished); }, 60s));
}

TEST_F(ServiceTest, DestroyingAServiceWhileAHandlerRunsWaitsForIt) {
  // The service is destroyed (no stop) while a function runs; the run ends after the
  // destructor began and must find everything it touches still there (ASan reports otherwise).
  std::atomic<bool> running{false};
  std::atomic<bool> returned{false};
  ServiceOptions options;
  options.functions = {{"slow", [&](const Task&) {
                          running = true;
                          std::this_thread::sleep_for(300ms);
                          returned = true;
                        }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"slow\"\n"),
        std::move(options));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return running.load(); }));
  service_.reset();
  EXPECT_TRUE(returned);  // Joined, not abandoned.
}

TEST_F(ServiceTest, StopInterruptsExecHandlersPastTheGrace) {
  auto c = config("[[subscriptions.handlers]]\nsubject = \"s\"\nexec = [\"/bin/sh\", \"-c\", "
                  "\"touch " + (dir_ / "started").string() + "; sleep 60\"]\n");
  start(c);
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return std::filesystem::exists(dir_ / "started"); }));
  auto before = std::chrono::steady_clock::now();
  EXPECT_FALSE(service_->stop(200ms));
  EXPECT_LT(std::chrono::steady_clock::now() - before, 30s);
  // The run was interrupted: the message stays deferred for the next start.
  EXPECT_EQ(counts().deferred, 1u);
  EXPECT_EQ(state_of(1), State::kRetrying);
}

TEST_F(ServiceTest, LinesAboutAMessageCarryItsCorrelationId) {
  auto stream = std::make_shared<std::ostringstream>();
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "test", std::make_shared<spdlog::sinks::ostream_sink_mt>(*stream)));
  std::atomic<bool> broken{true};
  ServiceOptions options;
  options.functions = {{"f", [&](const Task&) {
                          if (broken) throw std::runtime_error("down");
                        }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\nmax_attempts = 1\n"),
        std::move(options));
  metro::sb::Client client(bus_->connection_string());
  metro::sb::Message m;
  m.body = R"({"subject": "s"})";
  m.correlation_id = "order-9";
  client.create_sender("orders").send(m);
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kFailed; }));
  broken = false;
  service_->retry({"orders", "billing", 1});
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
  service_.reset();
  spdlog::set_default_logger(previous);
  auto log = stream->str();
  // The message, its correlation id and its trace id.
  for (const char* what : {"parked as failed", "retried by request", "f attempt 1 failed: down"}) {
    EXPECT_TRUE(std::regex_search(
        log,
        std::regex(std::string(R"(orders/billing#1 \[order-9\] trace=[0-9a-f]{32}: )") + what)))
        << what << '\n'
        << log;
  }
}

// ---- defer = "when-slow" ---------------------------------------------------------------------

constexpr const char* kWhenSlow = "defer = \"when-slow\"\ndefer_after = \"%\"\n";

std::string when_slow(const std::string& after) {
  std::string text = kWhenSlow;
  return text.replace(text.find('%'), 1, after);
}

TEST_F(ServiceTest, WhenSlowAFastHandlerCompletesOnTheLinkWithoutADeferralOrALedgerRow) {
  std::atomic<int> ran{0};
  ServiceOptions options;
  options.functions = {{"fast", [&](const Task&) { ++ran; }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"fast\"\n",
               when_slow("30s")),
        std::move(options));
  publish(R"({"subject": "s"})", 50);
  ASSERT_TRUE(wait_until([&] { return ran == 50 && counts().total() == 0; }));
  ASSERT_TRUE(wait_until([&] { return service_->counters().completed == 50; }));
  EXPECT_EQ(service_->counters().deferred, 0u);  // Not one deferral in Service Bus…
  EXPECT_TRUE(service_->ledger().counts().empty());  // … and not one row in the ledger.
  EXPECT_EQ(counts().dead_lettered, 0u);
}

TEST_F(ServiceTest, WhenSlowASlowHandlerIsDeferredAtDeferAfterThenCompletedBySequenceNumber) {
  std::promise<void> release;
  auto released = release.get_future().share();
  std::atomic<bool> started{false};
  ServiceOptions options;
  options.functions = {{"slow", [&, released](const Task&) {
                          started = true;
                          released.wait();
                        }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"slow\"\n",
               when_slow("200ms")),
        std::move(options));
  publish(R"({"subject": "s"})");
  // Still running at defer_after: deferred in Service Bus, recorded as running with its run.
  ASSERT_TRUE(wait_until([&] { return counts().deferred == 1 && state_of(1) == State::kRunning; }));
  EXPECT_TRUE(started);
  auto runs = service_->ledger().runs({"orders", "billing", 1});
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_FALSE(runs[0].finished.has_value());
  // The deferred-message API sees it, as any deferred message.
  EXPECT_EQ(service_->ledger().counts()[State::kRunning], 1u);
  release.set_value();
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
  runs = service_->ledger().runs({"orders", "billing", 1});
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].outcome, metro::ledger::HandlerRun::Outcome::kSucceeded);
  EXPECT_EQ(service_->counters().deferred, 1u);
}

TEST_F(ServiceTest, WhenSlowAFailingHandlerIsDeferredForItsBackoffThenParked) {
  std::atomic<int> attempts{0};
  ServiceOptions options;
  options.functions = {{"broken", [&](const Task& t) {
                          ++attempts;
                          throw std::runtime_error("attempt " + std::to_string(t.attempt));
                        }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"broken\"\n"
               "max_attempts = 3\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\n",
               when_slow("30s")),
        std::move(options));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return state_of(1) == State::kFailed; }));
  EXPECT_EQ(attempts, 3);
  EXPECT_EQ(counts().deferred, 1u);  // Parked: deferred, retryable by sequence number.
  auto runs = service_->ledger().runs({"orders", "billing", 1});
  ASSERT_EQ(runs.size(), 3u);  // The first run (before the deferral) is recorded too.
  EXPECT_EQ(runs[0].error, "attempt 1");
  EXPECT_EQ(runs[2].outcome, metro::ledger::HandlerRun::Outcome::kFailed);
  EXPECT_EQ(service_->counters().deferred, 1u);
}

TEST_F(ServiceTest, WhenSlowARetryThatSucceedsIsCompletedBySequenceNumber) {
  std::atomic<int> attempts{0};
  ServiceOptions options;
  options.functions = {{"flaky", [&](const Task&) {
                          if (++attempts == 1) throw std::runtime_error("first");
                        }}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"flaky\"\n"
               "backoff = \"20ms\"\n",
               when_slow("30s")),
        std::move(options));
  publish(R"({"subject": "s"})");
  ASSERT_TRUE(wait_until([&] { return all_completed(1); }));
  EXPECT_EQ(attempts, 2);
  EXPECT_EQ(service_->ledger().runs({"orders", "billing", 1}).size(), 2u);
}

class ExplicitCompletionTest : public ServiceTest,
                               public ::testing::WithParamInterface<const char*> {};

TEST_P(ExplicitCompletionTest, AHandlerCompletesItsMessageItselfInEitherMode) {
  ServiceOptions options;
  options.functions = {
      {"sync",
       [](const Task& t) {
         metro::complete_deferred_message(t.sequence_number, t.topic_name, t.subscription_name);
       }},
      {"later", [](const Task&) {}}};
  bool slow = std::string(GetParam()) == "when-slow";
  start(config(R"(
[[subscriptions.handlers]]
subject = "sync"
handler = "sync"
completion = "explicit"
[[subscriptions.handlers]]
subject = "later"
handler = "later"
completion = "explicit"
)",
               std::string("defer = \"") + GetParam() + "\"\n"),
        std::move(options));
  publish(R"({"subject": "sync"})", 3);
  // Completed during the run: on the link when held (no row), by sequence number otherwise.
  ASSERT_TRUE(wait_until([&] {
    return counts().total() == 0 &&
           service_->ledger().counts()[State::kCompleted] == (slow ? 0u : 3u);
  }));
  EXPECT_EQ(service_->ledger().counts().size(), slow ? 0u : 1u);
  // A handler that leaves the completion for later: its message is deferred (and recorded)
  // in both modes, and completed by sequence number afterwards.
  publish(R"({"subject": "later"})");
  ASSERT_TRUE(wait_until([&] { return state_of(4) == State::kDeferred; }));
  EXPECT_EQ(counts().deferred, 1u);
  metro::complete_deferred_message(4, "orders", "billing");
  ASSERT_TRUE(
      wait_until([&] { return counts().total() == 0 && state_of(4) == State::kCompleted; }));
}

INSTANTIATE_TEST_SUITE_P(Modes, ExplicitCompletionTest, ::testing::Values("always", "when-slow"),
                         [](const auto& mode) {
                           return std::string(mode.param) == "always" ? "Always" : "WhenSlow";
                         });

TEST_F(ServiceTest, WhenSlowAStopGivesBackWhatIsHeldAndTheNextStartHandlesIt) {
  std::atomic<int> ran{0};
  std::promise<void> release;
  auto released = release.get_future().share();
  ServiceOptions options;
  options.functions = {{"f", [&, released](const Task&) {
                          ++ran;
                          released.wait_for(std::chrono::seconds(60));
                        }}};
  auto c = config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n",
                  when_slow("30s"));
  start(c, std::move(options));
  publish(R"({"subject": "s"})", 6);
  // Four runs under way (four workers), two waiting: the runs end within the grace and are
  // completed on their link; the two that did not start go back to Service Bus.
  ASSERT_TRUE(wait_until([&] { return ran == 4 && service_->in_flight() == 6; }));
  std::thread later([&] {
    std::this_thread::sleep_for(200ms);
    release.set_value();
  });
  EXPECT_TRUE(service_->stop(10s));
  later.join();
  EXPECT_EQ(ran, 4);
  EXPECT_EQ(counts().deferred, 0u);
  EXPECT_EQ(counts().active, 2u);
  ServiceOptions again;
  again.functions = {{"f", [&](const Task&) { ++ran; }}};
  start(c, std::move(again));
  ASSERT_TRUE(wait_until([&] { return ran == 6 && counts().total() == 0; }));
  EXPECT_TRUE(service_->ledger().counts().empty());
}

TEST_F(ServiceTest, WhenSlowRunsEndingAroundDeferAfterLoseAndSettleNothingTwice) {
  // defer_after as short as the runs: runs end just before, at and after it, with two handlers
  // per message, one of which fails once for some messages. Each message ends completed once,
  // on its link or (deferred) by sequence number, with nothing left behind.
  constexpr int kMessages = 120;
  std::mutex mutex;
  std::map<std::int64_t, int> succeeded;  // Successful runs by message.
  ServiceOptions options;
  auto handler = [&](int salt) {
    return [&, salt](const Task& t) {
      std::this_thread::sleep_for(std::chrono::microseconds(((t.sequence_number + salt) % 7) * 700));
      if (salt == 1 && t.sequence_number % 4 == 0 && t.attempt == 1) {
        throw std::runtime_error("once");
      }
      std::lock_guard lock(mutex);
      ++succeeded[t.sequence_number];
    };
  };
  options.functions = {{"a", handler(0)}, {"b", handler(1)}};
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"a\"\n"
               "[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"b\"\n"
               "backoff = \"5ms\"\n",
               when_slow("2ms")),
        std::move(options));
  publish(R"({"subject": "s"})", kMessages);
  auto settled = [&] {
    auto c = service_->ledger().counts();
    std::size_t others = 0;
    for (const auto& [state, n] : c) others += state == State::kCompleted ? 0 : n;
    return counts().total() == 0 && service_->in_flight() == 0 && others == 0;
  };
  ASSERT_TRUE(wait_until(settled, 120s));
  EXPECT_TRUE(service_->stop(30s));
  std::lock_guard lock(mutex);
  ASSERT_EQ(succeeded.size(), static_cast<std::size_t>(kMessages));
  for (const auto& [n, runs] : succeeded) EXPECT_EQ(runs, 2) << "#" << n;
  EXPECT_EQ(counts().dead_lettered, 0u);
  auto c = service_->ledger().counts();
  EXPECT_EQ(c[State::kCompleted], service_->counters().deferred);
  EXPECT_EQ(service_->counters().completed, static_cast<std::uint64_t>(kMessages));
}

class WhenSlowConnectionCutTest : public ServiceTest,
                                  public ::testing::WithParamInterface<const char*> {};

TEST_P(WhenSlowConnectionCutTest, MessagesHeldWhenTheConnectionIsCutAreNotLost) {
  // The connection is cut while three held messages are being handled: their locks (2 s) end
  // with it. With defer_after 30s the runs end first and the completions on the link fail; with
  // 300ms the deferrals come while the connection is down. Either way each message is handled
  // again or resumed, and ends completed, with nothing dead-lettered or left behind.
  reaper_interval_ = 100ms;
  bus_.reset();
  start_emulator(0, false, 2s);
  metro::test::FaultProxy proxy("127.0.0.1", bus_->port());
  through_ = "Endpoint=sb://localhost:" + std::to_string(proxy.port()) +
             ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
             "UseDevelopmentEmulator=true";
  std::promise<void> release;
  auto released = release.get_future().share();
  std::mutex mutex;
  std::map<std::int64_t, int> started;
  ServiceOptions options;
  options.functions = {{"f", [&, released](const Task& t) {
                          {
                            std::lock_guard lock(mutex);
                            ++started[t.sequence_number];
                          }
                          released.wait_for(60s);
                        }}};
  options.client.reconnect_initial_backoff = 50ms;
  options.client.reconnect_max_backoff = 200ms;
  options.client.operation_timeout = 3s;
  start(config("[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n",
               when_slow(GetParam()) + "deferred_deadline = \"2s\"\n"),
        std::move(options));
  publish(R"({"subject": "s"})", 3);
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard lock(mutex);
    return started.size() == 3;
  }));
  proxy.cut();
  if (std::string(GetParam()) != "30s") {
    // The deferrals are tried (and fail, or wait) while the connection is down.
    std::this_thread::sleep_for(1s);
  }
  release.set_value();
  auto settled = [&] {
    auto c = service_->ledger().counts();
    std::size_t others = 0;
    for (const auto& [state, n] : c) others += state == State::kCompleted ? 0 : n;
    return counts().total() == 0 && service_->in_flight() == 0 && others == 0;
  };
  ASSERT_TRUE(wait_until(settled, 90s)) << service_->in_flight() << " in flight, "
                                        << counts().total() << " in the subscription";
  EXPECT_EQ(counts().dead_lettered, 0u);
  std::lock_guard lock(mutex);
  EXPECT_EQ(started.size(), 3u);
  if (std::string(GetParam()) == "30s") {
    // Their completions failed with the connection: each was delivered again and run again.
    for (const auto& [n, runs] : started) EXPECT_GE(runs, 2) << "#" << n;
  }
}

INSTANTIATE_TEST_SUITE_P(DeferAfter, WhenSlowConnectionCutTest, ::testing::Values("30s", "300ms"),
                         [](const auto& after) {
                           return std::string(after.param) == "30s" ? "RunsEndFirst"
                                                                    : "DeferralsWhileCut";
                         });

TEST_F(ServiceTest, WhenSlowARunThatEndsAfterItsMessageWasCompletedOnTheLinkWritesNothing) {
  // A handler completes its held message itself (on the link, with no ledger row), then returns;
  // a second handler of the same message ends later still, one well and one failing. Neither
  // end may be written to the ledger: a run without its message would be shown as a run of the
  // next message given this sequence number.
  std::promise<void> release;
  auto released = release.get_future().share();
  std::atomic<int> ended{0};
  ServiceOptions options;
  options.functions = {
      {"self",
       [](const Task& t) {
         metro::complete_deferred_message(t.sequence_number, t.topic_name, t.subscription_name);
       }},
      {"after", [&, released](const Task& t) {
         released.wait_for(60s);
         ++ended;
         if (t.subject == "fails") throw std::runtime_error("after the completion");
       }}};
  start(config(R"(
[[subscriptions.handlers]]
subject = "*"
glob = true
handler = "self"
completion = "explicit"
[[subscriptions.handlers]]
subject = "*"
glob = true
handler = "after"
)",
               when_slow("30s")),
        std::move(options));
  publish(R"({"subject": "works"})");
  publish(R"({"subject": "fails"})");
  ASSERT_TRUE(wait_until([&] { return counts().total() == 0; }));  // Completed on the link.
  release.set_value();
  ASSERT_TRUE(wait_until([&] { return ended == 2; }));
  EXPECT_TRUE(service_->stop(30s));  // Every run has ended and was recorded (or not) by now.
  for (std::int64_t n : {1, 2}) {
    EXPECT_TRUE(service_->ledger().runs({"orders", "billing", n}).empty()) << "#" << n;
    EXPECT_FALSE(state_of(n).has_value()) << "#" << n;
  }
  EXPECT_EQ(service_->counters().deferred, 0u);
}

class WhenSlowRestartTest : public ServiceTest, public ::testing::WithParamInterface<bool> {};

TEST_P(WhenSlowRestartTest, ARunOfAMessageGoneWithARestartDoesNotSpeakForItsSuccessor) {
  // A message is held and its handler runs; the emulator restarts without its state, and a new
  // message is given the same sequence number while the first run is still going. What the
  // first run reports (a failure) is of the message that is gone: it must neither defer the
  // new one nor be recorded as one of its runs, whether it ends before the new one or after the
  // new one was completed on its link.
  bool first_ends_first = GetParam();
  auto port = bus_->port();
  std::promise<void> release_first;
  std::promise<void> release_second;
  auto first_released = release_first.get_future().share();
  auto second_released = release_second.get_future().share();
  std::atomic<bool> first_started{false};
  std::atomic<bool> first_ended{false};
  std::atomic<bool> second_started{false};
  ServiceOptions options;
  options.functions = {{"f", [&, first_released, second_released](const Task& t) {
                          if (t.subject == "s/first") {
                            first_started = true;
                            first_released.wait_for(60s);
                            first_ended = true;
                            throw std::runtime_error("the first message failed");
                          }
                          second_started = true;
                          second_released.wait_for(60s);
                        }}};
  options.client.reconnect_max_backoff = 200ms;
  options.client.operation_timeout = 5s;
  start(config("[[subscriptions.handlers]]\nsubject = \"s/**\"\nglob = true\nhandler = \"f\"\n",
               when_slow("60s")),
        std::move(options));
  publish(R"({"subject": "s/first"})");
  ASSERT_TRUE(wait_until([&] { return first_started.load(); }));
  bus_->stop();
  bus_.reset();
  start_emulator(port, false);  // Its sequence numbers start at 1 again.
  ASSERT_TRUE(wait_until(
      [&] {
        try {
          publish(R"({"subject": "s/second"})");
          return true;
        } catch (const std::exception&) {
          return false;
        }
      },
      60s));
  ASSERT_TRUE(wait_until([&] { return second_started.load(); }, 60s));
  if (first_ends_first) {
    release_first.set_value();
    ASSERT_TRUE(wait_until([&] { return first_ended.load(); }));
    release_second.set_value();
    ASSERT_TRUE(wait_until([&] { return counts().total() == 0; }, 60s));
  } else {
    release_second.set_value();
    ASSERT_TRUE(wait_until([&] { return counts().total() == 0; }, 60s));
    ASSERT_TRUE(wait_until([&] { return service_->counters().completed == 1; }));
    release_first.set_value();
    ASSERT_TRUE(wait_until([&] { return first_ended.load(); }));
  }
  EXPECT_TRUE(service_->stop(30s));  // Every run has ended and was recorded (or not) by now.
  EXPECT_EQ(service_->counters().deferred, 0u);
  EXPECT_FALSE(state_of(1).has_value());
  EXPECT_TRUE(service_->ledger().runs({"orders", "billing", 1}).empty());
}

INSTANTIATE_TEST_SUITE_P(Order, WhenSlowRestartTest, ::testing::Bool(), [](const auto& first) {
  return first.param ? "TheFirstEndsFirst" : "TheNewOneIsCompletedFirst";
});

}  // namespace
