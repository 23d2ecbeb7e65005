#pragma once

// The two handler kinds that run on the team's own Celery workers, as dispatch::Handler:
//   python = "pkg.module.function" — metro's generic task `metro.run_handler` (python/metro/
//     tasks.py) imports the function and calls it with the original's four keyword arguments;
//   celery = "app.tasks.name" — that registered task, called with the same keyword arguments.
// One run sends one task (a new task id each attempt) and learns its outcome through the shared
// celery::Client: `start` returns once the task is in Redis, and the outcome reaches the
// RunObserver from the client's thread, so no worker thread waits for Celery (`run`, which waits,
// is for tests and benchmarks). `CeleryHandlers` is the factory `metro run` hands the service:
// one client from `[celery]` for every such handler, its checks at start and its metrics.
// Thread-safety: `run` and `start` may be called from any number of worker threads.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <metro/config/config.hpp>
#include <metro/dispatch/handler.hpp>
#include <metro/dispatch/service.hpp>

#include "client.hpp"

namespace metro::celery {

/// The task that runs `python =` handlers (registered by python/metro/tasks.py).
inline constexpr std::string_view kRunHandlerTask = "metro.run_handler";

/// How one python or celery handler sends its tasks.
struct HandlerSpec {
  enum class Kind { kPython, kCelery };
  Kind kind = Kind::kPython;
  std::string target;  ///< The dotted path (python) or the task name (celery).
  std::string queue = "celery";
  int priority = 0;
  /// How long to wait for an outcome; unset: the `timeout` given to `run`.
  std::optional<std::chrono::milliseconds> result_timeout;
};

/// The task message for one run: kwargs `message` (the body as it was published when it is JSON,
/// else the body as a string), `topic_name`, `subscription_name`, `sequence_number`; for a
/// python handler the dotted path as the one positional argument; headers
/// `metro_correlation_id`, `metro_attempt` and `metro_handler`. A fresh task id.
TaskMessage task_message_for(const dispatch::Task& task, const HandlerSpec& spec);

/// One run as Celery saw it.
struct CeleryRun {
  dispatch::Result result;
  std::string task_id;  ///< Empty only when no id could be drawn.
  int retries = 0;      ///< RETRY states seen.
  TaskState last_state = TaskState::kPending;
};

/// A handler result from a task outcome: succeeded → success; failed (FAILURE, REVOKED) or no
/// outcome in time → failure, the error naming the exception, its message and the traceback's
/// last lines on one line; broker or result backend unreachable, or metro closing → retry;
/// refused credentials or an invalid message → failure.
dispatch::Result result_of(const TaskOutcome& outcome, std::chrono::milliseconds duration);

class CeleryHandler final : public dispatch::Handler {
 public:
  CeleryHandler(std::shared_ptr<Client> client, HandlerSpec spec);

  dispatch::Result run(const dispatch::Task& task, std::chrono::milliseconds timeout) override;
  bool asynchronous() const override { return true; }
  /// Sends the task (or, with `task.resume_task_id`, watches one sent earlier) and returns; the
  /// observer hears `sending` (before the push), RETRY states, and the outcome. A task out when
  /// the client closes is abandoned; one not sent then is a retry.
  void start(const dispatch::Task& task, std::chrono::milliseconds timeout,
             std::shared_ptr<dispatch::RunObserver> observer) override;
  /// Closes the client (metro is stopping): every task out ends at once.
  void interrupt() override;
  /// `run`, keeping the task id, retries and last state for the ledger.
  CeleryRun run_task(const dispatch::Task& task, std::chrono::milliseconds timeout,
                     ProgressCallback progress = {});

 private:
  std::shared_ptr<Client> client_;
  HandlerSpec spec_;
};

/// The python and celery handlers of one service, sharing one Celery client.
class CeleryHandlers final : public dispatch::HandlerFactory {
 public:
  /// Throws metro::InvalidArgument for URLs that do not parse (the message redacted).
  explicit CeleryHandlers(const config::CeleryOptions& celery);
  explicit CeleryHandlers(ClientOptions options);

  /// Connects once to the broker and the result backend (see `Client::verify`): throws
  /// RedisAuthError for refused or missing credentials and RedisError for a server that refuses
  /// otherwise or does not speak Redis, each naming the server (never the password). A server
  /// that cannot be reached yet is not an error: its reason is returned (empty when both
  /// answered), and tasks fail as retryable until it can be.
  std::string verify();
  std::unique_ptr<dispatch::Handler> make(const config::SubscriptionOptions& subscription,
                                          const config::HandlerOptions& handler) override;
  /// `metro_celery_tasks_sent_total`, `metro_celery_task_outcomes_total{state}`,
  /// `metro_celery_task_retries_total`, `metro_celery_tasks_in_flight`,
  /// `metro_celery_result_backend_connected`, `metro_celery_result_backend_reconnects_total`.
  std::string metrics() const override;
  const std::shared_ptr<Client>& client() const { return client_; }

 private:
  std::shared_ptr<Client> client_;
};

/// Client options from `[celery]` (the URLs parsed; throws metro::InvalidArgument, redacted).
ClientOptions client_options(const config::CeleryOptions& celery);
/// The spec of a python or celery handler of the config (its queue and result timeout resolved
/// by the config loader). Throws metro::InvalidArgument for other kinds.
HandlerSpec handler_spec(const config::HandlerOptions& handler);

}  // namespace metro::celery
