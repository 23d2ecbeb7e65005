// metro's Celery producer against real parts: redis-server on a free port and a real Celery worker
// (Debian's python3-celery) running tests/celery/app. Tasks metro sends are run by the worker;
// outcomes come back through the Redis result backend.

#include <atomic>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../../src/celery/celery_handler.hpp"
#include "../../src/celery/client.hpp"
#include "../../src/celery/redis_connection.hpp"
#include "celery_support.hpp"

namespace {

using metro::celery::CeleryHandler;
using metro::celery::Client;
using metro::celery::ClientOptions;
using metro::celery::HandlerSpec;
using metro::celery::TaskOutcome;
using metro::celery::TaskProgress;
using metro::celery::TaskState;
using metro::dispatch::Outcome;
using metro::test::CeleryWorker;
using metro::test::RedisServer;
using metro::test::wait_until;
using json = nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

fs::path test_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("metro-celery-" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

metro::dispatch::Task make_task(std::int64_t sequence_number, std::string body = {}) {
  metro::dispatch::Task task;
  task.handler = "h";
  task.topic_name = "orders";
  task.subscription_name = "billing";
  task.sequence_number = sequence_number;
  task.subject = "Orders/Created";
  task.correlation_id = "corr-" + std::to_string(sequence_number);
  task.attempt = 1;
  task.body = body.empty()
                  ? R"({"subject":"Orders/Created","id":)" + std::to_string(sequence_number) + "}"
                  : std::move(body);
  return task;
}

HandlerSpec python_spec(std::string path, std::string queue = "celery") {
  HandlerSpec spec;
  spec.kind = HandlerSpec::Kind::kPython;
  spec.target = std::move(path);
  spec.queue = std::move(queue);
  return spec;
}

HandlerSpec celery_spec(std::string name, std::string queue = "celery") {
  HandlerSpec spec;
  spec.kind = HandlerSpec::Kind::kCelery;
  spec.target = std::move(name);
  spec.queue = std::move(queue);
  return spec;
}

/// Every record line of `kind` for `sequence_number`.
std::vector<json> records_of(const CeleryWorker& worker, const std::string& kind,
                             std::int64_t sequence_number) {
  std::vector<json> out;
  for (const auto& line : worker.records()) {
    auto record = json::parse(line, nullptr, false);
    if (record.is_object() && record.value("kind", "") == kind &&
        record.value("sequence_number", std::int64_t{-1}) == sequence_number) {
      out.push_back(record);
    }
  }
  return out;
}

/// One Redis and one worker (queues celery and billing) for the suite.
class CeleryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(test_dir("suite"));
    redis_ = new RedisServer(*dir_ / "redis");
    ASSERT_TRUE(redis_->start()) << redis_->log();
    worker_ = new CeleryWorker(*dir_ / "worker", redis_->url(0), redis_->url(1), "celery,billing");
    ASSERT_TRUE(worker_->wait_ready()) << worker_->log();
  }
  static void TearDownTestSuite() {
    delete worker_;
    delete redis_;
    delete dir_;
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "worker log:\n" << worker_->log() << '\n';
  }

  static ClientOptions options() {
    ClientOptions o;
    o.broker = metro::celery::parse_redis_url(redis_->url(0));
    o.result_backend = metro::celery::parse_redis_url(redis_->url(1));
    return o;
  }

  static fs::path* dir_;
  static RedisServer* redis_;
  static CeleryWorker* worker_;
};

fs::path* CeleryTest::dir_ = nullptr;
RedisServer* CeleryTest::redis_ = nullptr;
CeleryWorker* CeleryTest::worker_ = nullptr;

