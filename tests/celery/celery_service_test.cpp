// python and celery handlers through the service, end to end against real parts: the emulator,
// redis-server on a free port and a real Celery worker (tests/celery/app), with the admin API that
// the Python helper completes through. The first suite runs the service in-process (the parts
// `metro run` is made of); the second runs the `metro` binary, killed and restarted.

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <metro/admin/server.hpp>
#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../../src/celery/celery_handler.hpp"
#include "celery_support.hpp"

namespace {

using metro::celery::CeleryHandlers;
using metro::dispatch::Service;
using metro::ledger::HandlerRun;
using metro::ledger::State;
using metro::test::CeleryWorker;
using metro::test::ChildProcess;
using metro::test::RedisServer;
using metro::test::wait_until;
using json = nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr const char* kToken = "celery-test-admin-token";

fs::path test_dir(const std::string& name) {
  auto dir =
      fs::temp_directory_path() / ("metro-celery-service-" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string current_test() {
  return ::testing::UnitTest::GetInstance()->current_test_info()->name();
}

/// Every record line of `kind` for the message `topic`#`sequence_number`.
std::vector<json> records_of(const CeleryWorker& worker, const std::string& kind,
                             const std::string& topic, std::int64_t sequence_number) {
  std::vector<json> out;
  for (const auto& line : worker.records()) {
    auto record = json::parse(line, nullptr, false);
    if (record.is_object() && record.value("kind", "") == kind &&
        record.value("topic_name", "") == topic &&
        record.value("sequence_number", std::int64_t{-1}) == sequence_number) {
      out.push_back(record);
    }
  }
  return out;
}

/// An emulator hosting one topic with the subscription "billing".
std::unique_ptr<metro::emulator::Emulator> start_bus(const std::string& topic,
                                                     const fs::path& data_dir = {}) {
  metro::emulator::EmulatorOptions options;
  options.port = 0;
  options.data_dir = data_dir;
  metro::emulator::TopicOptions t{topic, {}, {}};
  t.subscriptions.push_back({"billing", {}, {}});
  options.bus.topics.push_back(t);
  auto bus = std::make_unique<metro::emulator::Emulator>(options);
  bus->start();
  return bus;
}

void publish(const std::string& connection_string, const std::string& topic,
             const std::vector<std::string>& bodies) {
  metro::sb::Client client(connection_string);
  auto sender = client.create_sender(topic);
  std::vector<metro::sb::Message> batch;
  for (const auto& body : bodies) {
    metro::sb::Message m;
    m.body = body;
    batch.push_back(m);
  }
  sender.send(batch);
}

/// The messages still in a subscription (active or deferred), by peeking.
std::size_t left_in(const std::string& connection_string, const std::string& topic) {
  metro::sb::Client client(connection_string);
  auto receiver = client.create_receiver(topic + "/Subscriptions/billing", {});
  return receiver.peek(1, 1000).size();
}

// ---- the service in-process --------------------------------------------------------------------

/// One Redis and one worker (queue "celery") for the suite; the worker's METRO_URL and METRO_TOKEN
/// point at the admin API each test starts on the same port.
class CeleryServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(test_dir("suite"));
    redis_ = new RedisServer(*dir_ / "redis");
    ASSERT_TRUE(redis_->start()) << redis_->log();
    admin_port_ = metro::test::free_port();
    worker_ = new CeleryWorker(*dir_ / "worker", redis_->url(0), redis_->url(1), "celery", 2,
                               {{"METRO_URL", "http://127.0.0.1:" + std::to_string(admin_port_)},
                                {"METRO_TOKEN", kToken}});
    ASSERT_TRUE(worker_->wait_ready()) << worker_->log();
  }
  static void TearDownTestSuite() {
    delete worker_;
    delete redis_;
    delete dir_;
  }

  void SetUp() override {
    topic_ = "orders-" + std::to_string(++tests_);  // The worker's counters are per topic.
    dir = test_dir(current_test());
    bus_ = start_bus(topic_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "worker log:\n" << worker_->log() << '\n';
    stop();
    bus_.reset();
  }

  /// A config with one subscription (topic_/billing) and `handlers`; the suite's Redis.
  metro::config::Config config(const std::string& handlers, const std::string& metro = {},
                               const std::string& celery = {}) const {
    std::string text = "[metro]\nledger = \"sqlite://" + (dir / "ledger.db").string() + "\"\n" +
                       (metro.empty() ? "workers = 4" : metro) + "\n[celery]\nbroker = \"" +
                       redis_->url(0) + "\"\nresult_backend = \"" + redis_->url(1) + "\"\n" +
                       celery + "\n[[subscriptions]]\ntopic_name = \"" + topic_ +
                       "\"\nsubscription_name = \"billing\"\nconnection_string = \"" +
                       bus_->connection_string() + "\"\n" + handlers +
                       "\n[admin]\nlisten = \"127.0.0.1:" + std::to_string(admin_port_) +
                       "\"\ntokens = [{ token = \"" + kToken + "\", role = \"admin\" }]\n";
    return metro::config::parse_config(text, "celery-test.toml");
  }

  Service& start(const metro::config::Config& c) {
    metro::dispatch::ServiceOptions options;
    handlers_ = std::make_shared<CeleryHandlers>(c.celery);
    EXPECT_EQ(handlers_->verify(), "");
    options.handler_factory = handlers_;
    service_ = std::make_unique<Service>(c, options);
    service_->start();
    api_ = std::make_unique<metro::admin::Server>(*service_, c.admin);
    api_->start();
    return *service_;
  }

  void stop(std::chrono::milliseconds grace = 10s) {
    if (api_) api_->stop();
    api_.reset();
    if (service_) service_->stop(grace);
    service_.reset();
  }

  void publish(const std::vector<std::string>& bodies) {
    ::publish(bus_->connection_string(), topic_, bodies);
  }

  std::optional<State> state_of(std::int64_t sequence_number) {
    auto row = service_->ledger().find({topic_, "billing", sequence_number});
    if (!row) return std::nullopt;
    return row->state;
  }
  bool reaches(std::int64_t sequence_number, State state, std::chrono::milliseconds timeout = 90s) {
    return wait_until([&] { return state_of(sequence_number) == state; }, timeout);
  }
  std::vector<HandlerRun> runs(std::int64_t sequence_number) {
    return service_->ledger().runs({topic_, "billing", sequence_number});
  }

  httplib::Result api(const std::string& method, const std::string& path) {
    httplib::Client client("127.0.0.1", admin_port_);
    client.set_read_timeout(30s);
    httplib::Headers headers{{"Authorization", std::string("Bearer ") + kToken}};
    return method == "POST" ? client.Post(path, headers, "", "application/json")
                            : client.Get(path, headers);
  }

  static fs::path* dir_;
  static RedisServer* redis_;
  static CeleryWorker* worker_;
  static std::uint16_t admin_port_;
  static int tests_;
  fs::path dir;
  std::string topic_;
  std::unique_ptr<metro::emulator::Emulator> bus_;
  std::shared_ptr<CeleryHandlers> handlers_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<metro::admin::Server> api_;
};

fs::path* CeleryServiceTest::dir_ = nullptr;
RedisServer* CeleryServiceTest::redis_ = nullptr;
CeleryWorker* CeleryServiceTest::worker_ = nullptr;
std::uint16_t CeleryServiceTest::admin_port_ = 0;
int CeleryServiceTest::tests_ = 0;

constexpr const char* kBody = R"({"subject": "Orders/Created", "id": 7})";

TEST_F(CeleryServiceTest, APlainFunctionNamedByPythonRunsWithTheFourArgumentsAndCompletes) {
  start(config(R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
python = "celery_handlers.my_func"
)"));
  publish({kBody});
  ASSERT_TRUE(reaches(1, State::kCompleted));
  auto r = runs(1);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, HandlerRun::Outcome::kSucceeded);
  EXPECT_EQ(r[0].task_id.size(), 36u) << r[0].task_id;
  auto records = records_of(*worker_, "my_func", topic_, 1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["subscription_name"], "billing");
  EXPECT_EQ(records[0]["message"]["id"], 7);
  // The task id in the API, and the tasks in /metrics.
  auto shown = api("GET", "/api/v1/deferred/" + topic_ + "/billing/1");
  ASSERT_TRUE(shown);
  auto body = json::parse(shown->body);
  EXPECT_EQ(body["runs"][0]["task_id"], r[0].task_id);
  EXPECT_EQ(body["runs"][0]["retries"], 0);
  auto metrics = api("GET", "/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("metro_celery_tasks_sent_total 1\n"), std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find("metro_celery_task_outcomes_total{state=\"SUCCESS\"} 1\n"),
            std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find("metro_celery_result_backend_connected 1\n"), std::string::npos);
}

TEST_F(CeleryServiceTest, APathThatDoesNotImportFailsTheAttemptNamingThePathAndTheImportError) {
  start(config(R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
python = "celery_handlers.no_such_function"
max_attempts = 1
)"));
  publish({kBody});
  ASSERT_TRUE(reaches(1, State::kFailed));
  auto r = runs(1);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, HandlerRun::Outcome::kFailed);
  EXPECT_NE(r[0].error.find("ImportError"), std::string::npos) << r[0].error;
  EXPECT_NE(r[0].error.find("celery_handlers.no_such_function"), std::string::npos) << r[0].error;
  EXPECT_FALSE(r[0].task_id.empty());
}

TEST_F(CeleryServiceTest, ARegisteredTaskThatSucceedsCompletesTheMessage) {
  start(config(R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
celery = "tests.handle"
)"));
  publish({kBody, kBody});
  ASSERT_TRUE(reaches(1, State::kCompleted));
  ASSERT_TRUE(reaches(2, State::kCompleted));
  EXPECT_EQ(records_of(*worker_, "tests.handle", topic_, 2).size(), 1u);
  EXPECT_EQ(left_in(bus_->connection_string(), topic_), 0u);
}

TEST_F(CeleryServiceTest, TasksThatCompleteTheirMessageThemselvesCompleteIt) {
  start(config(R"(
[[subscriptions.handlers]]
subject = "Orders/Sync"
python = "celery_handlers.completes"
completion = "explicit"

[[subscriptions.handlers]]
subject = "Orders/Async"
python = "celery_handlers.completes_async"
completion = "explicit"
)"));
  publish({R"({"subject": "Orders/Sync"})", R"({"subject": "Orders/Async"})",
           R"({"subject": "Orders/Async", "explicit_coroutine": true})"});
  for (std::int64_t seq = 1; seq <= 3; ++seq) {
    ASSERT_TRUE(reaches(seq, State::kCompleted)) << seq;
    // Completed by the task before its SUCCESS reached metro: the run's end is recorded then.
    ASSERT_TRUE(wait_until([&] {
      auto r = runs(seq);
      return r.size() == 1 && r[0].outcome == HandlerRun::Outcome::kSucceeded;
    })) << seq;
  }
  EXPECT_EQ(records_of(*worker_, "completes", topic_, 1).size(), 1u);
  EXPECT_EQ(records_of(*worker_, "completes_async", topic_, 2).size(), 1u);
  EXPECT_EQ(records_of(*worker_, "completes_async", topic_, 3).size(), 1u);
  EXPECT_EQ(left_in(bus_->connection_string(), topic_), 0u);
}

TEST_F(CeleryServiceTest, ATaskThatRaisesTwiceThenSucceedsLeavesThreeRunsWithTheirTaskIds) {
  start(config(R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
python = "celery_handlers.fails_twice"
backoff = "100ms"
)"));
  publish({kBody});
  ASSERT_TRUE(reaches(1, State::kCompleted));
  auto r = runs(1);
  ASSERT_EQ(r.size(), 3u);
  std::set<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r[i].attempt, i + 1);
    EXPECT_EQ(r[i].outcome, i < 2 ? HandlerRun::Outcome::kFailed : HandlerRun::Outcome::kSucceeded);
    ids.insert(r[i].task_id);
  }
  EXPECT_NE(r[0].error.find("RuntimeError: not yet (1)"), std::string::npos) << r[0].error;
  EXPECT_EQ(ids.size(), 3u) << "each attempt is a new task";
  EXPECT_EQ(ids.count(""), 0u);
}

TEST_F(CeleryServiceTest, AParkedTaskIsRetriedThroughTheApiAfterItWasFixed) {
  start(config(R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
python = "celery_handlers.fails_until_fixed"
max_attempts = 2
backoff = "100ms"
)"));
  publish({kBody});
  ASSERT_TRUE(reaches(1, State::kFailed));
  EXPECT_NE(service_->ledger().find({topic_, "billing", 1})->last_error.find("not fixed yet"),
            std::string::npos);
  std::ofstream(worker_->state_dir() / ("fixed-" + topic_ + "-1")) << "fixed";
  auto retried = api("POST", "/api/v1/deferred/" + topic_ + "/billing/1/retry");
  ASSERT_TRUE(retried);
  EXPECT_EQ(retried->status, 202) << retried->body;
  ASSERT_TRUE(reaches(1, State::kCompleted));
  auto r = runs(1);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[2].outcome, HandlerRun::Outcome::kSucceeded);
  EXPECT_EQ(records_of(*worker_, "fails_until_fixed", topic_, 1).size(), 1u);
}

TEST_F(CeleryServiceTest, ATaskThatRetriesItselfStaysRunningWithItsRetriesThenSucceeds) {
  start(config(R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
celery = "tests.retrying"
)"));
  publish({R"({"subject": "Orders/Created", "countdown": 2})"});
  // While it waits out its countdown: running, one run, its retries shown.
  ASSERT_TRUE(wait_until(
      [&] {
        auto r = runs(1);
        return !r.empty() && r[0].retries >= 1;
      },
      60s));
  EXPECT_EQ(state_of(1), State::kRunning);
  auto shown = json::parse(api("GET", "/api/v1/deferred/" + topic_ + "/billing/1")->body);
  EXPECT_EQ(shown["state"], "running");
  EXPECT_GE(shown["runs"][0]["retries"].get<int>(), 1);
  EXPECT_EQ(shown["runs"][0]["outcome"], "running");
  ASSERT_TRUE(reaches(1, State::kCompleted));
  auto r = runs(1);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, HandlerRun::Outcome::kSucceeded);
  EXPECT_EQ(r[0].retries, 2);
  EXPECT_EQ(records_of(*worker_, "tests.retrying", topic_, 1).size(), 0u);  // Keyed by seq only.
}

TEST_F(CeleryServiceTest, AnUnknownTaskNameIsAFailedAttemptWithTheReason) {
  start(config(R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
celery = "tests.no_such_task"
max_attempts = 1
)"));
  publish({kBody});
  ASSERT_TRUE(reaches(1, State::kFailed, 60s));
  auto r = runs(1);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_NE(r[0].error.find("NotRegistered"), std::string::npos) << r[0].error;
  EXPECT_NE(r[0].error.find("tests.no_such_task"), std::string::npos) << r[0].error;
}

TEST_F(CeleryServiceTest, TasksOutHoldNoWorkerAndAreLeftRunningWhenMetroStops) {
  // One worker thread, and tasks sent to a queue no worker reads: they all go out at once.
  auto c = config(R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
celery = "tests.handle"
queue = "nobody-reads-this"
)",
                  "workers = 1");
  start(c);
  publish(std::vector<std::string>(6, kBody));
  ASSERT_TRUE(wait_until([&] { return handlers_->client()->stats().sent == 6; }, 60s))
      << handlers_->client()->stats().sent;
  EXPECT_EQ(handlers_->client()->stats().in_flight, 6u);
  std::map<std::int64_t, std::string> sent;
  for (std::int64_t seq = 1; seq <= 6; ++seq) {
    ASSERT_TRUE(reaches(seq, State::kRunning));
    auto r = runs(seq);
    ASSERT_EQ(r.size(), 1u);
    sent[seq] = r[0].task_id;
  }
  // Stopping abandons them: each stays running with its task id, for the next start.
  EXPECT_FALSE(service_->stop(0ms));
  stop();
  auto ledger = metro::ledger::open_ledger("sqlite://" + (dir / "ledger.db").string());
  for (std::int64_t seq = 1; seq <= 6; ++seq) {
    EXPECT_EQ(ledger->find({topic_, "billing", seq})->state, State::kRunning);
    auto r = ledger->runs({topic_, "billing", seq});
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].outcome, HandlerRun::Outcome::kRunning);
    EXPECT_EQ(r[0].task_id, sent[seq]);
  }
  ledger.reset();
  // The next start watches them by their ids; the workers write their outcomes (as a worker that
  // finally got to them would): each attempt 1 completes, no task is sent again.
  start(c);
  auto writer = metro::celery::RedisConnection::connect(
      metro::celery::parse_redis_url(redis_->url(1)), metro::celery::Clock::now() + 5s);
  ASSERT_TRUE(wait_until([&] { return handlers_->client()->stats().in_flight == 6; }, 60s));
  for (const auto& [seq, id] : sent) {
    auto meta = R"({"status": "SUCCESS", "result": null, "task_id": ")" + id + R"("})";
    writer->pipeline(
        {{"SET", "celery-task-meta-" + id, meta}, {"PUBLISH", "celery-task-meta-" + id, meta}},
        metro::celery::Clock::now() + 5s);
  }
  for (const auto& [seq, id] : sent) {
    ASSERT_TRUE(reaches(seq, State::kCompleted)) << seq;
    auto r = runs(seq);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].task_id, id);
    EXPECT_EQ(r[0].outcome, HandlerRun::Outcome::kSucceeded);
  }
  EXPECT_EQ(handlers_->client()->stats().sent, 0u);
}

