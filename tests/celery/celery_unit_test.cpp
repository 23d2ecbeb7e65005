// The Celery part alone, no sockets: Redis URLs and their redaction, the task envelope and its
// list key, Celery's saferepr and Python's float repr, result values, and how outcomes become
// handler results.

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <metro/error.hpp>

#include "../../src/celery/celery_handler.hpp"
#include "../../src/celery/redis_url.hpp"
#include "../../src/celery/task_message.hpp"
#include "../../src/celery/task_meta.hpp"

namespace {

using namespace metro::celery;
using json = nlohmann::json;

std::string unbase64(const std::string& text) {
  std::string out(text.size(), '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  std::size_t padding = text.size() >= 2 && text.substr(text.size() - 2) == "==" ? 2
                        : !text.empty() && text.back() == '='                    ? 1
                                                                                 : 0;
  out.resize(static_cast<std::size_t>(n) - padding);  // EVP_DecodeBlock counts padding as zeros.
  return out;
}

// ---- Redis URLs -------------------------------------------------------------------------------

TEST(RedisUrlTest, ReadsTheFormsCeleryAndRedisPyAccept) {
  auto plain = parse_redis_url("redis://localhost");
  EXPECT_FALSE(plain.tls);
  EXPECT_EQ(plain.host, "localhost");
  EXPECT_EQ(plain.port, 6379);
  EXPECT_EQ(plain.db, 0);
  EXPECT_FALSE(plain.password);

  auto full = parse_redis_url("redis://:p%40ss%3Aword@redis.internal:6380/3");
  EXPECT_EQ(full.host, "redis.internal");
  EXPECT_EQ(full.port, 6380);
  EXPECT_EQ(full.db, 3);
  EXPECT_EQ(full.username, "");
  EXPECT_EQ(full.password, "p@ss:word");

  auto user = parse_redis_url("REDISS://worker:secret@[::1]:6390?db=2&ssl_cert_reqs=CERT_NONE");
  EXPECT_TRUE(user.tls);
  EXPECT_EQ(user.host, "::1");
  EXPECT_EQ(user.port, 6390);
  EXPECT_EQ(user.db, 2);
  EXPECT_EQ(user.username, "worker");
  EXPECT_EQ(user.verify, TlsVerify::kNone);

  auto tls = parse_redis_url(
      "rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false");
  EXPECT_EQ(tls.verify, TlsVerify::kRequired);
  EXPECT_EQ(tls.ca_file, "/etc/ca.pem");
  EXPECT_FALSE(tls.check_hostname);
  EXPECT_EQ(tls.redacted(), "rediss://h:6380/0?ssl_check_hostname=false&ssl_ca_certs=/etc/ca.pem");
  EXPECT_EQ(full.redacted(), "redis://:***@redis.internal:6380/3");
  EXPECT_EQ(user.endpoint(), "[::1]:6390/2");
}

TEST(RedisUrlTest, RefusesWhatItCannotUseAndNeverShowsThePassword) {
  for (const auto* url :
       {"amqp://guest:hunter2@rabbit//", "redis://:hunter2@", "redis://:hunter2@h:0/0",
        "redis://:hunter2@h:99999/0", "redis://:hunter2@h:63a9/0", "redis://:hunter2@h/zero",
        "redis://hunter2@h/0", "redis://:hunter2@h/0?socket_timeout=3",
        "redis://:hunter2@h/0?ssl_cert_reqs=required", "rediss://:hunter2@h/0?ssl_cert_reqs=maybe",
        "redis://:hunter2@h/0#x", "rediss://:hunter2@h/0?ssl_certfile=/c.pem",
        "redis://:hunter2@h o/0", "", "localhost:6379"}) {
    try {
      parse_redis_url(url);
      ADD_FAILURE() << "accepted " << url;
    } catch (const metro::InvalidArgument& e) {
      EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
    }
  }
}

TEST(RedisUrlTest, RedactsThePasswordOfEveryUrlInAText) {
  EXPECT_EQ(redact_url_passwords("broker redis://:s3cret@h:6379/0 and rediss://u:pw@h2/1 done"),
            "broker redis://:***@h:6379/0 and rediss://u:***@h2/1 done");
  EXPECT_EQ(redact_url_passwords("\"amqp://guest:guest@rabbit//\""),
            "\"amqp://guest:***@rabbit//\"");
  EXPECT_EQ(redact_url_passwords("redis://onlysecret@h/0"), "redis://***@h/0");
  // A password with an unencoded '/' or '@' is hidden whole.
  EXPECT_EQ(redact_url_passwords("redis://:a/b@c@h/0"), "redis://:***@h/0");
  EXPECT_EQ(redact_url_passwords("redis://h:6379/0 http://x/y"), "redis://h:6379/0 http://x/y");
  EXPECT_EQ(redact_url_passwords("redis://:@h/0"), "redis://:@h/0");
  EXPECT_EQ(redact_url_passwords("no urls"), "no urls");
}

// ---- the envelope -----------------------------------------------------------------------------

TEST(TaskMessageTest, PrioritiesPickKombusListKeys) {
  EXPECT_EQ(queue_key("celery", 0), "celery");
  EXPECT_EQ(queue_key("celery", 2), "celery");
  EXPECT_EQ(queue_key("celery", 3), std::string("celery\x06\x16") + "3");
  EXPECT_EQ(queue_key("celery", 5), std::string("celery\x06\x16") + "3");
  EXPECT_EQ(queue_key("q", 6), std::string("q\x06\x16") + "6");
  EXPECT_EQ(queue_key("q", 9), std::string("q\x06\x16") + "9");
}

TEST(TaskMessageTest, TheEnvelopeHasCelerysLayoutAndABase64Body) {
  TaskMessage m;
  m.id = "0d6b1c7e-5f2a-4c1b-9a8e-3b7f2e1d4c5a";
  m.task = "myapp.tasks.handle";
  m.queue = "billing";
  m.priority = 4;
  m.kwargs = {{"message", R"({"subject": "order.created", "id": 123, "data": {"amount": 9.5}})"},
              {"topic_name", R"("orders")"},
              {"subscription_name", R"("metro-sub")"},
              {"sequence_number", "42"}};
  m.headers = {{"metro_attempt", "2"}};
  m.origin = "metro1@vm";
  auto e = encode_task_message(m);
  EXPECT_EQ(e.task_id, m.id);
  EXPECT_EQ(e.key, std::string("billing\x06\x16") + "3");
  // Python's separators: `, ` and `: `, and Celery's key order.
  EXPECT_EQ(e.payload.rfind(R"({"body": ")", 0), 0u) << e.payload;
  EXPECT_NE(e.payload.find(R"("content-encoding": "utf-8", "content-type": "application/json", )"
                           R"("headers": {"lang": "py", "task": "myapp.tasks.handle", "id": ")"),
            std::string::npos)
      << e.payload;
  auto envelope = json::parse(e.payload);
  auto h = envelope["headers"];
  EXPECT_EQ(h["root_id"], m.id);
  EXPECT_TRUE(h["parent_id"].is_null());
  EXPECT_TRUE(h["shadow"].is_null());
  EXPECT_TRUE(h["eta"].is_null());
  EXPECT_TRUE(h["expires"].is_null());
  EXPECT_TRUE(h["group"].is_null());
  EXPECT_TRUE(h["group_index"].is_null());
  EXPECT_EQ(h["retries"], 0);
  EXPECT_EQ(h["timelimit"], json::parse("[null, null]"));
  EXPECT_EQ(h["argsrepr"], "()");
  EXPECT_EQ(h["kwargsrepr"],
            "{'message': {'subject': 'order.created', 'id': 123, 'data': {'amount': 9.5}}, "
            "'topic_name': 'orders', 'subscription_name': 'metro-sub', 'sequence_number': 42}");
  EXPECT_EQ(h["origin"], "metro1@vm");
  EXPECT_EQ(h["ignore_result"], false);
  EXPECT_EQ(h["metro_attempt"], 2);
  auto p = envelope["properties"];
  EXPECT_EQ(p["correlation_id"], m.id);
  EXPECT_EQ(p["reply_to"], "");
  EXPECT_EQ(p["delivery_mode"], 2);
  EXPECT_EQ(p["delivery_info"], json::parse(R"({"exchange": "", "routing_key": "billing"})"));
  EXPECT_EQ(p["priority"], 4);
  EXPECT_EQ(p["body_encoding"], "base64");
  EXPECT_EQ(p["delivery_tag"].get<std::string>().size(), 36u);
  EXPECT_NE(p["delivery_tag"], m.id);
  EXPECT_EQ(unbase64(envelope["body"]),
            R"([[], {"message": {"subject": "order.created", "id": 123, "data": {"amount": 9.5}}, )"
            R"("topic_name": "orders", "subscription_name": "metro-sub", "sequence_number": 42}, )"
            R"({"callbacks": null, "errbacks": null, "chain": null, "chord": null}])");
}

TEST(TaskMessageTest, IdsAreFreshVersion4Uuids) {
  auto a = new_task_id();
  auto b = new_task_id();
  EXPECT_NE(a, b);
  ASSERT_EQ(a.size(), 36u);
  EXPECT_EQ(a[14], '4');
  EXPECT_NE(std::string("89ab").find(a[19]), std::string::npos);
  TaskMessage m;
  m.task = "t";
  EXPECT_EQ(encode_task_message(m).task_id.size(), 36u);
}

TEST(TaskMessageTest, NothingAWorkerWouldChokeOnIsProduced) {
  TaskMessage m;
  m.task = "t";
  m.kwargs = {{"message", "{not json"}};
  EXPECT_THROW(encode_task_message(m), metro::InvalidArgument);
  m.kwargs = {{"message", std::string(200, '[') + std::string(200, ']')}};
  EXPECT_THROW(encode_task_message(m), metro::InvalidArgument);  // Deeper than json_bounds.
  m.kwargs = {};
  m.task = "";
  EXPECT_THROW(encode_task_message(m), metro::InvalidArgument);
  m.task = "has space";
  EXPECT_THROW(encode_task_message(m), metro::InvalidArgument);
  m.task = "t";
  m.queue = "";
  EXPECT_THROW(encode_task_message(m), metro::InvalidArgument);
  m.queue = "q";
  m.priority = 10;
  EXPECT_THROW(encode_task_message(m), metro::InvalidArgument);
}

TEST(TaskMessageTest, JsonStringsAreWrittenAsPythonWritesThem) {
  EXPECT_EQ(python_json_string("plain"), R"("plain")");
  EXPECT_EQ(python_json_string("q\"b\\n\n\t\x01"), R"("q\"b\\n\n\t\u0001")");
  EXPECT_EQ(python_json_string("h\xc3\xa9"), R"("h\u00e9")");
  EXPECT_EQ(python_json_string("\xf0\x9f\x98\x80"), R"("\ud83d\ude00")");  // A surrogate pair.
  EXPECT_EQ(python_json_string("bad \xff byte"), R"("bad \ufffd byte")");
}

TEST(TaskMessageTest, SafereprIsCelerys) {
  // Expected strings from Celery 5.2.6's celery.utils.saferepr.saferepr(value, 1024).
  EXPECT_EQ(python_saferepr(R"({"a": {"b": {"c": {"d": 1}}}, "l": [1, [2, [3, [4]]]]})"),
            "{'a': {'b': {'c': {...}}}, 'l': [1, [2, [...]]]}");
  EXPECT_EQ(python_saferepr(
                R"({"it's": "O'Brien", "t": true, "f": false, "n": null, "x": 1e+16, "y": 0.0001, )"
                R"("z": 1e-05, "w": 123456789.0, "u": "h\u00e9\nl"})"),
            "{'it\\'s': 'O\\'Brien', 't': True, 'f': False, 'n': None, 'x': 1e+16, 'y': 0.0001, "
            "'z': 1e-05, 'w': 123456789.0, 'u': 'h\xc3\xa9\nl'}");
  EXPECT_EQ(python_saferepr("[]"), "[]");
  EXPECT_EQ(python_saferepr("{}"), "{}");
  std::string many = "{";
  std::string expected = "{";
  for (int i = 0; i < 60; ++i) {
    auto item = "'k" + std::to_string(i) + "': '" + std::string(30, 'v') + "'";
    many +=
        (i > 0 ? ", " : "") + ("\"k" + std::to_string(i) + "\": \"" + std::string(30, 'v') + "\"");
    if (i < 25) expected += (i > 0 ? ", " : "") + item;
  }
  many += "}";
  expected += ", 'k25': 'v...', ...}";
  EXPECT_EQ(python_saferepr(many), expected);
  std::string words;
  for (int i = 0; i < 300; ++i) words += "word ";
  auto repr = python_saferepr("\"" + words + "\"");
  EXPECT_EQ(repr.size(), 1024u);
  EXPECT_EQ(repr.substr(repr.size() - 12), "ord word...'");
}

TEST(TaskMessageTest, FloatsReadAsPythonsRepr) {
  EXPECT_EQ(python_float(1e16), "1e+16");
  EXPECT_EQ(python_float(1e15), "1000000000000000.0");
  EXPECT_EQ(python_float(0.1), "0.1");
  EXPECT_EQ(python_float(1e-5), "1e-05");
  EXPECT_EQ(python_float(0.0001), "0.0001");
  EXPECT_EQ(python_float(123456789.0), "123456789.0");
  EXPECT_EQ(python_float(1.5e300), "1.5e+300");
  EXPECT_EQ(python_float(-2.5), "-2.5");
  EXPECT_EQ(python_float(100.0), "100.0");
  EXPECT_EQ(python_float(1e22), "1e+22");
  EXPECT_EQ(python_float(5e-324), "5e-324");
  EXPECT_EQ(python_float(0.30000000000000004), "0.30000000000000004");
  EXPECT_EQ(python_float(0.0), "0.0");
}

// ---- result values ------------------------------------------------------------------------------

TEST(TaskMetaTest, ReadsEachStateCeleryWrites) {
  std::string error;
  auto success = parse_task_meta(
      R"({"status": "SUCCESS", "result": {"ok": true, "huge": [1, 2, 3]}, "traceback": null, )"
      R"("children": [], "date_done": "2026-11-30T23:04:30.216750", "task_id": "abc"})",
      error);
  ASSERT_TRUE(success) << error;
  EXPECT_EQ(success->state, TaskState::kSuccess);
  EXPECT_EQ(success->task_id, "abc");
  EXPECT_TRUE(is_ready(success->state));

  auto failure = parse_task_meta(
      R"({"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["boom 42"], )"
      R"("exc_module": "builtins"}, "traceback": "Traceback (most recent call last):\n  File \"t.py\", line 3, in f\n    raise ValueError(\"boom 42\")\nValueError: boom 42\n", )"
      R"("children": [], "date_done": "2026-11-30T23:04:30", "task_id": "abc"})",
      error);
  ASSERT_TRUE(failure) << error;
  EXPECT_EQ(failure->state, TaskState::kFailure);
  EXPECT_EQ(failure->exception_text(), "ValueError: boom 42");
  EXPECT_EQ(failure->exception_module, "builtins");
  EXPECT_EQ(traceback_tail(failure->traceback, 2),
            "raise ValueError(\"boom 42\")\nValueError: boom 42");

  auto retry = parse_task_meta(
      R"({"status": "RETRY", "result": {"exc_type": "Retry", "exc_message": ["Retry in 1s", 7, null]}, )"
      R"("traceback": "tb", "children": [[["abc", null], null]], "date_done": null, "task_id": "abc"})",
      error);
  ASSERT_TRUE(retry) << error;
  EXPECT_EQ(retry->state, TaskState::kRetry);
  EXPECT_FALSE(is_ready(retry->state));
  EXPECT_EQ(retry->exception_message, "Retry in 1s, 7, None");

  auto custom = parse_task_meta(R"({"status": "PROGRESS", "result": {"done": 3}})", error);
  ASSERT_TRUE(custom);
  EXPECT_EQ(custom->state, TaskState::kOther);
  EXPECT_EQ(custom->exception_text(), "PROGRESS");
}

TEST(TaskMetaTest, RefusesWhatIsNotAResultAndBoundsWhatItKeeps) {
  std::string error;
  EXPECT_FALSE(parse_task_meta("", error));
  EXPECT_FALSE(parse_task_meta("[1]", error));
  EXPECT_FALSE(parse_task_meta(R"({"result": 1})", error));
  EXPECT_EQ(error, "the result has no status");
  EXPECT_FALSE(parse_task_meta(R"({"status": "SUCCESS", )", error));
  EXPECT_FALSE(parse_task_meta("{\"status\": \"SUCCESS\", \"result\": " + std::string(100000, '[') +
                                   std::string(100000, ']') + "}",
                               error));
  EXPECT_NE(error.find("nested"), std::string::npos) << error;
  // A prefix (a value too large to read whole) still gives its status.
  auto prefix = parse_task_meta(R"({"status": "SUCCESS", "result": "xxxxxxxx)", error, true);
  ASSERT_TRUE(prefix) << error;
  EXPECT_EQ(prefix->state, TaskState::kSuccess);
  auto big = parse_task_meta(
      R"({"status": "FAILURE", "result": {"exc_type": "E", "exc_message": [")" +
          std::string(100000, 'm') + R"("]}, "traceback": ")" + std::string(100000, 't') + R"("})",
      error);
  ASSERT_TRUE(big) << error;
  EXPECT_EQ(big->exception_message.size(), kMaxExceptionText);
  EXPECT_EQ(big->traceback.size(), kMaxTraceback);
}

