#pragma once

/// The service `metro run` is: a listener on every subscription of a config, routing by subject,
/// recording each message in the ledger before deferring it, running its handlers on a task
/// queue with retries, and completing (or parking, or dead-lettering) it when they are done. At
/// start-up it resolves what a previous run left half-done; a reaper takes up stale deferrals.
///
/// Thread-safety: every public member may be called from any thread once `start` returned.

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <metro/config/config.hpp>
#include <metro/dispatch/handler.hpp>
#include <metro/dispatch/task_queue.hpp>
#include <metro/error.hpp>
#include <metro/ledger/ledger.hpp>
#include <metro/sb/client.hpp>

namespace metro {

/// The request cannot be carried out in the message's present state (already completed, being
/// handled right now …). The HTTP API answers 409.
class ConflictError : public Error {
 public:
  explicit ConflictError(const std::string& what) : Error(what, false) {}
};

/// No such message (or subscription) is known. The HTTP API answers 404.
class UnknownMessageError : public Error {
 public:
  explicit UnknownMessageError(const std::string& what) : Error(what, false) {}
};

/// Completes a deferred message by sequence number, as the original's API did: the message is
/// fetched by sequence number and settled as completed (batched with others). Blocks until
/// Service Bus confirmed. Completing a message twice is harmless. Needs a running service in
/// this process that consumes the subscription; throws `UnknownMessageError` otherwise.
void complete_deferred_message(std::int64_t sequence_number, const std::string& topic_name,
                               const std::string& subscription_name);
/// The same, returning at once; the future is ready when Service Bus confirmed.
std::future<void> complete_deferred_message_async(std::int64_t sequence_number,
                                                  const std::string& topic_name,
                                                  const std::string& subscription_name);

namespace dispatch {

/// A C++ handler: runs once per task. Returns normally for success; throws `RetryLater` to be
/// run again later, any other exception for a failed attempt (its message becomes the error).
using Function = std::function<void(const Task&)>;

/// Thrown by a function handler that wants to be run again later (like exec's exit 75).
class RetryLater : public Error {
 public:
  explicit RetryLater(const std::string& why) : Error(why, true) {}
};

/// Wraps a function as a handler. A function cannot be interrupted: a run that outlives its
/// timeout is reported as a failure when it returns.
std::unique_ptr<Handler> make_function_handler(Function function);

/// Builds the handlers of the kinds the service does not build itself: `python` and `celery`,
/// which send Celery tasks (src/celery's `CeleryHandlers`, which `metro run` passes when the
/// config has such handlers). Thread-safety: `make` is called while the service is built,
/// `metrics` from any thread.
class HandlerFactory {
 public:
  virtual ~HandlerFactory() = default;
  /// The handler for `handler` of `subscription`; throws `InvalidArgument` when it cannot be made.
  virtual std::unique_ptr<Handler> make(const config::SubscriptionOptions& subscription,
                                        const config::HandlerOptions& handler) = 0;
  /// Prometheus text (HELP and TYPE lines included) about what these handlers share, appended
  /// to `/metrics`; empty by default.
  virtual std::string metrics() const { return {}; }
};

struct ServiceOptions {
  /// C++ handlers by the name the config's `handler = "…"` gives.
  std::map<std::string, Function> functions;
  /// The ledger; null: opened from `[metro] ledger`.
  std::shared_ptr<ledger::Ledger> ledger;
  /// The task queue; null: an in-process one with `[metro] workers` threads.
  std::shared_ptr<TaskQueue> queue;
  /// Builds `python` and `celery` handlers; null: a config with such handlers is refused.
  std::shared_ptr<HandlerFactory> handler_factory;
  /// Client settings (TLS trust, timeouts) for every connection.
  sb::ClientOptions client;
  /// How often the reaper looks for stale deferrals (default: a quarter of deferred_deadline,
  /// at most a minute).
  std::chrono::milliseconds reaper_interval{0};
  /// Bulk jobs act on at most this many messages a second; 0: `[admin] bulk_rate`.
  double bulk_rate = 0;
};

/// A bulk action: what to do to every message a filter matches now (see `Service::start_job`).
struct JobRequest {
  ledger::JobAction action = ledger::JobAction::kRetry;
  /// Topic, subscription, state, subject, age or failure group (`limit` and `after` are
  /// ignored). Without a state or group it matches the `deferred`, `retrying`, `failed` and
  /// `orphaned` messages; a state other than those is refused.
  ledger::Query filter;
  std::string filter_text;  ///< The filter as given, for people (the job's `filter`).
  std::string reason = "DeadLetteredByOperator";  ///< Dead-letter only.
  std::string description;
  std::string requested_by;  ///< The token's name, for the audit lines.
};

/// What a subscription is doing, for the API and metrics.
struct SubscriptionStatus {
  std::string topic;
  std::string subscription;
  sb::ConnectionState state = sb::ConnectionState::kConnecting;
  std::string state_reason;
  std::chrono::system_clock::time_point last_message{};
  /// Times the connection came back after it was lost (since start).
  std::uint64_t reconnects = 0;
};

/// How long one handler's runs took: a histogram with fixed buckets.
struct HandlerStats {
  /// Upper bounds of the buckets, in seconds (a last, unbounded bucket follows).
  static constexpr std::array<double, 12> kBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                     0.5,   1,    2.5,   5,    10,  60};
  std::string topic;
  std::string subscription;
  std::string handler;
  std::array<std::uint64_t, kBounds.size() + 1> buckets{};  ///< Runs per bucket (not cumulative).
  std::uint64_t count = 0;
  double sum_seconds = 0;
};

/// Counters since start, for metrics and tests.
struct Counters {
  std::uint64_t received = 0;
  std::uint64_t routed = 0;  ///< Handler tasks created (a message routed to 2 handlers: 2).
  std::uint64_t deferred = 0;
  std::uint64_t completed = 0;
  std::uint64_t dead_lettered = 0;  ///< All dead-letters: the sum of `dead_lettered_by_reason`.
  /// Dead-letters by why: "NoHandler", "MalformedBody", "HandlerFailed" (metro's own reasons)
  /// and "operator" (by request, whatever reason the operator gave). Every key is present.
  std::map<std::string, std::uint64_t> dead_lettered_by_reason;
  std::uint64_t failed = 0;  ///< Messages parked as failed.
  std::uint64_t retries = 0;
  std::uint64_t no_match = 0;
  std::uint64_t malformed = 0;
};

/// Whether the service can take messages now, and if not why (for `/readyz`).
struct Readiness {
  bool ready = false;
  /// What stands in the way, one sentence each: the ledger cannot be written (and why), a
  /// subscription is not connected (and why).
  std::vector<std::string> problems;
};

/// How far a settlement requested with a deadline got.
enum class Settlement {
  kDone,      ///< Service Bus confirmed it (or it had been settled before).
  kUnderWay,  ///< Accepted and still being tried when the wait ended (the API answers 202).
};

class Service {
 public:
  /// Builds the handlers of `config` (a `handler = "name"` not in `options.functions` is an
  /// `InvalidArgument` naming it) and opens the ledger. Does not connect yet.
  Service(config::Config config, ServiceOptions options = {});
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  /// Connects to every subscription, resolves what an earlier run left half-done, then starts
  /// the listeners, the workers and the reaper.
  void start();
  /// Stops receiving, lets running handlers finish within `grace`, leaves the rest deferred for
  /// the next start, settles what is pending and closes. Handler runs still going after `grace`
  /// are interrupted (exec: the process group is killed; http: the request is cut) and waited
  /// for; a C++ function cannot be interrupted and is waited for until it returns. Runs that go
  /// on outside metro (Celery tasks) are waited for within `grace` too, then left `running` with
  /// their task ids: the next start picks their outcomes up. Every thread
  /// the service started has ended when `stop` returns. True when every handler finished within
  /// `grace`. Idempotent; the destructor calls `stop(0)`.
  bool stop(std::chrono::milliseconds grace);

