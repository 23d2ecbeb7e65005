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

struct ServiceOptions {
  /// C++ handlers by the name the config's `handler = "…"` gives.
  std::map<std::string, Function> functions;
  /// The ledger; null: opened from `[metro] ledger`.
  std::shared_ptr<ledger::Ledger> ledger;
  /// The task queue; null: an in-process one with `[metro] workers` threads.
  std::shared_ptr<TaskQueue> queue;
  /// Client settings (TLS trust, timeouts) for every connection.
  sb::ClientOptions client;
  /// How often the reaper looks for stale deferrals (default: a quarter of deferred_deadline,
  /// at most a minute).
  std::chrono::milliseconds reaper_interval{0};
};

/// What a subscription is doing, for the API and metrics.
struct SubscriptionStatus {
  std::string topic;
  std::string subscription;
  sb::ConnectionState state = sb::ConnectionState::kConnecting;
  std::string state_reason;
  std::chrono::system_clock::time_point last_message{};
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
  std::uint64_t dead_lettered = 0;
  std::uint64_t failed = 0;  ///< Messages parked as failed.
  std::uint64_t retries = 0;
  std::uint64_t no_match = 0;
  std::uint64_t malformed = 0;
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
  /// the next start, settles what is pending and closes. True when every handler finished.
  bool stop(std::chrono::milliseconds grace);

  /// Completes a deferred message (batched); see `metro::complete_deferred_message`.
  std::future<void> complete(const ledger::MessageKey& key);
  /// Runs again the handlers of a message that have not succeeded (a `failed`, stale `deferred`
  /// or `orphaned` one), with a fresh set of attempts. Throws `UnknownMessageError`,
  /// `ConflictError` (completed, dead-lettered, or being handled now).
  void retry(const ledger::MessageKey& key);
  /// Moves a deferred message to the dead-letter queue. Throws like `retry`.
  void dead_letter(const ledger::MessageKey& key, const std::string& reason,
                   const std::string& description);

  /// Sends a message to a topic, with the connection of a subscription on it. Throws
  /// `UnknownMessageError` when no subscription of the config is on that topic.
  void publish(const std::string& topic, const sb::Message& message);

  ledger::Ledger& ledger();
  const config::Config& config() const;
  std::vector<SubscriptionStatus> subscriptions() const;
  Counters counters() const;
  std::vector<HandlerStats> handler_stats() const;
  /// Messages this process is working on (deferred and not yet settled, parked or waiting for an
  /// explicit completion).
  std::size_t in_flight() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace dispatch
}  // namespace metro
