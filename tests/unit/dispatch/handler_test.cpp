// Handlers run for real: processes via /bin/sh, HTTP against a cpp-httplib server on port 0.
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <metro/dispatch/handler.hpp>

namespace metro::dispatch {
namespace {

using namespace std::chrono_literals;

Task task() {
  Task t;
  t.handler = "h";
  t.topic_name = "metro-demo";
  t.subscription_name = "sub-metrodemo-metrooj";
  t.sequence_number = 42;
  t.subject = "MetroDemo/Type/GeekJokes";
  t.correlation_id = "corr-1";
  t.body = R"({"subject":"MetroDemo/Type/GeekJokes","joke":"x"})";
  return t;
}

TEST(TaskJson, CarriesWhatTheOriginalGaveItsFunctions) {
  auto json = nlohmann::json::parse(to_json(task()));
  EXPECT_EQ(json["message"]["joke"], "x");
  EXPECT_EQ(json["topic_name"], "metro-demo");
  EXPECT_EQ(json["subscription_name"], "sub-metrodemo-metrooj");
  EXPECT_EQ(json["sequence_number"], 42);
  EXPECT_EQ(json["subject"], "MetroDemo/Type/GeekJokes");
  EXPECT_EQ(json["correlation_id"], "corr-1");
  EXPECT_EQ(json["attempt"], 1);
  auto t = task();
  t.body = "not json \xff";
  EXPECT_TRUE(nlohmann::json::parse(to_json(t))["message"].is_string());
}

Result sh(const std::string& script, std::chrono::milliseconds timeout = 10s) {
  return make_exec_handler({"/bin/sh", "-c", script})->run(task(), timeout);
}

TEST(ExecHandler, ExitCodesDecide) {
  EXPECT_EQ(sh("cat > /dev/null; exit 0").outcome, Outcome::kSuccess);
  auto retry = sh("echo busy >&2; exit 75");
  EXPECT_EQ(retry.outcome, Outcome::kRetry);
  EXPECT_EQ(retry.error, "asked to retry (exit 75): busy");
  auto failure = sh("echo broken >&2; exit 3");
  EXPECT_EQ(failure.outcome, Outcome::kFailure);
  EXPECT_EQ(failure.error, "exited with 3: broken");
}

TEST(ExecHandler, GetsTheTaskOnStdin) {
  // Succeeds only if the JSON on stdin names the sequence number.
  EXPECT_EQ(sh("grep -q '\"sequence_number\":42'").outcome, Outcome::kSuccess);
}

TEST(ExecHandler, ATimeoutKillsTheWholeGroup) {
  auto r = sh("sleep 30 & sleep 30", 300ms);
  EXPECT_EQ(r.outcome, Outcome::kRetry);
  EXPECT_EQ(r.error, "timed out after 300 ms and was killed");
  EXPECT_LT(r.duration, 5s);
}

TEST(ExecHandler, TheExitStatusDecidesNotThePipes) {
  // A background child keeps stdout and stderr open long after the handler exited 0.
  auto r = sh("cat > /dev/null; sleep 20 & exit 0", 10s);
  EXPECT_EQ(r.outcome, Outcome::kSuccess) << r.error;
  EXPECT_LT(r.duration, 5s);
  auto failed = sh("cat > /dev/null; echo why >&2; (sleep 20 >&2 &); exit 4", 10s);
  EXPECT_EQ(failed.outcome, Outcome::kFailure);
  EXPECT_EQ(failed.error, "exited with 4: why");
  EXPECT_LT(failed.duration, 5s);
}

TEST(ExecHandler, AChildThatNeverReadsStdinCannotHoldTheWorker) {
  // A body far over a pipe's 64 KiB, and a handler that does not read it: bounded by the
  // timeout (or by its exit), never a blocking write.
  auto t = task();
  t.body = R"({"subject": "s", "pad": ")" + std::string(4 * 1024 * 1024, 'x') + "\"}";
  auto handler = make_exec_handler({"/bin/sh", "-c", "sleep 30"});
  auto r = handler->run(t, 500ms);
  EXPECT_EQ(r.outcome, Outcome::kRetry);
  EXPECT_LT(r.duration, 5s);
  auto quick = make_exec_handler({"/bin/sh", "-c", "exit 0"})->run(t, 10s);
  EXPECT_EQ(quick.outcome, Outcome::kSuccess) << quick.error;  // It closed stdin: no SIGPIPE.
  auto reads = make_exec_handler({"/bin/sh", "-c", "wc -c >&2; exit 3"})->run(t, 10s);
  EXPECT_EQ(reads.error, "exited with 3: " + std::to_string(to_json(t).size()));
}

TEST(ExecHandler, InterruptEndsTheRunsUnderWay) {
  auto handler = make_exec_handler({"/bin/sh", "-c", "sleep 30 & sleep 30"});
  Result r;
  std::thread run([&] { r = handler->run(task(), 60s); });
  std::this_thread::sleep_for(300ms);
  handler->interrupt();
  run.join();
  EXPECT_EQ(r.outcome, Outcome::kRetry);
  EXPECT_EQ(r.error, "interrupted: metro was stopping");
  EXPECT_LT(r.duration, 10s);
}

TEST(ExecHandler, AMissingCommandFails) {
  auto r = make_exec_handler({"/nonexistent/handler"})->run(task(), 1s);
  EXPECT_EQ(r.outcome, Outcome::kFailure);
  EXPECT_NE(r.error.find("/nonexistent/handler"), std::string::npos);
}

class HttpHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.Post("/ok", [&](const httplib::Request& req, httplib::Response& res) {
      last_body_ = req.body;
      last_correlation_ = req.get_header_value("X-Correlation-Id");
      res.status = 204;
    });
    server_.Post("/busy", [](const httplib::Request&, httplib::Response& res) {
      res.status = 503;
      res.set_content("try later", "text/plain");
    });
    server_.Post("/bad", [](const httplib::Request&, httplib::Response& res) { res.status = 422; });
    server_.Post("/slow", [](const httplib::Request&, httplib::Response& res) {
      std::this_thread::sleep_for(2s);
      res.status = 200;
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([&] { server_.listen_after_bind(); });
    // bind_to_any_port already listens: requests wait in the backlog until the loop runs.
  }
  void TearDown() override {
    server_.stop();
    thread_.join();
  }
  std::string url(const std::string& path) {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::string last_body_;
  std::string last_correlation_;
};

TEST_F(HttpHandlerTest, StatusDecides) {
  auto ok = make_http_handler(url("/ok"))->run(task(), 5s);
  EXPECT_EQ(ok.outcome, Outcome::kSuccess);
  EXPECT_EQ(nlohmann::json::parse(last_body_)["sequence_number"], 42);
  EXPECT_EQ(last_correlation_, "corr-1");
  auto busy = make_http_handler(url("/busy"))->run(task(), 5s);
  EXPECT_EQ(busy.outcome, Outcome::kRetry);
  EXPECT_NE(busy.error.find("503: try later"), std::string::npos) << busy.error;
  EXPECT_EQ(make_http_handler(url("/bad"))->run(task(), 5s).outcome, Outcome::kFailure);
  EXPECT_EQ(make_http_handler(url("/slow"))->run(task(), 300ms).outcome, Outcome::kRetry);
  EXPECT_EQ(make_http_handler("http://127.0.0.1:1/x")->run(task(), 1s).outcome, Outcome::kRetry);
  EXPECT_THROW(make_http_handler("ftp://x"), std::exception);
}

TEST_F(HttpHandlerTest, InterruptCutsTheRequestsUnderWay) {
  auto handler = make_http_handler(url("/slow"));
  Result r;
  std::thread run([&] { r = handler->run(task(), 60s); });
  std::this_thread::sleep_for(300ms);
  handler->interrupt();
  run.join();
  EXPECT_EQ(r.outcome, Outcome::kRetry);
  EXPECT_LT(r.duration, 2s);
  EXPECT_EQ(handler->run(task(), 60s).error, "interrupted: metro was stopping");
}

}  // namespace
}  // namespace metro::dispatch
