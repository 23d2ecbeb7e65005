#include "json.hpp"

#include <ctime>

#include "../common/json_bounds.hpp"

namespace metro::admin {

using nlohmann::json;

std::string iso_time(std::chrono::system_clock::time_point t) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[40];
  auto n = std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(text + n, sizeof(text) - n, ".%03dZ", static_cast<int>(ms % 1000));
  return text;
}

std::string connection_state(sb::ConnectionState state) {
  switch (state) {
    case sb::ConnectionState::kConnecting:
      return "connecting";
    case sb::ConnectionState::kConnected:
      return "connected";
    case sb::ConnectionState::kDisconnected:
      return "disconnected";
    case sb::ConnectionState::kClosed:
      return "closed";
  }
  return "unknown";
}

json message_json(const ledger::DeferredMessage& m, bool body) {
  auto now = std::chrono::system_clock::now();
  json out = {{"topic", m.key.topic},
              {"subscription", m.key.subscription},
              {"sequence_number", m.key.sequence_number},
              {"generation", m.key.generation},
              {"subject", m.subject},
              {"message_id", m.message_id},
              {"correlation_id", m.correlation_id},
              {"state", std::string(to_string(m.state))},
              {"created", iso_time(m.created)},
              {"updated", iso_time(m.updated)},
              {"age_seconds", std::chrono::duration<double>(now - m.created).count()},
              {"last_error", m.last_error},
              {"trace_parent", m.trace_parent},
              {"failure_group", m.failure_group.empty() ? json() : json(m.failure_group)},
              {"owner", m.owner.empty() ? json() : json(m.owner)},
              {"lease_until",
               m.lease_until.time_since_epoch().count() == 0 ? json() : json(iso_time(m.lease_until))}};
  if (body) {
    // A body is rendered as JSON only within json_bounds (a deeper one would be walked
    // recursively when copied and dumped); otherwise, or when it is not JSON, as text.
    json parsed = json::value_t::discarded;
    if (!json_bounds::check(m.body)) parsed = json::parse(m.body, nullptr, false);
    out["body"] = parsed.is_discarded() ? json(m.body) : std::move(parsed);
    out["body_truncated"] = m.body_truncated;
    out["body_dropped"] = m.body_dropped;  // Completed with completed_rows = "lean".
  }
  return out;
}

json run_json(const ledger::HandlerRun& r) {
  return {{"handler", r.handler},
          {"attempt", r.attempt},
          {"outcome", std::string(to_string(r.outcome))},
          {"started", iso_time(r.started)},
          {"finished", r.finished ? json(iso_time(*r.finished)) : json()},
          {"error", r.error},
          {"task_id", r.task_id.empty() ? json() : json(r.task_id)},
          {"retries", r.retries}};
}

json failure_group_json(const ledger::FailureGroup& g) {
  return {{"id", g.id},
          {"topic", g.topic},
          {"subscription", g.subscription},
          {"handler", g.handler},
          {"error", g.error},
          {"count", g.count},
          {"failed", g.failed},
          {"retrying", g.retrying},
          {"first_seen", iso_time(g.first_seen)},
          {"last_seen", iso_time(g.last_seen)},
          {"sample",
           {{"topic", g.sample.topic},
            {"subscription", g.sample.subscription},
            {"sequence_number", g.sample.sequence_number},
            {"subject", g.sample_subject},
            {"error", g.sample_error}}}};
}

json job_json(const ledger::Job& j) {
  json filter = json::parse(j.filter, nullptr, false);
  json out = {{"id", j.id},
              {"action", std::string(to_string(j.action))},
              {"state", std::string(to_string(j.state))},
              {"filter", filter.is_discarded() ? json(j.filter) : filter},
              {"total", j.total},
              {"done", j.done},
              {"failed", j.failed},
              {"pending", j.total - std::min(j.total, j.done + j.failed)},
              {"created_by", j.created_by},
              {"created", iso_time(j.created)},
              {"updated", iso_time(j.updated)},
              {"finished", j.finished ? json(iso_time(*j.finished)) : json()},
              {"error", j.error}};
  if (j.action == ledger::JobAction::kDeadLetter) {
    out["reason"] = j.reason;
    out["description"] = j.description;
  }
  return out;
}

}  // namespace metro::admin