TEST_F(CeleryTest, APlainFunctionRunsThroughTheGenericTaskWithTheFourKeywordArguments) {
  auto client = std::make_shared<Client>(options());
  CeleryHandler handler(client, python_spec("celery_handlers.my_func"));
  // A big integer and non-ASCII text reach the function exactly as published.
  auto run = handler.run_task(
      make_task(101, R"({"subject":"Orders/Created","id":7,"big":123456789012345678901234567890,)"
                     R"("text":"h\u00e9llo w\u00f6rld"})"),
      60s);
  ASSERT_EQ(run.result.outcome, Outcome::kSuccess) << run.result.error;
  EXPECT_EQ(run.task_id.size(), 36u);
  EXPECT_EQ(run.last_state, TaskState::kSuccess);
  auto records = records_of(*worker_, "my_func", 101);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["topic_name"], "orders");
  EXPECT_EQ(records[0]["subscription_name"], "billing");
  EXPECT_EQ(records[0]["message"]["id"], 7);
  EXPECT_EQ(records[0]["message"]["text"], "h\u00e9llo w\u00f6rld");
  bool exact = false;
  for (const auto& line : worker_->records()) {
    exact = exact || line.find("123456789012345678901234567890") != std::string::npos;
  }
  EXPECT_TRUE(exact) << "the big integer was not passed on digit for digit";
}

TEST_F(CeleryTest, AnAsyncFunctionIsAwaited) {
  auto client = std::make_shared<Client>(options());
  CeleryHandler handler(client, python_spec("celery_handlers.async_handler"));
  auto run = handler.run_task(make_task(111), 60s);
  ASSERT_EQ(run.result.outcome, Outcome::kSuccess) << run.result.error;
  EXPECT_EQ(records_of(*worker_, "async_handler", 111).size(), 1u);
}

TEST_F(CeleryTest, ADottedPathThatDoesNotImportFailsNamingThePathAndTheImportError) {
  auto client = std::make_shared<Client>(options());
  for (const auto* path : {"celery_handlers.no_such_function", "no_such_module.handlers.f"}) {
    CeleryHandler handler(client, python_spec(path));
    auto run = handler.run_task(make_task(102), 60s);
    EXPECT_EQ(run.result.outcome, Outcome::kFailure);
    EXPECT_NE(run.result.error.find("ImportError"), std::string::npos) << run.result.error;
    EXPECT_NE(run.result.error.find(path), std::string::npos) << run.result.error;
    EXPECT_EQ(run.result.error.find('\n'), std::string::npos) << "one line: " << run.result.error;
  }
}

TEST_F(CeleryTest, ARegisteredTaskRunsOnItsQueueAndWithAPriority) {
  auto client = std::make_shared<Client>(options());
  auto spec = celery_spec("tests.handle", "billing");
  CeleryHandler on_queue(client, spec);
  auto run = on_queue.run_task(make_task(103), 60s);
  ASSERT_EQ(run.result.outcome, Outcome::kSuccess) << run.result.error;
  spec.priority = 7;  // Pushed to "billing\x06\x166", which the worker also reads.
  CeleryHandler with_priority(client, spec);
  run = with_priority.run_task(make_task(104), 60s);
  ASSERT_EQ(run.result.outcome, Outcome::kSuccess) << run.result.error;
  EXPECT_EQ(records_of(*worker_, "tests.handle", 103).size(), 1u);
  EXPECT_EQ(records_of(*worker_, "tests.handle", 104).size(), 1u);
}

TEST_F(CeleryTest, AnUnknownTaskNameIsAFailedAttemptWithTheReasonAndNoHang) {
  auto client = std::make_shared<Client>(options());
  CeleryHandler handler(client, celery_spec("tests.no_such_task"));
  auto start = std::chrono::steady_clock::now();
  auto run = handler.run_task(make_task(105), 120s);
  EXPECT_EQ(run.result.outcome, Outcome::kFailure);
  EXPECT_NE(run.result.error.find("NotRegistered"), std::string::npos) << run.result.error;
  EXPECT_NE(run.result.error.find("tests.no_such_task"), std::string::npos) << run.result.error;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s);
}