// ---- handler results ----------------------------------------------------------------------------

TEST(CeleryHandlerTest, OutcomesBecomeHandlerResults) {
  using Status = TaskOutcome::Status;
  using metro::dispatch::Outcome;
  TaskOutcome o;
  o.task_id = "id-1";
  o.status = Status::kSucceeded;
  EXPECT_EQ(result_of(o, {}).outcome, Outcome::kSuccess);
  o.status = Status::kFailed;
  o.meta.state = TaskState::kFailure;
  o.meta.exception_type = "ValueError";
  o.meta.exception_message = "boom\nforged log line";
  o.meta.traceback =
      "Traceback (most recent call last):\n  File \"t.py\", line 3, in f\n"
      "    raise ValueError(x)\nValueError: boom\n";
  auto r = result_of(o, {});
  EXPECT_EQ(r.outcome, Outcome::kFailure);
  EXPECT_EQ(r.error,
            "Celery task id-1 FAILURE: ValueError: boom forged log line [traceback: File \"t.py\", "
            "line 3, in f | raise ValueError(x)]");
  o.meta.exception_type = "NotRegistered";
  o.meta.exception_message = "tests.nope";
  o.meta.traceback.clear();
  EXPECT_EQ(result_of(o, {}).error,
            "Celery task id-1 FAILURE: the workers have no task registered as tests.nope "
            "(NotRegistered)");
  o.status = Status::kTimedOut;
  o.error = "no outcome from Celery within 5m";
  EXPECT_EQ(result_of(o, {}).outcome, Outcome::kFailure);
  o.status = Status::kUnavailable;
  EXPECT_EQ(result_of(o, {}).outcome, Outcome::kRetry);
  o.status = Status::kClosed;
  EXPECT_EQ(result_of(o, {}).outcome, Outcome::kRetry);
  o.status = Status::kRefused;
  EXPECT_EQ(result_of(o, {}).outcome, Outcome::kFailure);
}

