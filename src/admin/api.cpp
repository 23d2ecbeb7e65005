// The admin API's routes, auth order, JSON shapes, errors and audit lines.

#include "api.hpp"

#include <charconv>
#include <future>

#include <nlohmann/json.hpp>

#include <metro/sb/errors.hpp>

#include "../common/audit.hpp"
#include "../common/json_bounds.hpp"
#include "dashboard.hpp"
#include "json.hpp"
#include "query.hpp"
#include "target.hpp"

namespace metro::admin {

using nlohmann::json;

namespace {

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

Response json_response(int status, const json& body) {
  Response r;
  r.status = status;
  r.body = dump(body);
  return r;
}

std::string name_of(const ledger::MessageKey& key) {
  auto name = key.topic + "/" + key.subscription + "#" + std::to_string(key.sequence_number);
  return key.generation == 0 ? name : name + " (generation " + std::to_string(key.generation) + ")";
}

std::string seconds(std::chrono::milliseconds d) {
  auto s = std::chrono::duration<double>(d).count();
  auto text = std::to_string(s);
  text.erase(text.find_last_not_of('0') + 1);
  if (text.back() == '.') text.pop_back();
  return text + " s";
}

/// A request body as JSON: empty is `{}`; deeper than json_bounds, or not JSON, is nullopt
/// with `why`.
std::optional<json> body_json(const std::string& body, std::string& why) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) return json::object();
  if (auto problem = json_bounds::check(body)) {
    why = "the request body is not acceptable JSON: " + *problem;
    return std::nullopt;
  }
  auto parsed = json::parse(body, nullptr, false);
  if (parsed.is_discarded()) {
    why = "the request body is not JSON";
    return std::nullopt;
  }
  return parsed;
}

/// The string `name` of a JSON object, `fallback` when absent; InvalidArgument when present and
/// not a string.
std::string string_field(const json& object, const char* name, const std::string& fallback) {
  auto it = object.find(name);
  if (it == object.end()) return fallback;
  if (!it->is_string()) {
    throw InvalidArgument(std::string("'") + name + "' must be a string (got " + it->type_name() +
                          ")");
  }
  return it->get<std::string>();
}

/// Runs `f`, turning metro's exceptions into the matching HTTP errors.
template <class F>
Response guarded(F f) {
  try {
    return f();
  } catch (const UnknownMessageError& e) {
    return error_response(404, e.what());
  } catch (const ConflictError& e) {
    return error_response(409, e.what());
  } catch (const InvalidArgument& e) {
    return error_response(400, e.what());
  } catch (const sb::NotFoundError& e) {
    return error_response(404, e.what());
  } catch (const sb::ServiceBusError& e) {
    return error_response(502, std::string("Service Bus: ") + e.what());
  } catch (const std::exception& e) {
    return error_response(500, e.what());
  }
}

/// What an error response says, for the audit line.
std::string error_of(const Response& r) {
  auto body = json::parse(r.body, nullptr, false);
  std::string message = body.is_object() && body.contains("error") && body["error"].is_string()
                            ? body["error"].get<std::string>()
                            : r.body;
  return "error " + std::to_string(r.status) + ": " + message;
}

}  // namespace

std::string Request::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (iequals(key, name)) return value;
  }
  return {};
}

Response error_response(int status, const std::string& message) {
  return json_response(status, {{"error", message}, {"status", status}});
}

struct Api::Call {
  enum class Kind {
    kHealthz,
    kReadyz,
    kMetrics,
    kDashboard,
    kWhoami,
    kList,
    kShow,
    kRetry,
    kComplete,
    kDeadLetter,
    kSubscriptions,
    kPublish,
    kFailures,
    kBulkRetry,
    kBulkComplete,
    kBulkDeadLetter,
    kJobs,
    kJob,
    kCancelJob,
  };
  Kind kind = Kind::kHealthz;
  std::multimap<std::string, std::string> params;
  ledger::MessageKey key;
  std::string job_id;
  Caller caller;