TEST_F(CeleryServiceTest, ATaskPickedUpThatNeverEndsTimesOutAndIsSentAgain) {
  auto handlers = R"(
[[subscriptions.handlers]]
subject = "Orders/Created"
celery = "tests.handle"
queue = "%s"
backoff = "100ms"
)";
  auto with_queue = [&](const char* queue) {
    std::string text = handlers;
    text.replace(text.find("%s"), 2, queue);
    return text;
  };
  start(config(with_queue("nobody-reads-this")));
  publish({kBody});
  ASSERT_TRUE(reaches(1, State::kRunning));
  // In Redis (its id is recorded before the push; a stop in between makes the attempt a retry).
  ASSERT_TRUE(wait_until([&] { return handlers_->client()->stats().sent == 1; }));
  stop(0ms);
  // Restarted with a short result timeout and the workers' queue: the task sent before is lost
  // (no worker reads its queue), so the attempt times out and the next one runs.
  start(config(with_queue("celery"), {}, "result_timeout = \"3s\""));
  ASSERT_TRUE(reaches(1, State::kCompleted));
  auto r = runs(1);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].outcome, HandlerRun::Outcome::kFailed);
  EXPECT_NE(r[0].error.find("no outcome from Celery within 3s"), std::string::npos) << r[0].error;
  EXPECT_EQ(r[1].outcome, HandlerRun::Outcome::kSucceeded);
  EXPECT_NE(r[0].task_id, r[1].task_id);
}

