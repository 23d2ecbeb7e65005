#pragma once

/// The settings file (`metro.toml`): plain option structs with defaults, and the loader that
/// fills them, interpolating `${VAR}` / `${VAR:-default}` from the environment and validating
/// everything at once. Thread-safety: loading is reentrant; the structs are plain values.

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <metro/error.hpp>
#include <metro/routing/router.hpp>
#include <metro/sb/connection_string.hpp>
#include <metro/settings.hpp>

namespace metro::config {

using std::chrono::milliseconds;

/// What happens to a message that no handler's subject matches.
enum class NoMatchPolicy { kComplete, kDeadLetter, kAbandon };
/// What happens to a message whose body the subject source needs and cannot decode.
enum class MalformedBodyPolicy { kDeadLetter, kComplete };
/// Who completes a deferred message: metro when every handler succeeded, or the handler itself.
enum class Completion { kAuto, kExplicit };
/// What happens when a handler has used all its attempts.
enum class FailurePolicy { kPark, kDeadLetter };
/// When a message is deferred in Service Bus.
enum class DeferMode {
  kAlways,    ///< On receipt, recorded first, before its handlers run (the original's way).
  kWhenSlow,  ///< Only when its handlers are not done within `defer_after`, need a retry with
              ///< backoff, fail, or leave the completion to a handler; a run that ends well in
              ///< time completes the message on its link, under its lock.
};
/// How a handler runs.
enum class HandlerKind { kFunction, kExec, kHttp, kPython, kCelery };

std::string_view to_string(NoMatchPolicy policy);
std::string_view to_string(MalformedBodyPolicy policy);
std::string_view to_string(Completion completion);
std::string_view to_string(FailurePolicy policy);
std::string_view to_string(DeferMode mode);
std::string_view to_string(HandlerKind kind);

/// Retries of one handler: `immediate_retries` right away, then exponential backoff from
/// `backoff` up to `max_backoff` (with jitter), `max_attempts` runs in all.
struct RetryOptions {
  int max_attempts = 5;
  int immediate_retries = 0;
  milliseconds backoff{1000};
  milliseconds max_backoff{std::chrono::minutes(5)};
};

/// `[[subscriptions.handlers]]`: which subjects it takes and how it runs.
struct HandlerOptions {
  std::string name;  ///< Unique in its subscription; names the handler in the ledger and API.
  std::string subject;
  routing::MatchKind match = routing::MatchKind::kExact;
  HandlerKind kind = HandlerKind::kFunction;
  std::string function;           ///< `handler = "name"`: a function registered with metro::App.
  std::vector<std::string> exec;  ///< `exec = ["cmd", "arg"]`: a process.
  std::string http;               ///< `http = "http://host/path"`: a POST endpoint.
  /// `python = "pkg.module.function"`: a plain Python function, run on the team's Celery workers
  /// by metro's generic task `metro.run_handler`.
  std::string python;
  std::string celery;  ///< `celery = "app.tasks.name"`: a task registered with the Celery app.
  std::string queue;   ///< Celery queue (python and celery kinds); `[celery] queue` when unset.
  int priority = 0;    ///< Celery message priority 0-9 (on Redis 0 runs first).
  /// How long metro waits for a Celery task's outcome: `[celery] result_timeout`, else `timeout`.
  milliseconds result_timeout{std::chrono::minutes(5)};
  Completion completion = Completion::kAuto;
  milliseconds timeout{std::chrono::minutes(5)};
  RetryOptions retry;
  FailurePolicy on_failure = FailurePolicy::kPark;
  int line = 0;  ///< Where it is defined in the file.
};

/// `[[subscriptions]]`, with the `[metro]` defaults already applied.
struct SubscriptionOptions {
  std::string topic_name;
  std::string subscription_name;
  std::string connection_string;  ///< Interpolated; holds a secret: log only the redacted form.
  sb::ConnectionString connection;
  routing::SubjectSource subject_source = routing::SubjectSource::kBody;
  NoMatchPolicy on_no_match = NoMatchPolicy::kComplete;
  MalformedBodyPolicy on_malformed_body = MalformedBodyPolicy::kDeadLetter;
  int prefetch = 0;  ///< Upper bound on messages held unprocessed; 0 = as many as free workers.
  DeferMode defer = DeferMode::kAlways;
  /// `when-slow`: how long after receipt a message still being handled is deferred; unset: a
  /// quarter of its lock's duration.
  std::optional<milliseconds> defer_after;
  std::vector<HandlerOptions> handlers;
  int line = 0;

