#pragma once

// metro's Celery client: sends task messages to the workers' Redis broker and learns each task's
// outcome from the Redis result backend.
//
// Sending: a small pool of broker connections (LPUSH of the envelope; a connection that fails is
// dropped and connecting again backs off). Outcomes: one thread owns a pub/sub connection and a
// command connection to the result backend. Each task's channel `celery-task-meta-<id>` is
// subscribed (and the subscription confirmed) before its message is pushed, so no notification
// can be missed; on every reconnect, and every `reconcile_interval`, the keys of all tasks in
// flight are read back in batches (MGET), because pub/sub drops what is published while a
// subscriber is away. There is no polling per task.
//
// Outcomes: SUCCESS → succeeded; FAILURE or REVOKED → failed (exception type, message,
// traceback); RETRY (a task's self.retry, same id) → still running, counted, and its deadline
// starts again; nothing by the deadline → timed out. A broker or result backend that cannot be
// reached makes the task `kUnavailable` (transient) without it ever being half-sent; refused
// credentials make it `kRefused`.
//
// Thread-safety: every member function may be called from any number of threads. Callbacks run
// on the client's thread (or on the caller's, when a task ends before it was sent) and must not
// block: they must not call `submit`, `call`, `watch` or `close` (hand the work to another
// thread instead).

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "redis_url.hpp"
#include "task_message.hpp"
#include "task_meta.hpp"

namespace metro::celery {

using std::chrono::milliseconds;

/// How many RETRY states start a task's deadline again (Celery's own default is 3 retries).
inline constexpr int kMaxRetryExtensions = 10;

struct ClientOptions {
  RedisUrl broker;
  RedisUrl result_backend;
  milliseconds connect_timeout{std::chrono::seconds(5)};   ///< Name lookup, TCP, TLS, AUTH.
  milliseconds command_timeout{std::chrono::seconds(10)};  ///< One command's round trip.
  milliseconds reconcile_interval{std::chrono::seconds(30)};
  std::size_t reconcile_batch = 100;    ///< Keys per MGET.
  std::size_t broker_connections = 16;  ///< Idle broker connections kept for the next sends.
  milliseconds min_backoff{100};        ///< Between connection attempts after a failure…
  milliseconds max_backoff{std::chrono::seconds(5)};  ///< …doubling up to this.
  std::size_t max_reply_bytes = 64u * 1024 * 1024;
};

/// A task's outcome, as far as metro learnt it.
struct TaskOutcome {
  enum class Status {
    kSucceeded,    ///< SUCCESS.
    kFailed,       ///< FAILURE or REVOKED: `meta` has the exception.
    kTimedOut,     ///< No ready state by the deadline; `meta` has the last state seen.
    kUnavailable,  ///< Not sent: the broker or the result backend could not be reached.
    kRefused,      ///< Not sent: Redis refused the credentials, or the message was invalid.
    kClosed,       ///< The client was closed first.
  };
  Status status = Status::kUnavailable;
  std::string task_id;
  TaskMeta meta;      ///< The last state seen (PENDING when none).
  int retries = 0;    ///< RETRY states seen (the task's own self.retry calls).
  std::string error;  ///< What went wrong, for a person; empty on success.
  /// The message reached the broker (or was sent earlier, for `watch`): with kClosed, the task
  /// may still run and end; without, it never will.
  bool sent = false;
};

std::string_view to_string(TaskOutcome::Status status);

/// A state a task reached on its way (STARTED, RETRY, …).
struct TaskProgress {
  std::string task_id;
  TaskState state = TaskState::kPending;
  int retries = 0;
};

using OutcomeCallback = std::function<void(const TaskOutcome&)>;
using ProgressCallback = std::function<void(const TaskProgress&)>;

struct ClientStats {
  std::uint64_t sent = 0;
  std::uint64_t succeeded = 0;
  std::uint64_t failed = 0;   ///< FAILURE.
  std::uint64_t revoked = 0;  ///< REVOKED.
  std::uint64_t timed_out = 0;
  std::uint64_t unavailable = 0;  ///< Includes refused.
  std::uint64_t retries_seen = 0;
  std::uint64_t reconnects = 0;  ///< Of the result backend's connections.
  std::uint64_t reconciled = 0;  ///< Outcomes found by reading keys rather than by pub/sub.
  std::size_t in_flight = 0;
  /// The result backend's connections are up (tasks can be watched for their outcomes).
  bool connected = false;
};

class Client {
 public:
  /// Starts the client's thread; connecting happens in the background.
  explicit Client(ClientOptions options);
  /// Closes.
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  /// Connects once to the broker and the result backend to surface configuration mistakes at
  /// start: throws RedisAuthError for refused or missing credentials and RedisError for other
  /// refusals; a server that cannot be reached yet is not an error (returns its reason).
  std::string verify();

  /// Sends `message` and calls `done` exactly once with its outcome. Returns the task id. Blocks
  /// while subscribing and sending (bounded by connect and command timeouts), never for the
  /// outcome. `result_timeout` counts from the moment the message is in Redis, and again from
  /// each RETRY.
  std::string submit(const TaskMessage& message, milliseconds result_timeout, OutcomeCallback done,
                     ProgressCallback progress = {});

  /// `submit` and wait for the outcome.
  TaskOutcome call(const TaskMessage& message, milliseconds result_timeout,
                   ProgressCallback progress = {});

  /// Waits for the outcome of a task sent earlier (by a metro that stopped, say): subscribes,
  /// reads its key, and calls `done` once, as for `submit`.
  void watch(const std::string& task_id, milliseconds result_timeout, OutcomeCallback done,
             ProgressCallback progress = {});

  /// Ends every task in flight with kClosed, stops the thread; later calls end at once with
  /// kClosed. Idempotent.
  void close();

  ClientStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace metro::celery
