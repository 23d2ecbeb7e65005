// Several instances of the service on one subscription, sharing a PostgreSQL ledger (a real
// server started by the test in a temporary directory): retry and complete from any instance, a
// dead instance's messages taken over once its lease lapsed, PostgreSQL restarted mid-stream, and
// a clear error at start when the database cannot be used.

#include <atomic>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include <unistd.h>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../support/postgres_server.hpp"
#include "../support/test_support.hpp"

namespace {

using metro::test::wait_until;

using namespace std::chrono_literals;
using metro::dispatch::Service;
using metro::dispatch::ServiceOptions;
using metro::dispatch::Task;
using metro::ledger::MessageKey;
using metro::ledger::State;

metro::test::PostgresServer& server() {
  static auto* s = new metro::test::PostgresServer();
  static const bool registered = [] {
    std::atexit([] { delete s; });
    return true;
  }();
  (void)registered;
  return *s;
}

class InstancesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("METRO_TEST_DEBUG") != nullptr) spdlog::set_level(spdlog::level::debug);
    static int counter = 0;
    database_ = "instances" + std::to_string(++counter);
    server().create_database(database_);
    metro::emulator::EmulatorOptions options;
    options.port = 0;
    metro::emulator::TopicOptions topic{"orders", {}, {}};
    topic.subscriptions.push_back({"billing", {}, {}});
    options.bus.topics.push_back(topic);
    bus_ = std::make_unique<metro::emulator::Emulator>(options);
    bus_->start();
  }

  void TearDown() override {
    for (auto& s : services_) s->stop(0ms);
    services_.clear();
    bus_.reset();
  }

  metro::config::Config config(const std::string& id, const std::string& handlers,
                               const std::string& extra = {}) {
    std::string text = "[metro]\nworkers = 4\nledger = \"" + server().url(database_) +
                       "\"\ninstance_id = \"" + id + "\"\nlease = \"2s\"\n" + extra +
                       "\n[[subscriptions]]\ntopic_name = \"orders\"\n"
                       "subscription_name = \"billing\"\nconnection_string = \"" +
                       bus_->connection_string() + "\"\n" + handlers +
                       "\n[admin]\nenabled = false\n";
    return metro::config::parse_config(text, "test.toml");
  }

  Service& start(const metro::config::Config& c, ServiceOptions options) {
    options.reaper_interval = 200ms;
    services_.push_back(std::make_unique<Service>(c, std::move(options)));
    services_.back()->start();
    return *services_.back();
  }

  void publish(int count) {
    metro::sb::Client client(bus_->connection_string());
    auto sender = client.create_sender("orders");
    std::vector<metro::sb::Message> batch;
    for (int i = 0; i < count; ++i) {
      metro::sb::Message m;
      m.body = R"({"subject": "s", "n": )" + std::to_string(i) + "}";
      batch.push_back(m);
    }
    sender.send(batch);
  }

  std::unique_ptr<metro::ledger::Ledger> ledger() {
    return metro::ledger::open_ledger(server().url(database_));
  }

  std::size_t completed() { return ledger()->counts()[State::kCompleted]; }

  std::string database_;
  std::unique_ptr<metro::emulator::Emulator> bus_;
  std::vector<std::unique_ptr<Service>> services_;
};

const char* kHandler = "[[subscriptions.handlers]]\nsubject = \"s\"\nhandler = \"f\"\n"
                       "max_attempts = 1\n";

TEST_F(InstancesTest, AnyInstanceRetriesOrCompletesWhatAnotherParked) {
  // Instance b parks everything it gets; instance a, started later, retries and completes b's
  // messages by sequence number.
  std::atomic<int> ran_on_a{0};
  ServiceOptions b_options;
  b_options.functions = {{"f", [](const Task&) { throw std::runtime_error("b cannot"); }}};
  auto& b = start(config("b", kHandler), std::move(b_options));
  publish(3);
  ASSERT_TRUE(wait_until([&] { return ledger()->counts()[State::kFailed] == 3; }, 30s));
  for (std::int64_t seq = 1; seq <= 3; ++seq) {
    EXPECT_EQ(ledger()->find({"orders", "billing", seq})->owner, "b");
  }
  ServiceOptions a_options;
  a_options.functions = {{"f", [&](const Task&) { ++ran_on_a; }}};
  auto& a = start(config("a", kHandler), std::move(a_options));
  a.retry({"orders", "billing", 1});
  ASSERT_TRUE(wait_until(
      [&] { return ledger()->find({"orders", "billing", 1})->state == State::kCompleted; }, 30s));
  EXPECT_EQ(ran_on_a, 1);
  auto row = ledger()->find({"orders", "billing", 1});
  EXPECT_EQ(row->owner, "a");
  auto runs = ledger()->runs(row->key);
  ASSERT_EQ(runs.size(), 2u);  // b's failed attempt, then a's.
  // Completing from a: fetched by sequence number there, settled, recorded.
  EXPECT_EQ(a.complete({"orders", "billing", 2}, 30s), metro::dispatch::Settlement::kDone);
  EXPECT_EQ(ledger()->find({"orders", "billing", 2})->state, State::kCompleted);
  // b sees a's work in the shared ledger, and both instances are listed.
  EXPECT_EQ(b.ledger().find({"orders", "billing", 1})->state, State::kCompleted);
  auto instances = a.instances();
  ASSERT_EQ(instances.size(), 2u);
  EXPECT_EQ(instances[0].id, "a");
  EXPECT_EQ(instances[1].id, "b");
  EXPECT_TRUE(instances[0].live && instances[1].live);
  EXPECT_EQ(a.instance_id(), "a");
  // Nothing is left in Service Bus but #3 (still parked).
  EXPECT_EQ(bus_->counts("orders/Subscriptions/billing").total(), 1u);
}

