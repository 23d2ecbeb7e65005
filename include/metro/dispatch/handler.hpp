#pragma once

/// What a handler gets (the task) and the ways a handler runs: a process (`exec`) or an HTTP
/// endpoint (`http`). C++ functions registered with metro::App come with `metro run`; Celery
/// tasks (src/celery) are asynchronous handlers: their runs go on outside metro.
/// Thread-safety: handlers are stateless after construction; `run` and `start` may be called from
/// any number of worker threads at once.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
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
  /// Set when this run picks up a run an earlier metro started outside this process and did not
  /// see end (the Celery task id the ledger recorded): an asynchronous handler waits for that
  /// run's outcome instead of starting another.
  std::string resume_task_id;
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
  Result() = default;
  Result(Outcome o, std::string e, std::chrono::milliseconds d)
      : outcome(o), error(std::move(e)), duration(d) {}

  Outcome outcome = Outcome::kFailure;
  std::string error;  ///< Why, for the ledger and the logs; empty on success.
  std::chrono::milliseconds duration{0};
  /// The run's id where it ran, when it ran outside metro (a Celery task id); empty otherwise.
  std::string task_id;
  /// Times the run was retried where it ran without ending (a Celery task's own self.retry).
  int retries = 0;
};

/// What an asynchronous run reports (see `Handler::start`). Its member functions may be called
/// from any thread and must not block, but for `sending`.
class RunObserver {
 public:
  virtual ~RunObserver() = default;
  /// The run is about to leave metro under `task_id`: called on the thread that called `start`,
  /// before anything is sent. The run is recorded with its id first, so that a metro that stops
  /// or dies while the run is out finds it again (`Task::resume_task_id`).
  virtual void sending(const std::string& task_id) = 0;
  /// The run went on without ending (a Celery task retried itself): `retries` so far.
  virtual void progressed(int retries) = 0;
  /// The run ended. Called once, unless `abandoned` is.
  virtual void finished(Result result) = 0;
  /// This process will not learn the outcome (metro is stopping while the run goes on
  /// elsewhere): the run stays `running` in the ledger with its id, and the next start picks its
  /// outcome up. Called once, instead of `finished`.
  virtual void abandoned() = 0;
};

class Handler {
 public:
  virtual ~Handler() = default;
  /// Runs the handler once for `task`, giving up after `timeout`.
  virtual Result run(const Task& task, std::chrono::milliseconds timeout) = 0;
  /// Whether runs go on outside metro (Celery tasks): the service then calls `start`, and a run
  /// out holds no worker thread while it waits for its outcome.
  virtual bool asynchronous() const { return false; }
  /// Starts a run (or, with `task.resume_task_id`, picks up one an earlier metro started) and
  /// returns once it is under way; `observer` hears the rest. The default runs it here with `run`.
  virtual void start(const Task& task, std::chrono::milliseconds timeout,
                     std::shared_ptr<RunObserver> observer) {
    observer->finished(run(task, timeout));
  }
  /// Asks every run under way to end now (a stop's grace period is over): an exec handler kills
  /// its processes' groups, an http handler cuts its requests (such a run returns a retry); an
  /// asynchronous handler stops waiting (its runs out are abandoned, those not sent yet return a
  /// retry). The default does nothing (a C++ function cannot be interrupted).
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
