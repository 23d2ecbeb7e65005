// `metro deferred list|show|retry|complete|dead-letter`: the deferred-message API from a shell.

#include <iomanip>
#include <iostream>
#include <sstream>

#include <httplib.h>
#include <nlohmann/json.hpp>

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
  if (m.contains("body")) {
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

int run_deferred(const DeferredCommand& c) {
  httplib::Client client(c.url);
  client.set_connection_timeout(std::chrono::seconds(5));
  client.set_read_timeout(std::chrono::seconds(60));  // metro answers an action within 20 s.

  httplib::Request request;
  request.method = c.action == "list" || c.action == "show" ? "GET" : "POST";
  if (!c.token.empty()) request.set_header("Authorization", "Bearer " + c.token);
  if (c.action == "list") {
    std::vector<std::pair<std::string, std::string>> params;
    if (!c.topic.empty()) params.emplace_back("topic", c.topic);
    if (!c.subscription.empty()) params.emplace_back("subscription", c.subscription);
    if (!c.state.empty()) params.emplace_back("state", c.state);
    if (!c.subject.empty()) params.emplace_back("subject", c.subject);
    if (!c.older_than.empty()) params.emplace_back("older_than", c.older_than);
    if (!c.after.empty()) params.emplace_back("after", c.after);
    params.emplace_back("limit", std::to_string(c.limit));
    request.path = "/api/v1/deferred";
    for (std::size_t i = 0; i < params.size(); ++i) {
      request.path +=
          (i == 0 ? "?" : "&") + escape_path(params[i].first) + "=" + escape_path(params[i].second);
    }
  } else {
    request.path = "/api/v1/deferred/" + escape_path(c.topic) + "/" + escape_path(c.subscription) +
                   "/" + std::to_string(c.sequence_number);
    if (c.action != "show") request.path += "/" + c.action;
  }
  if (c.action == "dead-letter") {
    request.body = json{{"reason", c.reason}, {"description", c.description}}.dump();
    request.set_header("Content-Type", "application/json");
  }
  // The answer is read up to a bound: this may be any server, not only metro.
  std::string text;
  bool too_large = false;
  request.content_receiver = [&](const char* data, std::size_t length, std::uint64_t,
                                 std::uint64_t) {
    if (text.size() + length > kMaxResponseBytes) {
      too_large = true;
      return false;
    }
    text.append(data, length);
    return true;
  };
  auto result = client.send(request);
  if (too_large) {
    std::cerr << "metro deferred " << c.action << ": the answer from " << c.url
              << " is larger than " << kMaxResponseBytes << " bytes\n";
    return kExitFailure;
  }
  if (!result) {
    std::cerr << "metro deferred: cannot reach " << c.url << ": "
              << httplib::to_string(result.error())
              << " (is metro running with [admin] enabled? --url or METRO_URL)\n";
    return kExitFailure;
  }
  // Parsed only within json_bounds: the answer carries message bodies, which came from outside.
  auto body =
      json_bounds::check(text) ? json(json::value_t::discarded) : json::parse(text, nullptr, false);
  if (result->status >= 400) {
    std::cerr << "metro deferred " << c.action << ": " << result->status << ": "
              << (body.is_object() && body.contains("error") && body["error"].is_string()
                      ? body["error"].get<std::string>()
                      : text)
              << '\n';
    return kExitFailure;
  }
  if (c.json) {
    std::cout << (body.is_discarded() ? text
                                      : body.dump(2, ' ', false, json::error_handler_t::replace))
              << '\n';
    return kExitOk;
  }
  if (body.is_discarded()) {
    std::cerr << "metro deferred " << c.action << ": the answer is not the API's JSON:\n"
              << text << '\n';
    return kExitFailure;
  }
  try {
    print(c, body);
  } catch (const json::exception& e) {
    std::cerr << "metro deferred " << c.action << ": the answer is not shaped as the API's ("
              << e.what() << "):\n"
              << text << '\n';
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace metro::cli