// ---- faults of the Celery side, each with its own Redis and worker ---------------------------

TEST(CeleryServiceFaultsTest, RedisKilledMidStreamAndRestartedLosesNothing) {
  auto dir = test_dir("redis-restart");
  // appendfsync always: what Redis acknowledged survives its kill -9, as on a durable broker.
  RedisServer redis(dir / "redis", {"--appendonly", "yes", "--appendfsync", "always"});
  ASSERT_TRUE(redis.start()) << redis.log();
  auto worker = std::make_unique<CeleryWorker>(dir / "worker", redis.url(0), redis.url(1));
  ASSERT_TRUE(worker->wait_ready()) << worker->log();
  auto bus = start_bus("orders");
  auto config = metro::config::parse_config(
      "[metro]\nworkers = 4\nledger = \"sqlite://" + (dir / "ledger.db").string() +
          "\"\n[celery]\nbroker = \"" + redis.url(0) + "\"\nresult_backend = \"" + redis.url(1) +
          "\"\nresult_timeout = \"10s\"\n[[subscriptions]]\ntopic_name = \"orders\"\n"
          "subscription_name = \"billing\"\nconnection_string = \"" +
          bus->connection_string() +
          "\"\n[[subscriptions.handlers]]\nsubject = \"Orders/Created\"\n"
          "python = \"celery_handlers.my_func\"\nmax_attempts = 100\nbackoff = \"200ms\"\n"
          "max_backoff = \"1s\"\n[admin]\nenabled = false\n",
      "restart.toml");
  auto options = metro::celery::client_options(config.celery);
  options.reconcile_interval = 1s;
  options.min_backoff = 50ms;
  options.max_backoff = 500ms;
  auto handlers = std::make_shared<CeleryHandlers>(options);
  metro::dispatch::ServiceOptions service_options;
  service_options.handler_factory = handlers;
  Service service(config, service_options);
  service.start();
  constexpr int kMessages = 40;
  std::thread publisher([&] {
    for (int i = 0; i < kMessages; ++i) {
      publish(bus->connection_string(), "orders", {kBody});
      std::this_thread::sleep_for(50ms);
    }
  });
  ASSERT_TRUE(wait_until([&] { return service.ledger().counts()[State::kCompleted] >= 10; }, 120s));
  // Redis dies mid-stream, and its worker with it (a Celery 5.2 worker may not consume again after
  // its broker restarts, so a fresh one comes with it, as a supervisor would bring).
  redis.kill9();
  worker->kill(SIGKILL);
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(redis.start()) << redis.log();
  worker = std::make_unique<CeleryWorker>(dir / "worker", redis.url(0), redis.url(1));
  ASSERT_TRUE(worker->wait_ready()) << worker->log();
  publisher.join();
  EXPECT_TRUE(wait_until(
      [&] {
        return service.ledger().counts()[State::kCompleted] == static_cast<std::size_t>(kMessages);
      },
      240s))
      << service.ledger().counts()[State::kCompleted] << " completed\n"
      << worker->log();
  service.stop(5s);
  EXPECT_EQ(left_in(bus->connection_string(), "orders"), 0u);
  for (int seq = 1; seq <= kMessages; ++seq) {
    // Both workers write to the same records file: every message ran at least once.
    EXPECT_GE(records_of(*worker, "my_func", "orders", seq).size(), 1u) << seq;
  }
  EXPECT_GE(handlers->client()->stats().reconnects, 1u);
}

