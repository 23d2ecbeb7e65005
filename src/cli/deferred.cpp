// `metro deferred list|show|retry|complete|dead-letter|groups|jobs|job|cancel`: the
// deferred-message API from a shell; retry, complete and dead-letter without a sequence number
// start a bulk job and follow it.

#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "../common/json_bounds.hpp"
#include "commands.hpp"

namespace metro::cli {
namespace {

using nlohmann::json;

/// The most of an answer `metro deferred` reads (a page of 1,000 rows, or a message with its
/// body, is far less).
constexpr std::size_t kMaxResponseBytes = 16 * 1024 * 1024;

/// Text from outside (bodies, subjects, errors) as the terminal should get it: control characters
/// other than newline and tab shown as `\xNN`, never sent to the terminal as escapes.
std::string printable(const std::string& text) {
  constexpr std::string_view kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : text) {
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string escape_path(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof(hex), "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

std::string clip(const std::string& text, std::size_t width) {
  auto line = printable(text.substr(0, text.find('\n')));
  return line.size() <= width ? line : line.substr(0, width - 1) + "…";
}

std::string age(double seconds) {
  std::ostringstream out;
  if (seconds < 60) {
    out << static_cast<long>(seconds) << "s";
  } else if (seconds < 3600) {
    out << static_cast<long>(seconds / 60) << "m";
  } else if (seconds < 86400) {
    out << std::fixed << std::setprecision(1) << seconds / 3600 << "h";
  } else {
    out << std::fixed << std::setprecision(1) << seconds / 86400 << "d";
  }
  return out.str();
}

/// Prints rows as columns padded to their widest cell.
void table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  auto width_of = [](const std::string& s) {
    std::size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80 ? 1 : 0;  // UTF-8 code points
    return n;
  };
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()));
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], width_of(row[i]));
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - width_of(row[i]) + 2, ' ');
    }
    std::cout << line << '\n';
  }
}

void print_message(const json& m) {
  auto field = [&](const char* name) { return printable(m[name].get<std::string>()); };
  table({{"message", field("topic") + "/" + field("subscription") + " #" +
                         std::to_string(m["sequence_number"].get<std::int64_t>())},
         {"state", field("state")},
         {"subject", field("subject")},
         {"correlation id", field("correlation_id")},
         {"message id", field("message_id")},
         {"recorded", field("created")},
         {"updated", field("updated")},
         {"last error", field("last_error")}});
  if (m.value("body_dropped", false)) {
    std::cout << "\nbody: dropped from the ledger when the message completed\n";
  } else if (m.contains("body")) {
    const auto& body = m["body"];
    // metro shows a body too deep to format as text (see json_bounds).
    bool deep = body.is_string() && json_bounds::check(body.get_ref<const std::string&>());
    std::cout << "\nbody" << (m.value("body_truncated", false) ? " (truncated)" : "")
              << (deep ? " (shown as text: nested too deep to format)" : "") << ":\n"
              << printable(body.is_string()
                               ? body.get<std::string>()
                               : body.dump(2, ' ', false, json::error_handler_t::replace))
              << '\n';
  }
  if (m.contains("runs") && !m["runs"].empty()) {
    // Celery runs have a task id (and may have retried themselves): a column when any has one.
    bool tasks = false;
    for (const auto& r : m["runs"]) tasks = tasks || r.value("task_id", json()).is_string();
    std::vector<std::vector<std::string>> rows = {
        {"HANDLER", "ATTEMPT", "OUTCOME", "STARTED", "FINISHED", "ERROR"}};
    if (tasks) rows[0].insert(rows[0].begin() + 3, "TASK ID");
    for (const auto& r : m["runs"]) {
      auto outcome = printable(r["outcome"]);
      if (auto retries = r.value("retries", 0); retries > 0) {
        outcome += " (" + std::to_string(retries) + (retries == 1 ? " retry)" : " retries)");
      }
      rows.push_back({printable(r["handler"]), std::to_string(r["attempt"].get<int>()), outcome,
                      printable(r["started"]),
                      r["finished"].is_null() ? "" : printable(r["finished"]),
                      clip(r["error"], 60)});
      if (tasks) {
        auto id = r.value("task_id", json());
        rows.back().insert(rows.back().begin() + 3, id.is_string() ? printable(id) : "");
      }
    }
    std::cout << "\nhandler runs:\n";
    table(rows);
  }
}

