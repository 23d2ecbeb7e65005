// python and celery handlers: a dispatch::Task becomes a Celery task message, its outcome a
// dispatch::Result.

#include "celery_handler.hpp"

#include <vector>

#include <nlohmann/json.hpp>

#include <metro/error.hpp>

#include "../common/json_bounds.hpp"

namespace metro::celery {
namespace {

/// One line, no control characters: task exceptions are outside input, and errors reach logs.
std::string one_line(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7f) ? ' ' : c;
  }
  return out;
}

std::string failure_text(const TaskOutcome& outcome) {
  const auto& meta = outcome.meta;
  std::string out =
      "Celery task " + outcome.task_id + " " + std::string(to_string(meta.state)) + ": ";
  if (meta.exception_type == "NotRegistered") {
    out += "the workers have no task registered as " + one_line(meta.exception_message) +
           " (NotRegistered)";
  } else {
    out += one_line(meta.exception_text());
  }
  if (outcome.retries > 0) out += " after " + std::to_string(outcome.retries) + " retries";
  // The frames nearest the error: not the "Traceback (most recent call last):" header, and not
  // the last line, which repeats the exception.
  std::vector<std::string> frames;
  std::string tail = traceback_tail(meta.traceback, 5);
  for (std::size_t start = 0; start <= tail.size();) {
    auto end = tail.find('\n', start);
    if (end == std::string::npos) end = tail.size();
    auto line = tail.substr(start, end - start);
    if (!line.empty() && line.rfind("Traceback (", 0) != 0) frames.push_back(line);
    start = end + 1;
  }
  if (!frames.empty() && !meta.exception_type.empty() &&
      frames.back().rfind(meta.exception_type, 0) == 0) {
    frames.pop_back();
  }
  if (frames.size() > 3) frames.erase(frames.begin(), frames.end() - 3);
  if (!frames.empty()) {
    std::string joined;
    for (const auto& f : frames) joined += (joined.empty() ? "" : " | ") + f;
    out += " [traceback: " + one_line(joined) + "]";
  }
  return out;
}

}  // namespace

TaskMessage task_message_for(const dispatch::Task& task, const HandlerSpec& spec) {
  TaskMessage m;
  m.id = new_task_id();
  m.queue = spec.queue;
  m.priority = spec.priority;
  if (spec.kind == HandlerSpec::Kind::kPython) {
    m.task = std::string(kRunHandlerTask);
    m.args.push_back(python_json_string(spec.target));
  } else {
    m.task = spec.target;
  }
  // The body as published when it is JSON (so the worker decodes exactly what was sent), else
  // the body as a string, as the other handler kinds get it.
  bool json = !json_bounds::check(task.body) && nlohmann::json::accept(task.body);
  m.kwargs = {{"message", json ? task.body : python_json_string(task.body)},
              {"topic_name", python_json_string(task.topic_name)},
              {"subscription_name", python_json_string(task.subscription_name)},
              {"sequence_number", std::to_string(task.sequence_number)}};
  m.headers = {{"metro_correlation_id", python_json_string(task.correlation_id)},
               {"metro_attempt", std::to_string(task.attempt)},
               {"metro_handler", python_json_string(task.handler)}};
  // The W3C trace context, for the task to continue (`self.request.traceparent`).
  if (!task.trace_parent.empty()) {
    m.headers.emplace_back("traceparent", python_json_string(task.trace_parent));
  }
  return m;
}

dispatch::Result result_of(const TaskOutcome& outcome, std::chrono::milliseconds duration) {
  using Status = TaskOutcome::Status;
  switch (outcome.status) {
    case Status::kSucceeded:
      return {dispatch::Outcome::kSuccess, {}, duration};
    case Status::kFailed:
      return {dispatch::Outcome::kFailure, failure_text(outcome), duration};
    case Status::kTimedOut:
      return {dispatch::Outcome::kFailure, one_line(outcome.error), duration};
    case Status::kUnavailable:
    case Status::kClosed:
      return {dispatch::Outcome::kRetry, "Celery task not sent: " + one_line(outcome.error),
              duration};
    case Status::kRefused:
      return {dispatch::Outcome::kFailure, "Celery task not sent: " + one_line(outcome.error),
              duration};
  }
  return {dispatch::Outcome::kFailure, one_line(outcome.error), duration};
}

CeleryHandler::CeleryHandler(std::shared_ptr<Client> client, HandlerSpec spec)
    : client_(std::move(client)), spec_(std::move(spec)) {
  if (!client_) throw InvalidArgument("a Celery handler needs a Celery client");
}

dispatch::Result CeleryHandler::run(const dispatch::Task& task, std::chrono::milliseconds timeout) {
  return run_task(task, timeout).result;
}

CeleryRun CeleryHandler::run_task(const dispatch::Task& task, std::chrono::milliseconds timeout,
                                  ProgressCallback progress) {
  auto start = std::chrono::steady_clock::now();
  CeleryRun run;
  TaskMessage message;
  try {
    message = task_message_for(task, spec_);
  } catch (const Error& e) {
    run.result = {dispatch::Outcome::kRetry, std::string("Celery task not sent: ") + e.what(), {}};
    return run;
  }
  auto outcome =
      client_->call(message, spec_.result_timeout.value_or(timeout), std::move(progress));
  run.task_id = outcome.task_id;
  run.retries = outcome.retries;
  run.last_state = outcome.meta.state;
  run.result = result_of(outcome, std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now() - start));
  return run;
}