TEST(CeleryServiceFaultsTest, AWorkerKilledMidTaskTimesTheAttemptOutAndItIsRetried) {
  auto dir = test_dir("worker-kill");
  RedisServer redis(dir / "redis");
  ASSERT_TRUE(redis.start()) << redis.log();
  auto worker = std::make_unique<CeleryWorker>(dir / "worker", redis.url(0), redis.url(1));
  ASSERT_TRUE(worker->wait_ready()) << worker->log();
  auto bus = start_bus("orders");
  auto config = metro::config::parse_config(
      "[metro]\nledger = \"sqlite://" + (dir / "ledger.db").string() + "\"\n[celery]\nbroker = \"" +
          redis.url(0) + "\"\nresult_backend = \"" + redis.url(1) +
          "\"\nresult_timeout = \"4s\"\n[[subscriptions]]\ntopic_name = \"orders\"\n"
          "subscription_name = \"billing\"\nconnection_string = \"" +
          bus->connection_string() +
          "\"\n[[subscriptions.handlers]]\nsubject = \"Orders/Created\"\n"
          "python = \"celery_handlers.slow_first_time\"\nbackoff = \"100ms\"\n"
          "[admin]\nenabled = false\n",
      "worker-kill.toml");
  metro::dispatch::ServiceOptions options;
  options.handler_factory = std::make_shared<CeleryHandlers>(config.celery);
  Service service(config, options);
  service.start();
  publish(bus->connection_string(), "orders", {R"({"subject": "Orders/Created", "seconds": 60})"});
  ASSERT_TRUE(wait_until(
      [&] { return records_of(*worker, "slow_first_time.start", "orders", 1).size() == 1; }, 60s))
      << worker->log();
  worker->kill(SIGKILL);  // Celery acks early: the task is gone with its worker.
  worker = std::make_unique<CeleryWorker>(dir / "worker", redis.url(0), redis.url(1));
  ASSERT_TRUE(worker->wait_ready()) << worker->log();
  ASSERT_TRUE(wait_until(
      [&] {
        return service.ledger().find({"orders", "billing", 1})->state == State::kCompleted;
      },
      90s))
      << worker->log();
  auto r = service.ledger().runs({"orders", "billing", 1});
  ASSERT_GE(r.size(), 2u);
  EXPECT_EQ(r[0].outcome, HandlerRun::Outcome::kFailed);
  EXPECT_NE(r[0].error.find("no outcome from Celery within 4s"), std::string::npos) << r[0].error;
  EXPECT_NE(r[0].error.find("last state STARTED"), std::string::npos) << r[0].error;
  EXPECT_EQ(r.back().outcome, HandlerRun::Outcome::kSucceeded);
  service.stop(5s);
}

