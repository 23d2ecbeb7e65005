#include <nlohmann/json.hpp>

#include <metro/dispatch/handler.hpp>

namespace metro::dispatch {

std::string to_json(const Task& task) {
  nlohmann::json message;
  try {
    message = nlohmann::json::parse(task.body);
  } catch (const nlohmann::json::exception&) {
    message = task.body;  // Not JSON: handed over as a string.
  }
  nlohmann::json out = {
      {"message", message},
      {"topic_name", task.topic_name},
      {"subscription_name", task.subscription_name},
      {"sequence_number", task.sequence_number},
      {"subject", task.subject},
      {"message_id", task.message_id},
      {"correlation_id", task.correlation_id},
      {"attempt", task.attempt},
      {"handler", task.handler},
  };
  // Invalid UTF-8 in a body is replaced rather than failing the run.
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace metro::dispatch
