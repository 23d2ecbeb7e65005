#pragma once

/// What a handler gets (the task) and the ways a handler runs: a process (`exec`) or an HTTP
/// endpoint (`http`). C++ functions registered with metro::App come with `metro run`.
/// Thread-safety: handlers are stateless after construction; `run` may be called from any number
/// of worker threads at once.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace metro::dispatch {

/// The task a handler gets: what the original gave its functions, and a little more.
struct Task {
  std::string handler;
  std::string topic_name;
  std::string subscription_name;
  std::int64_t sequence_number = 0;
  std::string subject;
  std::string message_id;
  std::string correlation_id;
  int attempt = 1;
  std::string body;  ///< The message body as received (JSON text when it is JSON).
  /// The W3C trace context of the message (`00-<trace id>-<span id>-<flags>`): the publisher's
  /// trace continued with metro's span, or a trace metro started. Handlers get it as the task
  /// JSON's `trace_parent`, exec handlers as `TRACEPARENT`, http handlers as `traceparent`.
  std::string trace_parent;
};

/// `{"message": <body as JSON, or a string when it is not JSON or exceeds the JSON bounds>,
/// "topic_name": …, "subscription_name": …, "sequence_number": …, "subject": …, "message_id": …,
/// "correlation_id": …, "attempt": …, "handler": …, "trace_parent": …}`
std::string to_json(const Task& task);

enum class Outcome {
  kSuccess,  ///< Done: counts toward completion.
  kRetry,    ///< Try again later (exec exit 75, HTTP 5xx or timeout).
  kFailure,  ///< Failed this attempt; the retry policy decides what follows.
};

struct Result {
  Outcome outcome = Outcome::kFailure;
  std::string error;  ///< Why, for the ledger and the logs; empty on success.
  std::chrono::milliseconds duration{0};
};

class Handler {
 public:
  virtual ~Handler() = default;
  /// Runs the handler once for `task`, giving up after `timeout`.
  virtual Result run(const Task& task, std::chrono::milliseconds timeout) = 0;
  /// Asks every run under way to end now (a stop's grace period is over): an exec handler kills
  /// its processes' groups, an http handler cuts its requests. Such a run returns a retry.
  /// The default does nothing (a C++ function cannot be interrupted).
  virtual void interrupt() {}
};

/// Runs `command` (argv) with the task JSON on stdin and the task's trace context as `TRACEPARENT`
/// in its environment. The exit status decides: 0 success, 75
/// (EX_TEMPFAIL) retry, anything else failure with the status and the end of stderr; pipes a
/// background child keeps open do not delay it. The task is written as the child reads it (a
/// child that never reads does not block the worker). A run that outlives its timeout is killed
/// (its whole process group) and counts as a retry.
std::unique_ptr<Handler> make_exec_handler(std::vector<std::string> command);

/// POSTs the task JSON to `url` (http:// or https://) with `X-Correlation-Id` and (when the task
/// has one) `traceparent` headers.
/// 2xx: success; 5xx, a timeout or no connection: retry; anything else: failure.
std::unique_ptr<Handler> make_http_handler(const std::string& url);

}  // namespace metro::dispatch