// ---- the metro binary
// ----------------------------------------------------------------------------

/// `metro run --emulator` on a durable emulator directory and ledger, as a child process.
class MetroRun {
 public:
  MetroRun(const fs::path& config, const fs::path& dir, int run)
      : process_(std::make_unique<ChildProcess>(
            std::vector<std::string>{METRO_BIN, "run", "--config", config.string(), "--emulator",
                                     "--emulator-port", "0", "--emulator-data-dir",
                                     (dir / "bus").string()},
            dir / ("metro-" + std::to_string(run) + ".out"))) {}

  bool wait_running() const { return process_->wait_for("metro running", 60s); }
  std::string output() const { return process_->output(); }
  std::string line_after(const std::string& prefix) const {
    auto text = output();
    auto at = text.find(prefix);
    if (at == std::string::npos) return {};
    auto end = text.find('\n', at);
    return text.substr(at + prefix.size(), end - at - prefix.size());
  }
  std::string connection_string() const { return line_after("connection string: "); }
  int admin_port() const {
    auto url = line_after("metro admin listening: http://");
    return std::stoi(url.substr(url.rfind(':') + 1));
  }
  json get(const std::string& path) const {
    httplib::Client client("127.0.0.1", admin_port());
    client.set_read_timeout(20s);
    auto r = client.Get(path, {{"Authorization", std::string("Bearer ") + kToken}});
    return r ? json::parse(r->body, nullptr, false) : json();
  }
  std::size_t in_state(const std::string& state) const {
    auto page = get("/api/v1/deferred?state=" + state + "&limit=1000");
    return page.is_object() ? page["items"].size() : 0;
  }
  int kill(int signal) { return process_->kill(signal); }