void CeleryHandler::start(const dispatch::Task& task, std::chrono::milliseconds timeout,
                          std::shared_ptr<dispatch::RunObserver> observer) {
  auto began = std::chrono::steady_clock::now();
  auto done = [observer, began](const TaskOutcome& outcome) {
    if (outcome.status == TaskOutcome::Status::kClosed && outcome.sent) {
      observer->abandoned();  // It goes on on the workers: the next start reads its outcome.
      return;
    }
    auto result = result_of(outcome, std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - began));
    if (outcome.status == TaskOutcome::Status::kUnavailable && outcome.sent) {
      // A task picked up after a restart whose result backend cannot be read yet.
      result.error = "the outcome of Celery task " + outcome.task_id +
                     " cannot be read now: " + one_line(outcome.error);
    }
    result.task_id = outcome.task_id;
    result.retries = outcome.retries;
    observer->finished(std::move(result));
  };
  auto progress = [observer](const TaskProgress& step) {
    if (step.state == TaskState::kRetry) observer->progressed(step.retries);
  };
  auto result_timeout = spec_.result_timeout.value_or(timeout);
  if (!task.resume_task_id.empty()) {
    client_->watch(task.resume_task_id, result_timeout, std::move(done), std::move(progress));
    return;
  }
  TaskMessage message;
  try {
    message = task_message_for(task, spec_);
  } catch (const Error& e) {
    observer->finished(
        {dispatch::Outcome::kRetry, std::string("Celery task not sent: ") + e.what(), {}});
    return;
  }
  observer->sending(message.id);  // Recorded before the task can run.
  client_->submit(message, result_timeout, std::move(done), std::move(progress));
}

void CeleryHandler::interrupt() { client_->close(); }

CeleryHandlers::CeleryHandlers(const config::CeleryOptions& celery)
    : CeleryHandlers(client_options(celery)) {}

CeleryHandlers::CeleryHandlers(ClientOptions options)
    : client_(std::make_shared<Client>(std::move(options))) {}

std::string CeleryHandlers::verify() { return client_->verify(); }

std::unique_ptr<dispatch::Handler> CeleryHandlers::make(const config::SubscriptionOptions&,
                                                        const config::HandlerOptions& handler) {
  return std::make_unique<CeleryHandler>(client_, handler_spec(handler));
}

std::string CeleryHandlers::metrics() const {
  auto s = client_->stats();
  std::string out;
  auto header = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  header("metro_celery_tasks_sent_total", "counter", "Celery tasks pushed to the broker.");
  out += "metro_celery_tasks_sent_total " + std::to_string(s.sent) + "\n";
  header("metro_celery_task_outcomes_total", "counter",
         "Celery task outcomes: SUCCESS, FAILURE, REVOKED, timed_out (no outcome within "
         "result_timeout), not_sent (the broker or result backend could not be reached, or "
         "refused).");
  for (const auto& [state, n] :
       {std::pair{"SUCCESS", s.succeeded}, std::pair{"FAILURE", s.failed},
        std::pair{"REVOKED", s.revoked}, std::pair{"timed_out", s.timed_out},
        std::pair{"not_sent", s.unavailable}}) {
    out += std::string("metro_celery_task_outcomes_total{state=\"") + state + "\"} " +
           std::to_string(n) + "\n";
  }
  header("metro_celery_task_retries_total", "counter",
         "RETRY states seen (tasks that retried themselves).");
  out += "metro_celery_task_retries_total " + std::to_string(s.retries_seen) + "\n";
  header("metro_celery_tasks_in_flight", "gauge", "Celery tasks whose outcome metro waits for.");
  out += "metro_celery_tasks_in_flight " + std::to_string(s.in_flight) + "\n";
  header("metro_celery_result_backend_connected", "gauge",
         "1 when the connections to the result backend are up, else 0.");
  out += "metro_celery_result_backend_connected " + std::string(s.connected ? "1" : "0") + "\n";
  header("metro_celery_result_backend_reconnects_total", "counter",
         "Times the result backend's connections came back after they were lost.");
  out += "metro_celery_result_backend_reconnects_total " + std::to_string(s.reconnects) + "\n";
  return out;
}

ClientOptions client_options(const config::CeleryOptions& celery) {
  ClientOptions options;
  options.broker = parse_redis_url(celery.broker);
  options.result_backend =
      parse_redis_url(celery.result_backend.empty() ? celery.broker : celery.result_backend);
  return options;
}

HandlerSpec handler_spec(const config::HandlerOptions& handler) {
  HandlerSpec spec;
  switch (handler.kind) {
    case config::HandlerKind::kPython:
      spec.kind = HandlerSpec::Kind::kPython;
      spec.target = handler.python;
      break;
    case config::HandlerKind::kCelery:
      spec.kind = HandlerSpec::Kind::kCelery;
      spec.target = handler.celery;
      break;
    default:
      throw InvalidArgument("handler '" + handler.name + "' does not send Celery tasks");
  }
  spec.queue = handler.queue.empty() ? "celery" : handler.queue;
  spec.priority = handler.priority;
  spec.result_timeout = handler.result_timeout;
  return spec;
}

}  // namespace metro::celery