TEST_F(InstancesTest, AHandlerCompletesAnotherInstancesMessageBySequenceNumber) {
  // b parks #1 and stops; a's handler, running for #2, completes #1 with
  // metro::complete_deferred_message as the original's users did.
  ServiceOptions b_options;
  b_options.functions = {{"f", [](const Task&) { throw std::runtime_error("b cannot"); }}};
  auto& b = start(config("b", kHandler), std::move(b_options));
  publish(1);
  ASSERT_TRUE(wait_until([&] { return ledger()->counts()[State::kFailed] == 1; }, 30s));
  b.stop(0ms);
  std::atomic<bool> completed_other{false};
  ServiceOptions a_options;
  a_options.functions = {{"f", [&](const Task& t) {
                            if (t.sequence_number == 2) {
                              metro::complete_deferred_message(1, t.topic_name,
                                                               t.subscription_name);
                              completed_other = true;
                            }
                          }}};
  start(config("a", kHandler), std::move(a_options));
  publish(1);
  ASSERT_TRUE(wait_until([&] { return completed() == 2; }, 30s));
  EXPECT_TRUE(completed_other);
  EXPECT_EQ(ledger()->find({"orders", "billing", 1})->owner, "b");  // Parked by b, settled by a.
  EXPECT_EQ(bus_->counts("orders/Subscriptions/billing").total(), 0u);
}

TEST_F(InstancesTest, AMessageAnotherLiveInstanceIsHandlingIsNotRetriedHere) {
  std::atomic<bool> release{false};
  std::atomic<int> running{0};
  ServiceOptions b_options;
  b_options.functions = {{"f", [&](const Task&) {
                            ++running;
                            while (!release) std::this_thread::sleep_for(10ms);
                          }}};
  start(config("b", kHandler), std::move(b_options));
  publish(1);
  ASSERT_TRUE(wait_until([&] { return running == 1; }, 30s));
  ServiceOptions a_options;
  a_options.functions = {{"f", [](const Task&) {}}};
  auto& a = start(config("a", kHandler), std::move(a_options));
  try {
    a.retry({"orders", "billing", 1});
    ADD_FAILURE() << "retried a message another live instance is running";
  } catch (const metro::ConflictError& e) {
    EXPECT_NE(std::string(e.what()).find("instance 'b'"), std::string::npos) << e.what();
  }
  release = true;
  ASSERT_TRUE(wait_until([&] { return completed() == 1; }, 30s));
}

TEST_F(InstancesTest, ABulkJobLeavesAMessageAnotherLiveInstanceIsHandlingAlone) {
  // Instance "b" (live: its heartbeat is fresh and its lease a minute) is running message 1.
  auto b = ledger();
  b->join({"b", "another-host", 4242, 60s});
  metro::ledger::DeferredMessage row;
  row.key = {"orders", "billing", 1};
  row.subject = "s";
  row.body = "{}";
  row.state = State::kRunning;
  b->record(row);
  ServiceOptions a_options;
  a_options.functions = {{"f", [](const Task&) {}}};
  start(config("a", kHandler), std::move(a_options));
  // Jobs made when the message was parked, say, and run by A after B took it up again: each
  // action records the message as failed, naming B, and leaves it as it is.
  int n = 0;
  for (auto action : {metro::ledger::JobAction::kComplete, metro::ledger::JobAction::kDeadLetter,
                      metro::ledger::JobAction::kRetry}) {
    metro::ledger::Job job;
    job.id = "job" + std::to_string(++n);
    job.action = action;
    job.filter = "{}";
    job.created_by = "ops";
    metro::ledger::Query running_now;
    running_now.state = State::kRunning;
    job = ledger()->create_job(job, running_now);
    ASSERT_EQ(job.total, 1u) << to_string(action);
    ASSERT_TRUE(wait_until(
        [&] {
          auto now = ledger()->find_job(job.id);
          return now && now->state == metro::ledger::JobState::kCompleted;
        },
        60s))
        << to_string(action);
    EXPECT_EQ(ledger()->find_job(job.id)->failed, 1u) << to_string(action);
    auto failures = ledger()->job_failures(job.id, 10);
    ASSERT_EQ(failures.size(), 1u);
    EXPECT_NE(failures[0].error.find("instance 'b'"), std::string::npos) << failures[0].error;
    auto now = ledger()->find({"orders", "billing", 1});
    EXPECT_EQ(now->owner, "b");
    EXPECT_EQ(now->state, State::kRunning);
  }
}