 private:
  std::unique_ptr<ChildProcess> process_;
};

class CeleryRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = test_dir(current_test());
    redis = std::make_unique<RedisServer>(dir / "redis");
    ASSERT_TRUE(redis->start()) << redis->log();
    worker = std::make_unique<CeleryWorker>(dir / "worker", redis->url(0), redis->url(1));
    ASSERT_TRUE(worker->wait_ready()) << worker->log();
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "worker log:\n" << worker->log() << '\n';
  }

  /// A config for `metro run --emulator` with one subscription (orders/billing) and `handler`.
  fs::path write_config(const std::string& handler, const std::string& metro = {},
                        const std::string& broker = {}, const std::string& name = "metro.toml") {
    auto path = dir / name;
    std::ofstream(path) << "[metro]\nledger = \"sqlite://" << (dir / "ledger.db").string() << "\"\n"
                        << metro << "\n[celery]\nbroker = \""
                        << (broker.empty() ? redis->url(0) : broker) << "\"\nresult_backend = \""
                        << redis->url(1) << "\"\n[[subscriptions]]\ntopic_name = \"orders\"\n"
                        << "subscription_name = \"billing\"\nconnection_string = \"" << kUnused
                        << "\"\n  [[subscriptions.handlers]]\n  subject = \"Orders/Created\"\n"
                        << handler << "\n[admin]\nlisten = \"127.0.0.1:0\"\ntokens = [{ token = \""
                        << kToken << "\", role = \"admin\" }]\n";
    return path;
  }

  /// Replaced by the embedded emulator's.
  static constexpr const char* kUnused =
      "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true";

  fs::path dir;
  std::unique_ptr<RedisServer> redis;
  std::unique_ptr<CeleryWorker> worker;
};