  /// An action on one message (its key is in the path).
  bool action() const {
    return kind == Kind::kRetry || kind == Kind::kComplete || kind == Kind::kDeadLetter;
  }
  bool bulk() const {
    return kind == Kind::kBulkRetry || kind == Kind::kBulkComplete || kind == Kind::kBulkDeadLetter;
  }
  /// Needs an admin token.
  bool acts() const { return action() || bulk() || kind == Kind::kCancelJob; }
  const char* action_name() const {
    switch (kind) {
      case Kind::kRetry:
        return "retry";
      case Kind::kComplete:
        return "complete";
      case Kind::kDeadLetter:
        return "dead-letter";
      case Kind::kBulkRetry:
        return "bulk-retry";
      case Kind::kBulkComplete:
        return "bulk-complete";
      case Kind::kBulkDeadLetter:
        return "bulk-dead-letter";
      case Kind::kCancelJob:
        return "cancel-job";
      default:
        return "publish";
    }
  }
  /// What the audit line names as the `message`.
  std::string target() const {
    if (action()) return name_of(key);
    if (kind == Kind::kCancelJob) return "job:" + job_id;
    return "-";
  }
};

Api::Api(dispatch::Service& service, const config::AdminOptions& options, Limits limits)
    : service_(service), tokens_(options.tokens), limits_(limits) {}

// ---- routing -------------------------------------------------------------------------------

std::optional<Response> Api::check_head(const Request& request) const {
  Call call;
  return route(request, call);
}