TEST_F(CeleryTest, ATaskThatRaisesIsAFailureWithTypeMessageAndTraceback) {
  auto client = std::make_shared<Client>(options());
  CeleryHandler handler(client, python_spec("celery_handlers.always_fails"));
  auto run = handler.run_task(make_task(106), 60s);
  EXPECT_EQ(run.result.outcome, Outcome::kFailure);
  EXPECT_EQ(run.last_state, TaskState::kFailure);
  EXPECT_NE(run.result.error.find("ValueError: boom 106"), std::string::npos) << run.result.error;
  EXPECT_NE(run.result.error.find("[traceback: "), std::string::npos) << run.result.error;
  EXPECT_NE(run.result.error.find("raise ValueError"), std::string::npos) << run.result.error;
}

TEST_F(CeleryTest, ATaskThatFailsTwiceSucceedsOnTheThirdAttemptEachWithItsOwnTaskId) {
  auto client = std::make_shared<Client>(options());
  CeleryHandler handler(client, python_spec("celery_handlers.fails_twice"));
  std::set<std::string> ids;
  std::vector<Outcome> outcomes;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    auto task = make_task(107);
    task.attempt = attempt;
    auto run = handler.run_task(task, 60s);
    ids.insert(run.task_id);
    outcomes.push_back(run.result.outcome);
    if (attempt < 3) {
      EXPECT_NE(run.result.error.find("RuntimeError: not yet (107)"), std::string::npos)
          << run.result.error;
    }
  }
  EXPECT_EQ(outcomes,
            (std::vector<Outcome>{Outcome::kFailure, Outcome::kFailure, Outcome::kSuccess}));
  EXPECT_EQ(ids.size(), 3u);
}

TEST_F(CeleryTest, ATaskThatRetriesItselfStaysRunningWithItsRetriesThenSucceeds) {
  auto client = std::make_shared<Client>(options());
  CeleryHandler handler(client, celery_spec("tests.retrying"));
  std::mutex mutex;
  std::vector<TaskProgress> steps;
  auto task = make_task(108);
  task.attempt = 4;
  auto run = handler.run_task(task, 60s, [&](const TaskProgress& p) {
    std::lock_guard lock(mutex);
    steps.push_back(p);
  });
  ASSERT_EQ(run.result.outcome, Outcome::kSuccess) << run.result.error;
  EXPECT_EQ(run.retries, 2);
  int retries_seen = 0;
  for (const auto& s : steps) {
    if (s.state == TaskState::kRetry) ++retries_seen;
    EXPECT_EQ(s.task_id, run.task_id);  // self.retry keeps the task id.
  }
  EXPECT_EQ(retries_seen, 2);
  auto records = records_of(*worker_, "tests.retrying", 108);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["retries"], 2);
  auto runs = records_of(*worker_, "tests.retrying.run", 108);
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0]["correlation_id"], "corr-108");  // metro's headers reach self.request.
  EXPECT_EQ(runs[0]["attempt"], 4);
}

TEST_F(CeleryTest, NoOutcomeWithinTheResultTimeoutIsAFailedAttempt) {
  auto client = std::make_shared<Client>(options());
  auto spec = celery_spec("tests.slow");
  spec.result_timeout = 700ms;
  CeleryHandler handler(client, spec);
  auto run = handler.run_task(make_task(109, R"({"seconds": 3})"), 60s);
  EXPECT_EQ(run.result.outcome, Outcome::kFailure);
  EXPECT_NE(run.result.error.find("no outcome from Celery within 700ms"), std::string::npos)
      << run.result.error;
}