TEST_F(CeleryRunTest, MetroKilledWhileTasksAreOutPicksTheirOutcomesUpAtRestart) {
  auto config = write_config("  python = \"celery_handlers.sleepy\"\n");
  auto metro = std::make_unique<MetroRun>(config, dir, 1);
  ASSERT_TRUE(metro->wait_running()) << metro->output();
  constexpr int kMessages = 6;
  publish(metro->connection_string(), "orders",
          std::vector<std::string>(kMessages, R"({"subject": "Orders/Created", "seconds": 4})"));
  // Every task is out (the worker runs two at a time; the rest wait in the broker).
  std::map<std::int64_t, std::string> sent;
  ASSERT_TRUE(wait_until(
      [&] {
        for (std::int64_t seq = 1; seq <= kMessages; ++seq) {
          auto m = metro->get("/api/v1/deferred/orders/billing/" + std::to_string(seq));
          if (!m.is_object() || !m.contains("runs") || m["runs"].size() != 1 ||
              !m["runs"][0]["task_id"].is_string()) {
            return false;
          }
          sent[seq] = m["runs"][0]["task_id"];
        }
        return true;
      },
      60s))
      << metro->output();
  ASSERT_GE(metro->in_state("running"), 2u);  // Tasks of 4 s, two at a time.
  metro->kill(SIGKILL);
  metro = std::make_unique<MetroRun>(config, dir, 2);
  ASSERT_TRUE(metro->wait_running()) << metro->output();
  ASSERT_TRUE(wait_until([&] { return metro->in_state("completed") == kMessages; }, 120s))
      << metro->output();
  for (const auto& [seq, id] : sent) {
    // Picked up, not sent again: one run, the task id of the first metro, succeeded.
    auto m = metro->get("/api/v1/deferred/orders/billing/" + std::to_string(seq));
    ASSERT_EQ(m["runs"].size(), 1u) << m.dump();
    EXPECT_EQ(m["runs"][0]["task_id"], id);
    EXPECT_EQ(m["runs"][0]["outcome"], "succeeded");
    EXPECT_EQ(records_of(*worker, "sleepy", "orders", seq).size(), 1u) << seq;
  }
  EXPECT_NE(metro->output().find("picking up task"), std::string::npos) << metro->output();
  EXPECT_EQ(left_in(metro->connection_string(), "orders"), 0u);  // Nothing deferred and unknown.
  // `metro deferred show` has the task id.
  auto [code, shown] = metro::test::run_command(
      std::string(METRO_BIN) + " deferred show orders billing 1 --url http://127.0.0.1:" +
      std::to_string(metro->admin_port()) + " --token " + kToken);
  EXPECT_EQ(code, 0) << shown;
  EXPECT_NE(shown.find("TASK ID"), std::string::npos) << shown;
  EXPECT_NE(shown.find(sent[1]), std::string::npos) << shown;
  EXPECT_EQ(metro->kill(SIGTERM), 0);
}