TEST_F(InstancesTest, ADeadInstancesMessagesAreTakenOverWithinALeaseAndAReaperPeriod) {
  // Instance "dead" took 5 messages, recorded and deferred them, renewed its lease of 2 s, and
  // died: no heartbeat ever again.
  std::set<std::int64_t> expected;
  publish(5);
  {
    metro::sb::Client client(bus_->connection_string());
    auto receiver = client.create_receiver("orders/Subscriptions/billing");
    std::vector<metro::sb::ReceivedMessage> taken;
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (taken.size() < 5 && std::chrono::steady_clock::now() < deadline) {
      for (auto& m : receiver.receive(5 - taken.size(), 500ms)) taken.push_back(std::move(m));
    }
    ASSERT_EQ(taken.size(), 5u);
    auto dead = ledger();
    dead->join({"dead", "another-host", 4242, 2s});
    std::vector<metro::ledger::DeferredMessage> rows;
    for (auto& m : taken) {
      metro::ledger::DeferredMessage row;
      row.key = {"orders", "billing", m.sequence_number};
      row.subject = "s";
      row.body = m.body;
      row.message_id = m.message_id.value_or("");
      row.state = State::kDeferred;
      rows.push_back(row);
      expected.insert(m.sequence_number);
    }
    dead->record_all(rows);
    for (auto& m : taken) receiver.defer(m);
    dead->heartbeat(taken.size());
  }
  auto died = std::chrono::steady_clock::now();
  std::mutex mutex;
  std::set<std::int64_t> ran;
  ServiceOptions a_options;
  a_options.functions = {{"f", [&](const Task& t) {
                            std::lock_guard lock(mutex);
                            ran.insert(t.sequence_number);
                          }}};
  start(config("a", kHandler), std::move(a_options));
  // Not at a's start (the lease still holds), but by the reaper once it lapsed.
  ASSERT_TRUE(wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return ran == expected;
      },
      30s));
  auto took = std::chrono::steady_clock::now() - died;
  EXPECT_GE(took, 1500ms);
  EXPECT_LT(took, 20s);
  for (auto seq : expected) {
    EXPECT_EQ(ledger()->find({"orders", "billing", seq})->owner, "a") << seq;
  }
  ASSERT_TRUE(wait_until([&] { return completed() == 5; }, 30s));
  EXPECT_EQ(bus_->counts("orders/Subscriptions/billing").total(), 0u);
}

TEST_F(InstancesTest, PostgresRestartedMidStreamPausesWhatCannotBeRecordedAndLosesNothing) {
  std::mutex mutex;
  std::set<std::int64_t> ran;
  ServiceOptions options;
  options.functions = {{"f", [&](const Task& t) {
                          std::this_thread::sleep_for(5ms);
                          std::lock_guard lock(mutex);
                          ran.insert(t.sequence_number);
                        }}};
  auto& a = start(config("a", kHandler), std::move(options));
  publish(300);
  ASSERT_TRUE(wait_until([&] { return a.counters().completed >= 20; }, 30s));
  server().stop();
  // Not ready while the ledger cannot be written, and it says why.
  EXPECT_TRUE(wait_until(
      [&] {
        auto r = a.readiness();
        return !r.ready && !r.problems.empty() &&
               r.problems[0].find("ledger") != std::string::npos;
      },
      30s));
  std::this_thread::sleep_for(1s);
  server().start();
  ASSERT_TRUE(wait_until([&] { return completed() == 300; }, 120s))
      << "completed " << completed() << ", ran " << ran.size();
  EXPECT_EQ(ran.size(), 300u);
  EXPECT_EQ(a.counters().dead_lettered, 0u);
  EXPECT_TRUE(wait_until([&] { return a.readiness().ready; }, 30s));
  EXPECT_TRUE(wait_until([&] { return bus_->counts("orders/Subscriptions/billing").total() == 0; },
                         60s));
}

TEST_F(InstancesTest, AWrongPasswordIsAClearErrorAtStartNamingTheHost) {
  auto c = config("a", kHandler);
  c.metro.ledger = "postgresql://metro:wrong-secret@127.0.0.1:" +
                   std::to_string(server().port()) + "/" + database_;
  ServiceOptions options;
  options.functions = {{"f", [](const Task&) {}}};
  try {
    Service s(c, std::move(options));
    ADD_FAILURE() << "a service started on a ledger it cannot log in to";
  } catch (const metro::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("127.0.0.1:" + std::to_string(server().port())), std::string::npos)
        << what;
    EXPECT_NE(what.find("password authentication failed"), std::string::npos) << what;
    EXPECT_EQ(what.find("wrong-secret"), std::string::npos) << what;
  }
}

}  // namespace
