#include <nlohmann/json.hpp>

#include <metro/dispatch/handler.hpp>

#include "../common/json_bounds.hpp"

namespace metro::dispatch {

std::string to_json(const Task& task) {
  nlohmann::json message;
  // Bounded before it is parsed: copying or dumping a deeper value would recurse without limit.
  if (json_bounds::check(task.body)) {
    message = task.body;  // Past the bounds: handed over as a string.
  } else {
    message = nlohmann::json::parse(task.body, nullptr, false);
    if (message.is_discarded()) message = task.body;  // Not JSON: handed over as a string.
  }
  nlohmann::json out = nlohmann::json::object();
  out["message"] = std::move(message);
  out["topic_name"] = task.topic_name;
  out["subscription_name"] = task.subscription_name;
  out["sequence_number"] = task.sequence_number;
  out["subject"] = task.subject;
  out["message_id"] = task.message_id;
  out["correlation_id"] = task.correlation_id;
  out["attempt"] = task.attempt;
  out["handler"] = task.handler;
  out["trace_parent"] = task.trace_parent;
  // Invalid UTF-8 in a body is replaced rather than failing the run.
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace metro::dispatch