TEST_F(CeleryRunTest, MetroStoppedWhileTasksAreOutLeavesThemForTheNextStart) {
  auto config =
      write_config("  python = \"celery_handlers.sleepy\"\n", "shutdown_grace = \"500ms\"");
  auto metro = std::make_unique<MetroRun>(config, dir, 1);
  ASSERT_TRUE(metro->wait_running()) << metro->output();
  publish(metro->connection_string(), "orders",
          std::vector<std::string>(2, R"({"subject": "Orders/Created", "seconds": 4})"));
  ASSERT_TRUE(wait_until([&] { return metro->in_state("running") == 2; }, 60s));
  ASSERT_TRUE(wait_until(
      [&] { return records_of(*worker, "sleepy.start", "orders", 2).size() == 1; }, 60s));
  auto first = metro->get("/api/v1/deferred/orders/billing/1")["runs"][0]["task_id"];
  EXPECT_EQ(metro->kill(SIGTERM), 0) << metro->output();  // Exits 0 within its grace.
  EXPECT_NE(metro->output().find("still out; it stays running"), std::string::npos)
      << metro->output();
  metro = std::make_unique<MetroRun>(config, dir, 2);
  ASSERT_TRUE(metro->wait_running()) << metro->output();
  ASSERT_TRUE(wait_until([&] { return metro->in_state("completed") == 2; }, 120s))
      << metro->output();
  auto m = metro->get("/api/v1/deferred/orders/billing/1");
  ASSERT_EQ(m["runs"].size(), 1u) << m.dump();
  EXPECT_EQ(m["runs"][0]["task_id"], first);
  EXPECT_EQ(metro->kill(SIGTERM), 0);
}

TEST_F(CeleryRunTest, WrongCredentialsOrAServerThatIsNotRedisStopMetroRunAtStart) {
  auto protected_redis = std::make_unique<RedisServer>(
      dir / "redis-auth", std::vector<std::string>{"--requirepass", "right-secret"});
  ASSERT_TRUE(protected_redis->start("right-secret")) << protected_redis->log();
  // Something that answers, but not as Redis: an HTTP server.
  auto http_port = metro::test::free_port();
  ChildProcess http(
      {"/usr/bin/python3", "-m", "http.server", std::to_string(http_port), "--bind", "127.0.0.1"},
      dir / "http.log");
  ASSERT_TRUE(wait_until(
      [&] {
        httplib::Client c("127.0.0.1", http_port);
        return static_cast<bool>(c.Get("/"));
      },
      30s));
  for (const auto& [broker, backend, expected] :
       {std::tuple{protected_redis->url(0, ":wrong-secret"),
                   protected_redis->url(1, ":wrong-secret"),
                   std::string("refused the URL's credentials")},
        std::tuple{
            redis->url(0), "redis://127.0.0.1:" + std::to_string(http_port) + "/1",
            std::string("result backend: Redis at 127.0.0.1:" + std::to_string(http_port))}}) {
    auto path = dir / "bad.toml";
    std::ofstream(path) << "[metro]\nledger = \"sqlite://" << (dir / "bad.db").string()
                        << "\"\n[celery]\nbroker = \"" << broker << "\"\nresult_backend = \""
                        << backend
                        << "\"\n[[subscriptions]]\ntopic_name = \"orders\"\n"
                           "subscription_name = \"billing\"\nconnection_string = \""
                        << kUnused
                        << "\"\n  [[subscriptions.handlers]]\n  subject = \"Orders/Created\"\n"
                           "  celery = \"tests.handle\"\n[admin]\nenabled = false\n";
    auto [code, output] = metro::test::run_command(std::string(METRO_BIN) + " run --config " +
                                                   path.string() + " --emulator --emulator-port 0");
    EXPECT_EQ(code, 2) << output;
    EXPECT_NE(output.find("metro run: [celery]: "), std::string::npos) << output;
    EXPECT_NE(output.find(expected), std::string::npos) << output;
    EXPECT_EQ(output.find("wrong-secret"), std::string::npos) << output;
    EXPECT_EQ(output.find("metro running"), std::string::npos) << output;
  }
  // A Redis that is merely down does not stop metro: it runs, and says so.
  auto down = write_config("  celery = \"tests.handle\"\n", {},
                           "redis://127.0.0.1:" + std::to_string(metro::test::free_port()) + "/0",
                           "down.toml");
  MetroRun metro(down, dir, 3);
  EXPECT_TRUE(metro.wait_running()) << metro.output();
  EXPECT_NE(metro.output().find("not reachable yet"), std::string::npos) << metro.output();
  EXPECT_EQ(metro.kill(SIGTERM), 0);
}

}  // namespace