std::optional<Response> Api::route(const Request& request, Call& call) const {
  using Kind = Call::Kind;
  const std::string_view target = request.target;
  auto question = target.find('?');
  std::string why;
  auto segments = parse_path(target.substr(0, question), why);
  bool protected_path =
      !segments || (!segments->empty() && ((*segments)[0] == "api" || (*segments)[0] == "metrics"));

  // The token first, before anything about the request is judged.
  if (protected_path) {
    auto authorization = request.header("Authorization");
    auto caller = tokens_.identify(authorization);
    if (!caller) {
      // An action refused for want of a token is still audited (the README's promise).
      if (segments && request.method == "POST") {
        const auto& s = *segments;
        if (s.size() == 7 && s[0] == "api" && s[1] == "v1" && s[2] == "deferred" &&
            (s[6] == "retry" || s[6] == "complete" || s[6] == "dead-letter")) {
          audit("-", s[6], s[3] + "/" + s[4] + "#" + s[5], "denied: no valid token");
        } else if (s.size() == 3 && s[0] == "api" && s[1] == "v1" && s[2] == "publish") {
          audit("-", "publish", "-", "denied: no valid token");
        } else if (s.size() == 4 && s[0] == "api" && s[1] == "v1" && s[2] == "deferred" &&
                   (s[3] == "retry" || s[3] == "complete" || s[3] == "dead-letter")) {
          audit("-", "bulk-" + s[3], "-", "denied: no valid token");
        }
      }
      if (segments && request.method == "DELETE") {
        const auto& s = *segments;
        if (s.size() == 4 && s[0] == "api" && s[1] == "v1" && s[2] == "jobs") {
          audit("-", "cancel-job", "job:" + s[3], "denied: no valid token");
        }
      }
      auto r =
          error_response(401, authorization.empty()
                                  ? "this API needs a bearer token: Authorization: Bearer <token>"
                                  : "the bearer token is not one of this metro's tokens");
      r.headers.emplace_back("WWW-Authenticate", "Bearer");
      return r;
    }
    call.caller = *caller;
  }
  if (!segments) return error_response(400, why);

  const auto& s = *segments;
  const bool api = s.size() >= 2 && s[0] == "api" && s[1] == "v1";
  const char* allow = "GET, HEAD";
  bool found = true;
  if (s.size() == 1 && s[0].empty()) {
    call.kind = Kind::kDashboard;
  } else if (s.size() == 1 && s[0] == "healthz") {
    call.kind = Kind::kHealthz;
  } else if (s.size() == 1 && s[0] == "readyz") {
    call.kind = Kind::kReadyz;
  } else if (s.size() == 1 && s[0] == "metrics") {
    call.kind = Kind::kMetrics;
  } else if (api && s.size() == 3 && s[2] == "whoami") {
    call.kind = Kind::kWhoami;
  } else if (api && s.size() == 3 && s[2] == "deferred") {
    call.kind = Kind::kList;
  } else if (api && s.size() == 3 && s[2] == "subscriptions") {
    call.kind = Kind::kSubscriptions;
  } else if (api && s.size() == 3 && s[2] == "publish") {
    call.kind = Kind::kPublish;
    allow = "POST";
  } else if (api && s.size() == 3 && s[2] == "failures") {
    call.kind = Kind::kFailures;
  } else if (api && s.size() == 4 && s[2] == "deferred" &&
             (s[3] == "retry" || s[3] == "complete" || s[3] == "dead-letter")) {
    call.kind = s[3] == "retry"      ? Kind::kBulkRetry
                : s[3] == "complete" ? Kind::kBulkComplete
                                     : Kind::kBulkDeadLetter;
    allow = "POST";
  } else if (api && s.size() == 3 && s[2] == "jobs") {
    call.kind = Kind::kJobs;
  } else if (api && s.size() == 4 && s[2] == "jobs" && !s[3].empty()) {
    call.kind = request.method == "DELETE" ? Kind::kCancelJob : Kind::kJob;
    call.job_id = s[3];
    allow = "GET, HEAD, DELETE";
  } else if (api && s.size() == 6 && s[2] == "deferred") {
    call.kind = Kind::kShow;
  } else if (api && s.size() == 7 && s[2] == "deferred" &&
             (s[6] == "retry" || s[6] == "complete" || s[6] == "dead-letter")) {
    call.kind = s[6] == "retry"      ? Kind::kRetry
                : s[6] == "complete" ? Kind::kComplete
                                     : Kind::kDeadLetter;
    allow = "POST";
  } else {
    found = false;
  }
  if (!found) {
    return error_response(404, "no route " + request.method + " " +
                                   std::string(target.substr(0, question)) +
                                   " (see /api/v1 in the README)");
  }
  bool allowed = false;
  for (std::string_view rest = allow; !rest.empty();) {
    auto comma = rest.find(", ");
    allowed = allowed || rest.substr(0, comma) == request.method;
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 2);
  }
  if (!allowed) {
    auto r = error_response(405, request.method + " is not allowed here; use " + allow);
    r.headers.emplace_back("Allow", allow);
    return r;
  }

  if (call.kind == Kind::kShow || call.action()) {
    if (s[3].empty() || s[4].empty()) {
      return error_response(400, "the topic and subscription in the path must not be empty");
    }
    std::int64_t sequence = -1;
    const auto& digits = s[5];
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), sequence);
    if (digits.empty() || error != std::errc() || end != digits.data() + digits.size() ||
        sequence < 0 || digits.front() == '-' || digits.front() == '+') {
      return error_response(400, "the sequence number '" + digits +
                                     "' is not a whole number from 0 to 9223372036854775807");
    }
    call.key = canonical({s[3], s[4], sequence});
    // `?generation=N` addresses an earlier message that had the same sequence number (the
    // entity was recreated); without it, the current one.
    auto params = parse_query(
        question == std::string_view::npos ? std::string_view() : target.substr(question + 1), why);
    if (!params) return error_response(400, why);
    for (const auto& [name, value] : *params) {
      if (name != "generation") continue;
      std::int64_t generation = -1;
      auto [gend, gerror] = std::from_chars(value.data(), value.data() + value.size(), generation);
      if (value.empty() || gerror != std::errc() || gend != value.data() + value.size() ||
          generation < 0) {
        return error_response(400, "generation must be a whole number from 0 (the current "
                                   "message) up, got '" + value + "'");
      }
      call.key.generation = generation;
    }
  }
  if (call.acts()) {
    auto target_name = call.target();
    if (tokens_.empty()) {
      audit(call.caller.name, call.action_name(), target_name, "denied: no tokens configured");
      return error_response(403,
                            "actions need an admin token, and this metro has none: add { token = "
                            "\"…\", role = \"admin\" } to [admin] tokens in its config");
    }
    if (call.caller.role != config::Role::kAdmin) {
      audit(call.caller.name, call.action_name(), target_name, "denied: viewer");
      return error_response(403, "the token '" + call.caller.name + "' is a viewer's; " +
                                     call.action_name() + " needs an admin token");
    }
  }
  if (call.kind == Kind::kList || call.kind == Kind::kFailures || call.kind == Kind::kJobs) {
    auto params = parse_query(
        question == std::string_view::npos ? std::string_view() : target.substr(question + 1), why);
    if (!params) return error_response(400, why);
    call.params = std::move(*params);
  }
  return std::nullopt;
}