TEST_F(CeleryTest, AResultWrittenWithoutANotificationIsFoundByReconciliation) {
  auto o = options();
  o.reconcile_interval = 300ms;
  Client client(o);
  // Nothing consumes this queue: the "worker" is the test, which writes the result key as Celery
  // does but publishes nothing (a notification lost while metro was away).
  std::promise<TaskOutcome> done;
  metro::celery::TaskMessage m;
  m.task = "tests.handle";
  m.queue = "nobody-reads-this";
  auto id = client.submit(m, 60s, [&](const TaskOutcome& outcome) { done.set_value(outcome); });
  auto writer =
      metro::celery::RedisConnection::connect(o.result_backend, metro::celery::Clock::now() + 5s);
  auto reply = writer->command({"SET", "celery-task-meta-" + id,
                                R"({"status": "SUCCESS", "result": 1, "traceback": null, )"
                                R"("children": [], "date_done": "2026-01-01T00:00:00", )"
                                R"("task_id": ")" +
                                    id + R"("})"},
                               metro::celery::Clock::now() + 5s);
  ASSERT_FALSE(reply.is_error()) << reply.text;
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(20s), std::future_status::ready);
  EXPECT_EQ(future.get().status, TaskOutcome::Status::kSucceeded);
  EXPECT_GE(client.stats().reconciled, 1u);
}

TEST_F(CeleryTest, WatchingATaskSentEarlierReadsItsOutcome) {
  Client client(options());
  auto id = metro::celery::new_task_id();
  auto writer = metro::celery::RedisConnection::connect(options().result_backend,
                                                        metro::celery::Clock::now() + 5s);
  writer->command(
      {"SET", "celery-task-meta-" + id,
       R"({"status": "FAILURE", "result": {"exc_type": "KeyError", "exc_message": )"
       R"(["sku"], "exc_module": "builtins"}, "traceback": "Traceback ...\nKeyError: 'sku'\n", )"
       R"("children": [], "date_done": "2026-01-01T00:00:00", "task_id": ")" +
           id + R"("})"},
      metro::celery::Clock::now() + 5s);
  std::promise<TaskOutcome> done;
  client.watch(id, 30s, [&](const TaskOutcome& outcome) { done.set_value(outcome); });
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(20s), std::future_status::ready);
  auto outcome = future.get();
  EXPECT_EQ(outcome.status, TaskOutcome::Status::kFailed);
  EXPECT_EQ(outcome.error, "KeyError: sku");
}

TEST_F(CeleryTest, AResultLargerThanTheReplyBoundIsStillReadByItsStatus) {
  auto o = options();
  o.max_reply_bytes = 4096;
  Client client(o);
  std::promise<TaskOutcome> done;
  metro::celery::TaskMessage m;
  m.task = "tests.handle";
  m.queue = "nobody-reads-this";
  auto id = client.submit(m, 60s, [&](const TaskOutcome& outcome) { done.set_value(outcome); });
  std::string big(20000, 'x');
  auto value = R"({"status": "SUCCESS", "result": ")" + big +
               R"(", "traceback": null, "children": [], "task_id": ")" + id + R"("})";
  auto writer =
      metro::celery::RedisConnection::connect(o.result_backend, metro::celery::Clock::now() + 5s);
  writer->pipeline(
      {{"SET", "celery-task-meta-" + id, value}, {"PUBLISH", "celery-task-meta-" + id, value}},
      metro::celery::Clock::now() + 5s);
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(future.get().status, TaskOutcome::Status::kSucceeded);
}