TEST(CeleryHandlerTest, ARunIsOneTaskWithTheOriginalsKeywordArguments) {
  metro::dispatch::Task task;
  task.handler = "my_func";
  task.topic_name = "orders";
  task.subscription_name = "billing";
  task.sequence_number = 9007199254740993;  // Not a double: passed on as written.
  task.correlation_id = "c-1";
  task.attempt = 3;
  task.body = R"({"id": 7})";
  HandlerSpec spec;
  spec.kind = HandlerSpec::Kind::kPython;
  spec.target = "demoproj.demoapp.services.my_func";
  spec.queue = "billing";
  auto m = task_message_for(task, spec);
  EXPECT_EQ(m.task, "metro.run_handler");
  EXPECT_EQ(m.queue, "billing");
  EXPECT_EQ(m.args, std::vector<std::string>{R"("demoproj.demoapp.services.my_func")"});
  ASSERT_EQ(m.kwargs.size(), 4u);
  EXPECT_EQ(m.kwargs[0], (std::pair<std::string, std::string>{"message", R"({"id": 7})"}));
  EXPECT_EQ(m.kwargs[1].first, "topic_name");
  EXPECT_EQ(m.kwargs[2].first, "subscription_name");
  EXPECT_EQ(m.kwargs[3],
            (std::pair<std::string, std::string>{"sequence_number", "9007199254740993"}));
  auto envelope = json::parse(encode_task_message(m).payload);
  EXPECT_EQ(envelope["headers"]["metro_correlation_id"], "c-1");
  EXPECT_EQ(envelope["headers"]["metro_attempt"], 3);
  EXPECT_EQ(envelope["headers"]["metro_handler"], "my_func");
  EXPECT_EQ(envelope["headers"]["argsrepr"], "('demoproj.demoapp.services.my_func',)");
  EXPECT_FALSE(envelope["headers"].contains("traceparent"));  // None: no header.
  // The message's trace context, for the task to continue (self.request.traceparent).
  task.trace_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  envelope = json::parse(encode_task_message(task_message_for(task, spec)).payload);
  EXPECT_EQ(envelope["headers"]["traceparent"], task.trace_parent);

  task.body = "not json \xff";  // Handed over as a string, as exec and http handlers get it.
  spec.kind = HandlerSpec::Kind::kCelery;
  spec.target = "myapp.tasks.handle";
  m = task_message_for(task, spec);
  EXPECT_EQ(m.task, "myapp.tasks.handle");
  EXPECT_TRUE(m.args.empty());
  EXPECT_EQ(m.kwargs[0].second, R"("not json \ufffd")");
}

}  // namespace