Lane Api::lane(const Request& request) const {
  Call call;
  if (route(request, call)) return Lane::kInline;  // An error answered at once.
  switch (call.kind) {
    case Call::Kind::kHealthz:
    case Call::Kind::kDashboard:
      return Lane::kInline;
    case Call::Kind::kReadyz:
      return Lane::kProbe;
    default:
      return Lane::kWorker;
  }
}

Response Api::timed_out(const Request& request) const {
  Call call;
  if (route(request, call)) return error_response(504, "the request did not finish in time");
  if (call.kind == Call::Kind::kReadyz) {
    return json_response(
        503, {{"ready", false},
              {"problems",
               {"the readiness checks did not finish within " + seconds(limits_.probe_deadline)}}});
  }
  if (call.bulk()) {
    return error_response(504, std::string(call.action_name()) + " did not finish within " +
                                   seconds(limits_.request_deadline) +
                                   "; a job may have been started: look at /api/v1/jobs before "
                                   "trying again");
  }
  if (call.action() || call.kind == Call::Kind::kPublish) {
    return error_response(504, std::string(call.action_name()) + " did not finish within " +
                                   seconds(limits_.request_deadline) +
                                   "; it may still be carried out: look at the message's state "
                                   "before trying again");
  }
  return error_response(504,
                        "the request did not finish within " + seconds(limits_.request_deadline));
}

Response Api::handle(const Request& request) {
  Call call;
  if (auto early = route(request, call)) return *early;
  return guarded([&] { return run(request, call); });
}

Response Api::run(const Request& request, const Call& call) {
  using Kind = Call::Kind;
  switch (call.kind) {
    case Kind::kHealthz: {
      Response r;
      r.content_type = "text/plain";
      r.body = "ok\n";
      return r;
    }
    case Kind::kDashboard: {
      Response r;
      r.content_type = "text/html; charset=utf-8";
      r.body = std::string(kDashboardHtml);
      return r;
    }
    case Kind::kReadyz:
      return readyz();
    case Kind::kMetrics: {
      Response r;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = metrics_text(service_);
      return r;
    }
    case Kind::kWhoami:
      return json_response(
          200, {{"name", call.caller.name},
                {"role", tokens_.empty() ? "viewer" : std::string(to_string(call.caller.role))},
                {"actions", !tokens_.empty() && call.caller.role == config::Role::kAdmin}});
    case Kind::kList:
      return list(call);
    case Kind::kShow:
      return show(call.key);
    case Kind::kSubscriptions:
      return json_response(200, {{"items", subscriptions()},
                                 {"instance", service_.instance_id()},
                                 {"instances", instances()}});
    case Kind::kPublish:
      return publish(request, call);
    case Kind::kRetry:
    case Kind::kComplete:
    case Kind::kDeadLetter:
      return act(request, call);
    case Kind::kFailures:
      return failures(call);
    case Kind::kBulkRetry:
    case Kind::kBulkComplete:
    case Kind::kBulkDeadLetter: {
      auto r = guarded([&] { return bulk(request, call); });
      if (r.status >= 400) audit(call.caller.name, call.action_name(), "-", error_of(r));
      return r;
    }
    case Kind::kJobs:
      return jobs(call);
    case Kind::kJob:
      return job(call);
    case Kind::kCancelJob:
      return cancel_job(call);
  }
  return error_response(500, "unhandled route");
}

// ---- routes --------------------------------------------------------------------------------

Response Api::readyz() {
  auto readiness = service_.readiness();
  if (readiness.ready) return json_response(200, {{"ready", true}, {"problems", json::array()}});
  std::string why;
  for (const auto& p : readiness.problems) why += (why.empty() ? "" : "; ") + p;
  return json_response(503, {{"error", "not ready: " + why},
                             {"status", 503},
                             {"ready", false},
                             {"problems", readiness.problems}});
}