TEST_F(CeleryTest, TasksSentAfterCloseAndTasksInFlightAtCloseEndClosed) {
  auto client = std::make_shared<Client>(options());
  metro::celery::TaskMessage m;
  m.task = "tests.handle";
  m.queue = "nobody-reads-this";
  std::promise<TaskOutcome> in_flight;
  client->submit(m, 60s, [&](const TaskOutcome& o) { in_flight.set_value(o); });
  client->close();
  auto future = in_flight.get_future();
  ASSERT_EQ(future.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(future.get().status, TaskOutcome::Status::kClosed);
  CeleryHandler handler(client, celery_spec("tests.handle"));
  auto run = handler.run_task(make_task(110), 60s);
  EXPECT_EQ(run.result.outcome, Outcome::kRetry);
  EXPECT_NE(run.result.error.find("closed"), std::string::npos) << run.result.error;
}

TEST_F(CeleryTest, MetroSendsWhatApplyAsyncSends) {
  // The same call made by Celery's own apply_async and by metro, each to a queue nobody reads;
  // the script decodes both envelopes and compares them, ids, times and origin aside.
  auto redis =
      metro::celery::RedisConnection::connect(options().broker, metro::celery::Clock::now() + 5s);
  std::string body = R"({"subject": "order.created", "id": 123, "data": {"amount": 9.5, )"
                     R"("tags": ["a", "b"], "deep": {"deeper": {"deepest": null}}}, "ok": true})";
  auto task = make_task(42, body);
  for (const auto& [kind, spec] :
       {std::pair{std::string("celery"), celery_spec("tests.handle", "compat-metro")},
        std::pair{std::string("python"), python_spec("celery_handlers.my_func", "compat-metro")}}) {
    redis->command({"DEL", "compat-metro", "compat-celery"}, metro::celery::Clock::now() + 5s);
    auto envelope = metro::celery::encode_task_message(metro::celery::task_message_for(task, spec));
    auto reply =
        redis->command({"LPUSH", envelope.key, envelope.payload}, metro::celery::Clock::now() + 5s);
    ASSERT_FALSE(reply.is_error()) << reply.text;
    std::string source = METRO_SOURCE_DIR;
    auto [code, output] = metro::test::run_command(
        "cd " + source + "/tests/celery/app && PYTHONPATH=" + source + "/python:. " +
        "METRO_TEST_BROKER=" + redis_->url(0) + " METRO_TEST_BACKEND=" + redis_->url(1) +
        " /usr/bin/python3 compare_envelopes.py " + kind + " compat-celery compat-metro '" + body +
        "'");
    EXPECT_EQ(code, 0) << kind << ":\n" << output;
  }
}

TEST(CeleryRedisTest, ABrokerThatIsDownMakesTheAttemptRetryableQuickly) {
  ClientOptions o;
  o.broker = metro::celery::parse_redis_url(
      "redis://127.0.0.1:" + std::to_string(metro::test::free_port()) + "/0");
  o.result_backend = o.broker;
  o.connect_timeout = 2s;
  auto client = std::make_shared<Client>(o);
  EXPECT_NE(client->verify(), "");  // Unreachable is not an error at start, but it is said.
  CeleryHandler handler(client, celery_spec("tests.handle"));
  auto start = std::chrono::steady_clock::now();
  auto run = handler.run_task(make_task(201), 60s);
  EXPECT_EQ(run.result.outcome, Outcome::kRetry);
  EXPECT_NE(run.result.error.find("cannot connect"), std::string::npos) << run.result.error;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 15s);
}

TEST(CeleryRedisTest, AWrongOrMissingRedisPasswordIsAClearError) {
  auto dir = test_dir("password");
  RedisServer redis(dir, {"--requirepass", "right-secret"});
  ASSERT_TRUE(redis.start("right-secret")) << redis.log();
  for (const auto& [userinfo, expected] :
       {std::pair{std::string(":wrong-secret"), std::string("refused the URL's credentials")},
        std::pair{std::string(), std::string("wants a password and the URL has none")}}) {
    ClientOptions o;
    o.broker = metro::celery::parse_redis_url(redis.url(0, userinfo));
    o.result_backend = o.broker;
    auto client = std::make_shared<Client>(o);
    try {
      client->verify();
      ADD_FAILURE() << "verify() accepted " << userinfo;
    } catch (const metro::celery::RedisAuthError& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("wrong-secret"), std::string::npos) << e.what();
    }
    CeleryHandler handler(client, celery_spec("tests.handle"));
    auto run = handler.run_task(make_task(202), 60s);
    EXPECT_EQ(run.result.outcome, Outcome::kFailure) << run.result.error;
    EXPECT_NE(run.result.error.find(expected), std::string::npos) << run.result.error;
  }
  ClientOptions right;
  right.broker = metro::celery::parse_redis_url(redis.url(0, ":right-secret"));
  right.result_backend = right.broker;
  EXPECT_EQ(Client(right).verify(), "");
}