  /// `topic/Subscriptions/subscription`, the entity path on the wire.
  std::string entity_path() const { return topic_name + "/Subscriptions/" + subscription_name; }
};

/// `[metro]`: the process.
struct MetroOptions {
  int workers = 8;
  std::string ledger = "sqlite://metro-ledger.db";
  routing::SubjectSource subject_source = routing::SubjectSource::kBody;
  NoMatchPolicy on_no_match = NoMatchPolicy::kComplete;
  MalformedBodyPolicy on_malformed_body = MalformedBodyPolicy::kDeadLetter;
  int prefetch = 0;
  DeferMode defer = DeferMode::kAlways;  ///< The subscriptions' default.
  std::optional<milliseconds> defer_after;  ///< The subscriptions' default.
  milliseconds deferred_deadline{std::chrono::hours(1)};  ///< Reaper: a deferral older is stale.
  milliseconds shutdown_grace{std::chrono::seconds(30)};  ///< In-flight handlers get this long.
  std::size_t ledger_body_limit = 256 * 1024;             ///< Bodies kept in the ledger, bytes.
  /// Completed and dead-lettered ledger rows older than this are deleted; 0 keeps them forever.
  milliseconds ledger_retention{std::chrono::hours(24 * 7)};
  /// This process among the instances sharing a ledger; empty: `<host name>-<pid>`.
  std::string instance_id;
  /// How long an instance's claim on a message holds without a heartbeat (renewed every third
  /// of it); past it, another instance takes the message over.
  milliseconds lease{std::chrono::seconds(30)};

  // ---- the ledger's size: what a completed message's row keeps, and for how long ----
  /// `completed_rows`: kLean drops a completed message's body and moves its handler runs onto
  /// its row (at most 20); kFull keeps everything.
  enum class CompletedRows { kLean, kFull };
  CompletedRows completed_rows = CompletedRows::kLean;
  /// Completed ledger rows older than this are deleted; 0 keeps them. When the file does not set
  /// it: the shorter of 1 day and `ledger_retention` (0 when that is 0).
  milliseconds completed_retention{std::chrono::hours(24)};
};

/// `[celery]`: the Redis broker and result backend of the team's Celery workers, for `python`
/// and `celery` handlers.
struct CeleryOptions {
  bool configured = false;  ///< The file has a `[celery]` section.
  /// `redis://[[user]:password@]host[:port][/db]` or `rediss://…`. Holds a secret when it has a
  /// password: show it only redacted.
  std::string broker;
  std::string result_backend;  ///< Where task outcomes are read; the broker's URL when unset.
  std::string queue = "celery";
  std::optional<milliseconds> result_timeout;  ///< Unset: each handler's `timeout`.
  /// Messages in hand at once beyond `4 × workers`: a Celery task out holds no worker thread, so
  /// the workers' cluster, not `workers`, bounds how many can run at once.
  int max_in_flight = 256;
};

enum class Role { kViewer, kAdmin };
std::string_view to_string(Role role);

struct AdminToken {
  std::string name;   ///< Shown in audit lines instead of the token.
  std::string token;  ///< A secret.
  Role role = Role::kViewer;
};

/// `[admin]`: the HTTP API and dashboard.
struct AdminOptions {
  bool enabled = true;
  std::string listen = "127.0.0.1:8080";
  std::vector<AdminToken> tokens;
  /// Messages a second a bulk job (retry, complete, dead-letter by filter) acts on, at most.
  int bulk_rate = 100;
};

struct Config {
  std::string path;
  MetroOptions metro;
  std::vector<SubscriptionOptions> subscriptions;
  AdminOptions admin;
  CeleryOptions celery;
};

// What every settings file shares lives in <metro/settings.hpp>; these names stay usable here.
using metro::ConfigError;
using metro::Diagnostic;
using metro::Environment;
using metro::interpolate;
using metro::parse_duration;
using metro::process_environment;

/// Reads and validates a settings file. Throws `ConfigError` with all problems found.
Config load_config(const std::filesystem::path& path,
                   const Environment& env = process_environment());

/// The same, from text; `file_name` is used in diagnostics and as `Config::path`.
Config parse_config(std::string_view text, std::string_view file_name,
                    const Environment& env = process_environment());

}  // namespace metro::config