void Api::canonical_names(ledger::Query& q) const {
  if (q.topic) q.topic = canonical_topic(*q.topic);
  if (q.subscription) {
    for (const auto& sub : service_.config().subscriptions) {
      if (iequals(sub.subscription_name, *q.subscription) &&
          (!q.topic || iequals(sub.topic_name, *q.topic))) {
        q.subscription = sub.subscription_name;
        break;
      }
    }
  }
}

Response Api::list(const Call& call) {
  auto q = parse_list_query(call.params, std::chrono::system_clock::now());
  canonical_names(q);
  auto page = service_.ledger().list(q);
  json items = json::array();
  for (const auto& m : page.items) items.push_back(message_json(m, false));
  return json_response(
      200, {{"items", items}, {"next", page.next ? json(encode_cursor(*page.next)) : json()}});
}

Response Api::show(const ledger::MessageKey& key) {
  auto row = service_.ledger().find(key);
  if (!row) throw UnknownMessageError("no deferred message " + name_of(key) + " is known");
  auto out = message_json(*row, true);
  json runs = json::array();
  for (const auto& r : service_.ledger().runs(key)) runs.push_back(run_json(r));
  out["runs"] = runs;
  return json_response(200, out);
}

void Api::require_open(const ledger::MessageKey& key) {
  auto row = service_.ledger().find(key);
  if (!row) throw UnknownMessageError("no deferred message " + name_of(key) + " is known");
  if (row->state == ledger::State::kCompleted || row->state == ledger::State::kDeadLettered) {
    throw ConflictError(name_of(key) + " is already " + std::string(to_string(row->state)));
  }
}

Response Api::act(const Request& request, const Call& call) {
  const auto& key = call.key;
  bool under_way = false;
  auto r = guarded([&] {
    int status = 200;
    switch (call.kind) {
      case Call::Kind::kRetry:
        service_.retry(key);
        status = 202;
        break;
      case Call::Kind::kComplete: {
        require_open(key);
        // Past the deadline the completion goes on; the message's state shows when it is done.
        if (service_.complete(key, limits_.action_deadline) == dispatch::Settlement::kUnderWay) {
          under_way = true;
          status = 202;
        }
        break;
      }
      default: {
        require_open(key);
        std::string why;
        auto body = body_json(request.body, why);
        if (!body) throw InvalidArgument(why);
        if (!body->is_object()) {
          throw InvalidArgument(
              "expected a JSON object {\"reason\": \"…\", \"description\": \"…\"}");
        }
        auto reason = string_field(*body, "reason", "DeadLetteredByOperator");
        auto description = string_field(*body, "description", "");
        if (service_.dead_letter(key, reason, description, limits_.action_deadline) ==
            dispatch::Settlement::kUnderWay) {
          under_way = true;
          status = 202;
        }
        break;
      }
    }
    auto shown = show(key);
    shown.status = status;
    return shown;
  });
  audit(call.caller.name, call.action_name(), name_of(key),
        r.status >= 400 ? error_of(r)
        : under_way     ? "accepted: under way"
                        : "ok");
  return r;
}

Response Api::publish(const Request& request, const Call& call) {
  std::string why;
  auto body = body_json(request.body, why);
  std::string topic;
  if (body && body->is_object() && body->contains("topic") && (*body)["topic"].is_string()) {
    topic = canonical_topic((*body)["topic"].get<std::string>());
  }
  const auto target = topic.empty() ? std::string("-") : topic;
  if (tokens_.empty()) {
    audit(call.caller.name, "publish", target, "denied: no tokens configured");
    return error_response(403,
                          "actions need an admin token, and this metro has none: add { token = "
                          "\"…\", role = \"admin\" } to [admin] tokens in its config");
  }
  if (call.caller.role != config::Role::kAdmin) {
    audit(call.caller.name, "publish", target, "denied: viewer");
    return error_response(
        403, "the token '" + call.caller.name + "' is a viewer's; publish needs an admin token");
  }
  auto r = guarded([&] {
    constexpr const char* kShape =
        "expected {\"topic\": \"…\", \"body\": <JSON or text>, \"subject\": \"…\" (optional), "
        "\"correlation_id\": \"…\" (optional)}";
    if (!body) throw InvalidArgument(why + "; " + kShape);
    if (!body->is_object() || !body->contains("body")) throw InvalidArgument(kShape);
    if (string_field(*body, "topic", "").empty()) throw InvalidArgument(kShape);
    sb::Message m;
    const auto& content = (*body)["body"];
    m.body = content.is_string() ? content.get<std::string>() : dump(content);
    m.content_type = content.is_string() ? "text/plain" : "application/json";
    if (body->contains("subject")) m.subject = string_field(*body, "subject", "");
    if (body->contains("correlation_id")) {
      m.correlation_id = string_field(*body, "correlation_id", "");
    }
    service_.publish(topic, m);
    return json_response(202, {{"published", true}, {"topic", topic}});
  });
  audit(call.caller.name, "publish", target, r.status >= 400 ? error_of(r) : "ok");
  return r;
}