TEST(CeleryRedisTest, RedissWithTheServersCaWorksAndAnUntrustedCertificateIsRefused) {
  auto dir = test_dir("tls");
  auto [code, output] = metro::test::run_command(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      (dir / "key.pem").string() + " -out " + (dir / "cert.pem").string());
  ASSERT_EQ(code, 0) << output;
  auto port = metro::test::free_port();
  metro::test::ChildProcess server(
      {"redis-server", "--port", "0", "--bind", "127.0.0.1", "--tls-port", std::to_string(port),
       "--tls-cert-file", (dir / "cert.pem").string(), "--tls-key-file", (dir / "key.pem").string(),
       "--tls-auth-clients", "no", "--save", "", "--dir", dir.string()},
      dir / "redis.log");
  auto url = "rediss://127.0.0.1:" + std::to_string(port) +
             "/0?ssl_cert_reqs=required&ssl_ca_certs=" + (dir / "cert.pem").string();
  ClientOptions o;
  o.broker = metro::celery::parse_redis_url(url);
  o.result_backend = o.broker;
  ASSERT_TRUE(wait_until(
      [&] {
        try {
          return Client(o).verify().empty();
        } catch (const metro::Error&) {
          return false;
        }
      },
      30s))
      << metro::test::read_text(dir / "redis.log");
  // A whole round trip over TLS: the test writes the outcome as a worker would.
  Client client(o);
  std::promise<TaskOutcome> done;
  metro::celery::TaskMessage m;
  m.task = "tests.handle";
  m.queue = "nobody-reads-this";
  auto id = client.submit(m, 60s, [&](const TaskOutcome& outcome) { done.set_value(outcome); });
  auto writer = metro::celery::RedisConnection::connect(o.broker, metro::celery::Clock::now() + 5s);
  auto queued = writer->command({"LLEN", "nobody-reads-this"}, metro::celery::Clock::now() + 5s);
  EXPECT_EQ(queued.integer, 1);
  auto meta = R"({"status": "SUCCESS", "result": null, "task_id": ")" + id + R"("})";
  writer->pipeline(
      {{"SET", "celery-task-meta-" + id, meta}, {"PUBLISH", "celery-task-meta-" + id, meta}},
      metro::celery::Clock::now() + 5s);
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(20s), std::future_status::ready);
  EXPECT_EQ(future.get().status, TaskOutcome::Status::kSucceeded);

  ClientOptions untrusted;  // The system's CAs do not know the self-signed certificate.
  untrusted.broker =
      metro::celery::parse_redis_url("rediss://127.0.0.1:" + std::to_string(port) + "/0");
  untrusted.result_backend = untrusted.broker;
  try {
    Client(untrusted).verify();
    ADD_FAILURE() << "an untrusted certificate was accepted";
  } catch (const metro::celery::RedisError& e) {
    EXPECT_FALSE(e.is_transient());
    EXPECT_NE(std::string(e.what()).find("certificate was not accepted"), std::string::npos)
        << e.what();
  }
}