/// The API's answer as a table (list) or a message's fields, body and handler runs.
void print(const DeferredCommand& c, const json& body) {
  if (c.action == "list") {
    std::vector<std::vector<std::string>> rows = {
        {"SEQ", "TOPIC/SUBSCRIPTION", "SUBJECT", "STATE", "AGE", "CORRELATION", "LAST ERROR"}};
    for (const auto& m : body["items"]) {
      rows.push_back(
          {std::to_string(m["sequence_number"].get<std::int64_t>()),
           printable(m["topic"].get<std::string>() + "/" + m["subscription"].get<std::string>()),
           clip(m["subject"], 40), printable(m["state"]), age(m["age_seconds"].get<double>()),
           clip(m["correlation_id"], 24), clip(m["last_error"], 50)});
    }
    table(rows);
    if (!body["next"].is_null()) {
      std::cout << "more: --after " << printable(body["next"].get<std::string>()) << '\n';
    }
    return;
  }
  if (c.action != "show") std::cout << c.action << ": ok\n";
  print_message(body);
}

}  // namespace

namespace {

/// One answer of the API: its status, the text and the JSON (discarded when it is not JSON within
/// json_bounds); nullopt when metro could not be reached or answered too much (said on stderr).
struct Answer {
  int status = 0;
  std::string text;
  json body;
};

std::optional<Answer> call(const DeferredCommand& c, const std::string& method,
                           const std::string& path, const std::string& body = {}) {
  httplib::Client client(c.url);
  client.set_connection_timeout(std::chrono::seconds(5));
  client.set_read_timeout(std::chrono::seconds(60));  // metro answers an action within 20 s.
  httplib::Request request;
  request.method = method;
  request.path = path;
  if (!c.token.empty()) request.set_header("Authorization", "Bearer " + c.token);
  if (!body.empty()) {
    request.body = body;
    request.set_header("Content-Type", "application/json");
  }
  // The answer is read up to a bound: this may be any server, not only metro.
  Answer answer;
  bool too_large = false;
  request.content_receiver = [&](const char* data, std::size_t length, std::uint64_t,
                                 std::uint64_t) {
    if (answer.text.size() + length > kMaxResponseBytes) {
      too_large = true;
      return false;
    }
    answer.text.append(data, length);
    return true;
  };
  auto result = client.send(request);
  if (too_large) {
    std::cerr << "metro deferred " << c.action << ": the answer from " << c.url
              << " is larger than " << kMaxResponseBytes << " bytes\n";
    return std::nullopt;
  }
  if (!result) {
    std::cerr << "metro deferred: cannot reach " << c.url << ": "
              << httplib::to_string(result.error())
              << " (is metro running with [admin] enabled? --url or METRO_URL)\n";
    return std::nullopt;
  }
  answer.status = result->status;
  // Parsed only within json_bounds: the answer carries message bodies, which came from outside.
  answer.body = json_bounds::check(answer.text) ? json(json::value_t::discarded)
                                                : json::parse(answer.text, nullptr, false);
  return answer;
}

/// Prints the API's error; false when the answer is one.
bool ok(const DeferredCommand& c, const Answer& a) {
  if (a.status < 400) return true;
  std::cerr << "metro deferred " << c.action << ": " << a.status << ": "
            << printable(a.body.is_object() && a.body.contains("error") &&
                                 a.body["error"].is_string()
                             ? a.body["error"].get<std::string>()
                             : a.text)
            << '\n';
  return false;
}

std::string query_string(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string out;
  for (std::size_t i = 0; i < params.size(); ++i) {
    out +=
        (i == 0 ? "?" : "&") + escape_path(params[i].first) + "=" + escape_path(params[i].second);
  }
  return out;
}

std::string job_line(const json& j) {
  auto n = [&](const char* name) { return std::to_string(j[name].get<std::size_t>()); };
  return printable(j["action"].get<std::string>()) + ": " + n("done") + "/" + n("total") +
         " done, " + n("failed") + " failed (job " + printable(j["id"].get<std::string>()) + ", " +
         printable(j["state"].get<std::string>()) + ")";
}

void print_job(const json& j) {
  table({{"job", printable(j["id"].get<std::string>())},
         {"action", printable(j["action"].get<std::string>())},
         {"state", printable(j["state"].get<std::string>())},
         {"filter", printable(j["filter"].dump(-1, ' ', false, json::error_handler_t::replace))},
         {"total", std::to_string(j["total"].get<std::size_t>())},
         {"done", std::to_string(j["done"].get<std::size_t>())},
         {"failed", std::to_string(j["failed"].get<std::size_t>())},
         {"by", printable(j["created_by"].get<std::string>())},
         {"created", printable(j["created"].get<std::string>())},
         {"finished", j["finished"].is_null() ? "" : printable(j["finished"].get<std::string>())},
         {"error", printable(j["error"].get<std::string>())}});
  if (j.contains("failures") && !j["failures"].empty()) {
    std::vector<std::vector<std::string>> rows = {{"MESSAGE", "ERROR"}};
    for (const auto& f : j["failures"]) {
      rows.push_back(
          {printable(f["topic"].get<std::string>() + "/" + f["subscription"].get<std::string>() +
                     "#" + std::to_string(f["sequence_number"].get<std::int64_t>())),
           clip(f["error"], 80)});
    }
    std::cout << "\nfailed messages (first 20):\n";
    table(rows);
  }
}

bool finished(const json& job) {
  auto state = job["state"].get<std::string>();
  return state == "completed" || state == "cancelled" || state == "failed";
}

/// A bulk action: the job is created, then followed until it ends (a progress line on a
/// terminal), unless --dry-run or --detach.
int run_bulk(const DeferredCommand& c) {
  json body = json::object();
  if (!c.topic.empty()) body["topic"] = c.topic;
  if (!c.subscription.empty()) body["subscription"] = c.subscription;
  if (!c.state.empty()) body["state"] = c.state;
  if (!c.subject.empty()) body["subject"] = c.subject;
  if (!c.older_than.empty()) body["older_than"] = c.older_than;
  if (!c.group.empty()) body["group"] = c.group;
  if (c.dry_run) body["dry_run"] = true;
  if (c.action == "dead-letter") {
    body["reason"] = c.reason;
    body["description"] = c.description;
  }
  auto created = call(c, "POST", "/api/v1/deferred/" + c.action, body.dump());
  if (!created || !ok(c, *created)) return kExitFailure;
  if (c.json && (c.dry_run || c.detach)) {
    std::cout << created->body.dump(2, ' ', false, json::error_handler_t::replace) << '\n';
    return kExitOk;
  }
  if (c.dry_run) {
    std::cout << c.action << ": " << created->body["count"].get<std::size_t>()
              << " message(s) match (dry run: nothing was done)\n";
    return kExitOk;
  }
  auto job = created->body["job"];
  auto id = job["id"].get<std::string>();
  if (c.detach) {
    std::cout << c.action << ": job " << printable(id) << " started for "
              << job["total"].get<std::size_t>() << " message(s); follow it with: metro deferred "
              << "job " << printable(id) << '\n';
    return kExitOk;
  }
  // Followed until it ends; given up (the job goes on) when it makes no progress for 10 minutes.
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  constexpr auto kStall = std::chrono::minutes(10);
  auto last_change = std::chrono::steady_clock::now();
  std::string last;
  while (!finished(job)) {
    auto line = job_line(job);
    if (line != last) {
      last_change = std::chrono::steady_clock::now();
      if (terminal) std::cout << '\r' << line << "\x1b[K" << std::flush;
      last = line;
    }
    if (std::chrono::steady_clock::now() - last_change > kStall) {
      if (terminal) std::cout << '\n';
      std::cerr << "metro deferred " << c.action << ": job " << printable(id)
                << " made no progress for 10 minutes; it goes on in metro (metro deferred job "
                << printable(id) << ")\n";
      return kExitFailure;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    auto answer = call(c, "GET", "/api/v1/jobs/" + escape_path(id));
    if (!answer || !ok(c, *answer)) return kExitFailure;
    job = answer->body;
  }
  if (terminal) std::cout << '\r' << job_line(job) << "\x1b[K\n";
  if (c.json) {
    std::cout << job.dump(2, ' ', false, json::error_handler_t::replace) << '\n';
  } else {
    print_job(job);
  }
  return job["state"].get<std::string>() == "completed" && job["failed"].get<std::size_t>() == 0
             ? kExitOk
             : kExitFailure;
}

void print_groups(const json& body) {
  std::vector<std::vector<std::string>> rows = {
      {"GROUP", "TOPIC/SUBSCRIPTION", "HANDLER", "COUNT", "LAST SEEN", "ERROR"}};
  for (const auto& g : body["items"]) {
    rows.push_back(
        {printable(g["id"].get<std::string>()),
         printable(g["topic"].get<std::string>() + "/" + g["subscription"].get<std::string>()),
         clip(g["handler"], 30), std::to_string(g["count"].get<std::size_t>()),
         printable(g["last_seen"].get<std::string>()), clip(g["error"], 60)});
  }
  table(rows);
}

void print_jobs(const json& body) {
  std::vector<std::vector<std::string>> rows = {
      {"JOB", "ACTION", "STATE", "DONE", "FAILED", "TOTAL", "BY", "CREATED"}};
  for (const auto& j : body["items"]) {
    rows.push_back({printable(j["id"].get<std::string>()), printable(j["action"]),
                    printable(j["state"]), std::to_string(j["done"].get<std::size_t>()),
                    std::to_string(j["failed"].get<std::size_t>()),
                    std::to_string(j["total"].get<std::size_t>()), clip(j["created_by"], 20),
                    printable(j["created"])});
  }
  table(rows);
}

}  // namespace

int run_deferred(const DeferredCommand& c) {
  if (c.bulk && c.state.empty() && c.subject.empty() && c.older_than.empty() && c.group.empty()) {
    // A forgotten sequence number must not become "every waiting message".
    std::cerr << "metro deferred " << c.action
              << ": give a sequence number, or a filter (--state, --subject, --older-than, --group) "
                 "to act in bulk\n";
    return kExitUsage;
  }
  if (c.bulk) {
    try {
      return run_bulk(c);
    } catch (const json::exception& e) {
      std::cerr << "metro deferred " << c.action << ": the answer is not shaped as the API's ("
                << e.what() << ")\n";
      return kExitFailure;
    }
  }
  std::string method = "GET";
  std::string path;
  std::string body;
  if (c.action == "list") {
    std::vector<std::pair<std::string, std::string>> params;
    if (!c.topic.empty()) params.emplace_back("topic", c.topic);
    if (!c.subscription.empty()) params.emplace_back("subscription", c.subscription);
    if (!c.state.empty()) params.emplace_back("state", c.state);
    if (!c.subject.empty()) params.emplace_back("subject", c.subject);
    if (!c.older_than.empty()) params.emplace_back("older_than", c.older_than);
    if (!c.group.empty()) params.emplace_back("group", c.group);
    if (!c.after.empty()) params.emplace_back("after", c.after);
    params.emplace_back("limit", std::to_string(c.limit));
    path = "/api/v1/deferred" + query_string(params);
  } else if (c.action == "groups") {
    std::vector<std::pair<std::string, std::string>> params;
    if (!c.topic.empty()) params.emplace_back("topic", c.topic);
    if (!c.subscription.empty()) params.emplace_back("subscription", c.subscription);
    path = "/api/v1/failures" + query_string(params);
  } else if (c.action == "jobs") {
    path = "/api/v1/jobs";
  } else if (c.action == "job" || c.action == "cancel") {
    path = "/api/v1/jobs/" + escape_path(c.job_id);
    if (c.action == "cancel") method = "DELETE";
  } else {
    path = "/api/v1/deferred/" + escape_path(c.topic) + "/" + escape_path(c.subscription) + "/" +
           std::to_string(c.sequence_number);
    if (c.action != "show") {
      method = "POST";
      path += "/" + c.action;
    }
    if (c.action == "dead-letter") {
      body = json{{"reason", c.reason}, {"description", c.description}}.dump();
    }
  }
  auto answer = call(c, method, path, body);
  if (!answer || !ok(c, *answer)) return kExitFailure;
  if (c.json) {
    std::cout << (answer->body.is_discarded()
                      ? answer->text
                      : answer->body.dump(2, ' ', false, json::error_handler_t::replace))
              << '\n';
    return kExitOk;
  }
  if (answer->body.is_discarded()) {
    std::cerr << "metro deferred " << c.action << ": the answer is not the API's JSON:\n"
              << answer->text << '\n';
    return kExitFailure;
  }
  try {
    if (c.action == "groups") {
      print_groups(answer->body);
    } else if (c.action == "jobs") {
      print_jobs(answer->body);
    } else if (c.action == "job" || c.action == "cancel") {
      if (c.action == "cancel") std::cout << "cancel: ok\n";
      print_job(answer->body);
    } else {
      print(c, answer->body);
    }
  } catch (const json::exception& e) {
    std::cerr << "metro deferred " << c.action << ": the answer is not shaped as the API's ("
              << e.what() << "):\n"
              << answer->text << '\n';
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace metro::cli