json Api::subscriptions() {
  json items = json::array();
  auto now = std::chrono::system_clock::now();
  for (const auto& s : service_.subscriptions()) {
    json counts = json::object();
    for (const auto& [state, n] : service_.ledger().counts(s.topic, s.subscription)) {
      counts[std::string(to_string(state))] = n;
    }
    auto oldest = service_.ledger().oldest_deferred(s.topic, s.subscription);
    json handlers = json::array();
    for (const auto& sub : service_.config().subscriptions) {
      if (!iequals(sub.topic_name, s.topic) || !iequals(sub.subscription_name, s.subscription)) {
        continue;
      }
      for (const auto& h : sub.handlers) handlers.push_back(h.name);
    }
    items.push_back(
        {{"topic", s.topic},
         {"subscription", s.subscription},
         {"state", connection_state(s.state)},
         {"state_reason", s.state_reason},
         {"counts", counts},
         {"handlers", handlers},
         {"last_message",
          s.last_message.time_since_epoch().count() == 0 ? json() : json(iso_time(s.last_message))},
         {"oldest_deferred_age_seconds",
          oldest ? json(std::chrono::duration<double>(now - *oldest).count()) : json()}});
  }
  return items;
}

// ---- failure groups and bulk jobs ------------------------------------------------------------

Response Api::failures(const Call& call) {
  ledger::FailureQuery q;
  for (const auto& [name, value] : call.params) {
    if (name == "topic") {
      q.topic = canonical_topic(value);
    } else if (name == "subscription") {
      q.subscription = value;
    } else if (name == "limit") {
      std::size_t limit = 0;
      auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), limit);
      if (value.empty() || error != std::errc() || end != value.data() + value.size() ||
          limit < 1 || limit > 1000) {
        throw InvalidArgument("limit must be a number from 1 to 1000 (got '" + value + "')");
      }
      q.limit = limit;
    }
  }
  if (q.subscription) {
    ledger::Query names;
    names.topic = q.topic;
    names.subscription = q.subscription;
    canonical_names(names);
    q.subscription = names.subscription;
  }
  json items = json::array();
  for (const auto& g : service_.ledger().failure_groups(q)) items.push_back(failure_group_json(g));
  return json_response(200, {{"items", items}});
}

Response Api::bulk(const Request& request, const Call& call) {
  const auto action = call.kind == Call::Kind::kBulkRetry      ? ledger::JobAction::kRetry
                      : call.kind == Call::Kind::kBulkComplete ? ledger::JobAction::kComplete
                                                               : ledger::JobAction::kDeadLetter;
  constexpr const char* kShape =
      "expected a JSON object with the filters of /deferred (\"topic\", \"subscription\", "
      "\"state\", \"subject\", \"older_than\") or a failure \"group\", and \"dry_run\": "
      "true to count without acting";
  std::string why;
  auto body = body_json(request.body, why);
  if (!body) throw InvalidArgument(why + "; " + kShape);
  if (!body->is_object()) throw InvalidArgument(kShape);
  std::multimap<std::string, std::string> params;
  json filter = json::object();
  bool dry_run = false;
  dispatch::JobRequest job;
  job.action = action;
  job.requested_by = call.caller.name;
  for (const auto& [name, value] : body->items()) {
    if (name == "dry_run") {
      if (!value.is_boolean()) throw InvalidArgument("'dry_run' must be true or false");
      dry_run = value.get<bool>();
    } else if (name == "topic" || name == "subscription" || name == "state" || name == "subject" ||
               name == "older_than" || name == "group") {
      params.emplace(name, string_field(*body, name.c_str(), ""));
      filter[name] = value;
    } else if (action == ledger::JobAction::kDeadLetter &&
               (name == "reason" || name == "description")) {
      (name == "reason" ? job.reason : job.description) = string_field(*body, name.c_str(), "");
    } else {
      throw InvalidArgument("unknown field '" + name + "'; " + kShape);
    }
  }
  job.filter = parse_list_query(params, std::chrono::system_clock::now());
  canonical_names(job.filter);
  job.filter_text = dump(filter);
  if (dry_run) {
    return json_response(200, {{"dry_run", true},
                               {"action", std::string(to_string(action))},
                               {"filter", filter},
                               {"count", service_.count_for_job(job)}});
  }
  auto started = service_.start_job(job);
  audit::job_line(call.caller.name, to_string(action), started.id, job.filter_text,
                  "accepted: " + std::to_string(started.total) + " messages");
  return json_response(202, {{"job", job_json(started)}});
}