TEST(CeleryRedisTest, RedisKilledAndRestartedMidStreamLosesNothing) {
  auto dir = test_dir("restart");
  // appendfsync always: what Redis acknowledged survives its kill -9, as on a durable broker.
  RedisServer redis(dir / "redis", {"--appendonly", "yes", "--appendfsync", "always"});
  ASSERT_TRUE(redis.start()) << redis.log();
  auto worker = std::make_unique<CeleryWorker>(dir / "worker", redis.url(0), redis.url(1));
  ASSERT_TRUE(worker->wait_ready()) << worker->log();
  ClientOptions o;
  o.broker = metro::celery::parse_redis_url(redis.url(0));
  o.result_backend = metro::celery::parse_redis_url(redis.url(1));
  o.reconcile_interval = 1s;
  o.min_backoff = 50ms;
  o.max_backoff = 500ms;
  auto client = std::make_shared<Client>(o);
  auto spec = python_spec("celery_handlers.my_func");
  spec.result_timeout = 10s;  // A task lost with its worker is tried again after this.
  CeleryHandler handler(client, spec);

  // Each message is handled as metro's retry policy would: a failed or unsent attempt is tried
  // again with a new task id, until one succeeds.
  constexpr int kMessages = 40;
  std::atomic<int> next{0};
  std::atomic<int> succeeded{0};
  std::atomic<int> attempts{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < kMessages; i = next++) {
        for (int attempt = 1; attempt <= 30; ++attempt) {
          auto task = make_task(1000 + i);
          task.attempt = attempt;
          ++attempts;
          auto run = handler.run_task(task, 20s);
          if (run.result.outcome == Outcome::kSuccess) {
            ++succeeded;
            break;
          }
          std::this_thread::sleep_for(200ms);
        }
      }
    });
  }
  ASSERT_TRUE(wait_until([&] { return succeeded.load() >= 10; }, 60s)) << worker->log();
  // Redis dies mid-stream, and its worker with it: Celery 5.2's worker does not always consume
  // again after its broker restarts, so the restart brings a fresh one, as a supervisor would.
  redis.kill9();
  worker->kill(SIGKILL);
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(redis.start()) << redis.log();
  worker = std::make_unique<CeleryWorker>(dir / "worker", redis.url(0), redis.url(1));
  ASSERT_TRUE(worker->wait_ready()) << worker->log();
  for (auto& t : threads) t.join();
  EXPECT_EQ(succeeded.load(), kMessages) << worker->log();
  for (int i = 0; i < kMessages; ++i) {
    EXPECT_GE(records_of(*worker, "my_func", 1000 + i).size(), 1u) << "message " << 1000 + i;
  }
  EXPECT_GE(client->stats().reconnects, 1u);
  std::cout << "attempts for " << kMessages << " messages: " << attempts.load() << '\n';
}

TEST(CeleryRedisTest, AWorkerKilledMidTaskTimesTheAttemptOutAndTheNextAttemptRuns) {
  auto dir = test_dir("worker-kill");
  RedisServer redis(dir / "redis");
  ASSERT_TRUE(redis.start()) << redis.log();
  auto worker = std::make_unique<CeleryWorker>(dir / "worker", redis.url(0), redis.url(1));
  ASSERT_TRUE(worker->wait_ready()) << worker->log();
  ClientOptions o;
  o.broker = metro::celery::parse_redis_url(redis.url(0));
  o.result_backend = metro::celery::parse_redis_url(redis.url(1));
  auto client = std::make_shared<Client>(o);
  auto spec = celery_spec("tests.slow");
  spec.result_timeout = 4s;
  CeleryHandler handler(client, spec);
  std::vector<TaskState> states;
  std::mutex mutex;
  auto first = std::async(std::launch::async, [&] {
    return handler.run_task(make_task(301, R"({"seconds": 30})"), 60s, [&](const TaskProgress& p) {
      std::lock_guard lock(mutex);
      states.push_back(p.state);
    });
  });
  ASSERT_TRUE(wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return !states.empty() && states.back() == TaskState::kStarted;
      },
      30s));
  worker->kill(SIGKILL);  // Celery acks early: the message is gone with the worker.
  auto run = first.get();
  EXPECT_EQ(run.result.outcome, Outcome::kFailure);
  EXPECT_NE(run.result.error.find("last state STARTED"), std::string::npos) << run.result.error;
  worker = std::make_unique<CeleryWorker>(dir / "worker2", redis.url(0), redis.url(1));
  ASSERT_TRUE(worker->wait_ready()) << worker->log();
  auto task = make_task(301, R"({"seconds": 0.1})");
  task.attempt = 2;
  run = handler.run_task(task, 60s);
  EXPECT_EQ(run.result.outcome, Outcome::kSuccess) << run.result.error;
}

}  // namespace