  /// Completes a deferred message (batched); see `metro::complete_deferred_message`. The key's
  /// topic and subscription may be spelt in any case. The future is ready when Service Bus
  /// confirmed; a settlement that fails for a passing reason is tried again for about two
  /// minutes before the future fails.
  std::future<void> complete(const ledger::MessageKey& key);
  /// The same, waiting at most `wait`: `kDone` when confirmed, `kUnderWay` when it is still being
  /// tried. Throws `UnknownMessageError` (not a subscription this metro consumes),
  /// `ConflictError` (a superseded record, shutting down), or the settlement's error when it
  /// failed within `wait`.
  Settlement complete(const ledger::MessageKey& key, std::chrono::milliseconds wait);
  /// Runs again the handlers of a message that have not succeeded (a `failed`, stale `deferred`
  /// or `orphaned` one), with a fresh set of attempts, in this process, whichever instance
  /// sharing the ledger deferred it. Throws `UnknownMessageError`, `ConflictError` (completed,
  /// dead-lettered, or being handled now, here or by another live instance).
  void retry(const ledger::MessageKey& key);
  /// Moves a deferred message to the dead-letter queue; blocks until Service Bus confirmed (or
  /// the settlement's retries, about two minutes, are used up). Throws like `retry`.
  void dead_letter(const ledger::MessageKey& key, const std::string& reason,
                   const std::string& description);
  /// The same, waiting at most `wait` (see `complete(key, wait)`).
  Settlement dead_letter(const ledger::MessageKey& key, const std::string& reason,
                         const std::string& description, std::chrono::milliseconds wait);

  /// Sends a message to a topic, with the connection of a subscription on it. Throws
  /// `UnknownMessageError` when no subscription of the config is on that topic. A message
  /// without a valid `traceparent` application property gets one that starts a trace.
  void publish(const std::string& topic, const sb::Message& message);

  /// How many messages a bulk action would act on now (a dry run). Throws `InvalidArgument` for
  /// a state a bulk action does not take.
  std::size_t count_for_job(const JobRequest& request);
  /// Records a bulk job for the messages the filter matches now and starts it in the background
  /// (see `JobRunner`: paced, one at a time, resumed after a restart). Returns the job (state
  /// `queued`, `total` set).
  ledger::Job start_job(const JobRequest& request);
  /// Cancels a queued or running job; false when it is unknown or finished already.
  bool cancel_job(const std::string& id, const std::string& requested_by);

  ledger::Ledger& ledger();
  const config::Config& config() const;
  std::vector<SubscriptionStatus> subscriptions() const;
  /// Ready when the ledger can be written and every subscription is connected. Probes the
  /// ledger with a small write when no write succeeded in the last seconds.
  Readiness readiness() const;
  Counters counters() const;
  std::vector<HandlerStats> handler_stats() const;
  /// The handler factory's Prometheus text (Celery tasks by state …); empty without one.
  std::string handler_metrics() const;
  /// Messages this process is working on (deferred and not yet settled, parked or waiting for an
  /// explicit completion).
  std::size_t in_flight() const;
  /// This process's id among the instances sharing the ledger (`[metro] instance_id`, else
  /// `<host name>-<pid>`).
  std::string instance_id() const;
  /// Every instance sharing the ledger, as their heartbeat rows say (id, host, pid, last
  /// heartbeat, in-flight count, whether its lease holds). Throws `metro::Error` when the ledger
  /// cannot be read.
  std::vector<ledger::Instance> instances() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dispatch
}  // namespace metro