Response Api::jobs(const Call& call) {
  std::size_t limit = 50;
  for (const auto& [name, value] : call.params) {
    if (name != "limit") continue;
    auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), limit);
    if (value.empty() || error != std::errc() || end != value.data() + value.size() || limit < 1 ||
        limit > 1000) {
      throw InvalidArgument("limit must be a number from 1 to 1000 (got '" + value + "')");
    }
  }
  json items = json::array();
  for (const auto& j : service_.ledger().jobs(limit, false)) items.push_back(job_json(j));
  return json_response(200, {{"items", items}});
}

Response Api::job(const Call& call) {
  auto found = service_.ledger().find_job(call.job_id);
  if (!found) throw UnknownMessageError("no job " + call.job_id + " is known");
  auto out = job_json(*found);
  json failures = json::array();
  for (const auto& item : service_.ledger().job_failures(call.job_id, 20)) {
    failures.push_back({{"topic", item.key.topic},
                        {"subscription", item.key.subscription},
                        {"sequence_number", item.key.sequence_number},
                        {"error", item.error}});
  }
  out["failures"] = failures;
  return json_response(200, out);
}

Response Api::cancel_job(const Call& call) {
  auto r = guarded([&] {
    auto found = service_.ledger().find_job(call.job_id);
    if (!found) throw UnknownMessageError("no job " + call.job_id + " is known");
    if (!service_.cancel_job(call.job_id, call.caller.name)) {
      auto now = service_.ledger().find_job(call.job_id).value_or(*found);
      throw ConflictError("job " + call.job_id + " is already " +
                          std::string(to_string(now.state)));
    }
    return job(call);
  });
  audit(call.caller.name, "cancel-job", call.target(), r.status >= 400 ? error_of(r) : "ok");
  return r;
}

json Api::instances() {
  // The instances sharing the ledger (one with SQLite). A ledger that cannot be read right now
  // leaves the list empty rather than failing the subscriptions' page.
  json items = json::array();
  std::vector<ledger::Instance> all;
  try {
    all = service_.instances();
  } catch (const Error&) {
    return items;
  }
  auto now = std::chrono::system_clock::now();
  for (const auto& i : all) {
    items.push_back({{"id", i.id},
                     {"host", i.host},
                     {"pid", i.pid},
                     {"started", iso_time(i.started)},
                     {"last_heartbeat", iso_time(i.heartbeat)},
                     {"heartbeat_age_seconds",
                      std::max(0.0, std::chrono::duration<double>(now - i.heartbeat).count())},
                     {"in_flight", i.in_flight},
                     {"live", i.live},
                     {"this", i.id == service_.instance_id()}});
  }
  return items;
}

// ---- names ---------------------------------------------------------------------------------

std::string Api::canonical_topic(const std::string& topic) const {
  for (const auto& sub : service_.config().subscriptions) {
    if (iequals(sub.topic_name, topic)) return sub.topic_name;
  }
  return topic;
}

ledger::MessageKey Api::canonical(ledger::MessageKey key) const {
  for (const auto& sub : service_.config().subscriptions) {
    if (iequals(sub.topic_name, key.topic) && iequals(sub.subscription_name, key.subscription)) {
      key.topic = sub.topic_name;
      key.subscription = sub.subscription_name;
      break;
    }
  }
  return key;
}

}  // namespace metro::admin
