// `metro deferred list|show|retry|complete|dead-letter`: the deferred-message API from a shell.

#include <iomanip>
#include <iostream>
#include <sstream>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"

namespace metro::cli {
namespace {

using nlohmann::json;

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
  auto line = text.substr(0, text.find('\n'));
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
  table({{"message", m["topic"].get<std::string>() + "/" + m["subscription"].get<std::string>() +
                         " #" + std::to_string(m["sequence_number"].get<std::int64_t>())},
         {"state", m["state"]},
         {"subject", m["subject"]},
         {"correlation id", m["correlation_id"]},
         {"message id", m["message_id"]},
         {"recorded", m["created"]},
         {"updated", m["updated"]},
         {"last error", m["last_error"]}});
  if (m.contains("body")) {
    std::cout << "\nbody" << (m.value("body_truncated", false) ? " (truncated)" : "") << ":\n"
              << (m["body"].is_string() ? m["body"].get<std::string>() : m["body"].dump(2)) << '\n';
  }
  if (m.contains("runs") && !m["runs"].empty()) {
    std::vector<std::vector<std::string>> rows = {
        {"HANDLER", "ATTEMPT", "OUTCOME", "STARTED", "FINISHED", "ERROR"}};
    for (const auto& r : m["runs"]) {
      rows.push_back({r["handler"], std::to_string(r["attempt"].get<int>()), r["outcome"],
                      r["started"], r["finished"].is_null() ? "" : r["finished"].get<std::string>(),
                      clip(r["error"], 60)});
    }
    std::cout << "\nhandler runs:\n";
    table(rows);
  }
}

}  // namespace

int run_deferred(const DeferredCommand& c) {
  httplib::Client client(c.url);
  client.set_connection_timeout(std::chrono::seconds(5));
  client.set_read_timeout(std::chrono::seconds(120));  // A completion waits for Service Bus.
  httplib::Headers headers;
  if (!c.token.empty()) headers.emplace("Authorization", "Bearer " + c.token);

  std::string target;
  if (c.action != "list") {
    target = "/api/v1/deferred/" + escape_path(c.topic) + "/" + escape_path(c.subscription) + "/" +
             std::to_string(c.sequence_number);
  }
  httplib::Result result{nullptr, httplib::Error::Unknown};
  if (c.action == "list") {
    httplib::Params params;
    if (!c.topic.empty()) params.emplace("topic", c.topic);
    if (!c.subscription.empty()) params.emplace("subscription", c.subscription);
    if (!c.state.empty()) params.emplace("state", c.state);
    if (!c.subject.empty()) params.emplace("subject", c.subject);
    if (!c.older_than.empty()) params.emplace("older_than", c.older_than);
    if (!c.after.empty()) params.emplace("after", c.after);
    params.emplace("limit", std::to_string(c.limit));
    result = client.Get("/api/v1/deferred", params, headers);
  } else if (c.action == "show") {
    result = client.Get(target, headers);
  } else {
    std::string body;
    if (c.action == "dead-letter") {
      body = json{{"reason", c.reason}, {"description", c.description}}.dump();
    }
    result = client.Post(target + "/" + c.action, headers, body, "application/json");
  }
  if (!result) {
    std::cerr << "metro deferred: cannot reach " << c.url << ": "
              << httplib::to_string(result.error())
              << " (is metro running with [admin] enabled? --url or METRO_URL)\n";
    return kExitFailure;
  }
  auto body = json::parse(result->body, nullptr, false);
  if (result->status >= 400) {
    std::cerr << "metro deferred " << c.action << ": " << result->status << ": "
              << (body.is_object() ? body.value("error", result->body) : result->body) << '\n';
    return kExitFailure;
  }
  if (c.json) {
    std::cout << (body.is_discarded() ? result->body : body.dump(2)) << '\n';
    return kExitOk;
  }
  if (c.action == "list") {
    std::vector<std::vector<std::string>> rows = {
        {"SEQ", "TOPIC/SUBSCRIPTION", "SUBJECT", "STATE", "AGE", "CORRELATION", "LAST ERROR"}};
    for (const auto& m : body["items"]) {
      rows.push_back({std::to_string(m["sequence_number"].get<std::int64_t>()),
                      m["topic"].get<std::string>() + "/" + m["subscription"].get<std::string>(),
                      clip(m["subject"], 40), m["state"], age(m["age_seconds"].get<double>()),
                      clip(m["correlation_id"], 24), clip(m["last_error"], 50)});
    }
    table(rows);
    if (!body["next"].is_null()) {
      std::cout << "more: --after " << body["next"].get<std::string>() << '\n';
    }
    return kExitOk;
  }
  if (c.action != "show") std::cout << c.action << ": ok\n";
  print_message(body);
  return kExitOk;
}

}  // namespace metro::cli
