#pragma once

/// The durable record of every deferred message and of each handler run on it: what `metro run`
/// writes before it defers a message (so no sequence number is ever lost) and what the API lists.
/// Thread-safety: a `Ledger` may be used from any number of threads at once. Every write is
/// committed when it returns (it survives a crash of the process); concurrent writes share one
/// commit (group commit), and the `_all` forms put many changes in one.

#include <chrono>
#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <metro/error.hpp>

namespace metro::ledger {

using Clock = std::chrono::system_clock;

/// The states of design.md.
enum class State {
  kDeferring,
  kDeferred,
  kRunning,
  kRetrying,
  kFailed,
  kCompleted,
  kDeadLettered,
  kOrphaned
};

std::string_view to_string(State state);
std::optional<State> state_from_string(std::string_view text);

/// A deferred message is known by its topic, subscription and sequence number. A subscription's
/// sequence numbers can start again (the entity was deleted and created again, an emulator
/// without durable state restarted): the ledger then keeps the earlier message's record apart,
/// as an earlier *generation* of that sequence number.
struct MessageKey {
  std::string topic;
  std::string subscription;
  std::int64_t sequence_number = 0;
  /// 0: the current record of this sequence number (the message Service Bus holds, or held
  /// last). 1, 2, …: earlier messages that had the same number, oldest first (superseded).
  std::int64_t generation = 0;
  /// Ordered by topic, subscription, sequence number, generation (as the ledger pages them).
  friend auto operator<=>(const MessageKey&, const MessageKey&) = default;
};

struct DeferredMessage {
  MessageKey key;
  std::string subject;
  std::string message_id;
  std::string correlation_id;
  std::string body;  ///< Up to the configured limit.
  bool body_truncated = false;
  /// When Service Bus enqueued it (the epoch when unknown). With `message_id` it tells a new
  /// message with a known sequence number from the one the ledger recorded.
  Clock::time_point enqueued_time{};
  State state = State::kDeferring;
  Clock::time_point created;
  Clock::time_point updated;
  std::string last_error;
  /// The W3C trace context metro handles the message under (`00-<trace id>-<span id>-<flags>`):
  /// the publisher's trace with metro's own span, or a trace metro started. Empty for records
  /// written before metro kept it.
  std::string trace_parent;
  /// The failure group of the last failed run (see `failure_groups`); empty when none failed.
  std::string failure_group;
};

struct HandlerRun {
  enum class Outcome { kRunning, kSucceeded, kFailed, kRetry };
  std::string handler;
  int attempt = 1;
  Outcome outcome = Outcome::kRunning;
  Clock::time_point started;
  std::optional<Clock::time_point> finished;
  std::string error;
};

std::string_view to_string(HandlerRun::Outcome outcome);

/// Filters for `list`; every set field must match. Pages are ordered by (topic, subscription,
/// sequence number); `after` is the `next` cursor of the previous page.
struct Query {
  std::optional<std::string> topic;
  std::optional<std::string> subscription;
  std::optional<State> state;
  std::optional<std::string> subject_prefix;
  /// A glob over the whole subject: `*` any characters (including `/`), `?` one, `[…]` a set.
  std::optional<std::string> subject_glob;
  std::optional<Clock::time_point> created_before;
  std::optional<Clock::time_point> updated_before;
  /// Only current records (generation 0), leaving out superseded ones.
  bool current_only = false;
  /// Only `failed` and `retrying` messages of this failure group (`FailureGroup::id`).
  std::optional<std::string> failure_group;
  /// When not empty: only messages in one of these states (with `state`, both must hold).
  std::vector<State> any_state;
  std::size_t limit = 50;
  std::optional<std::string> after;
};

struct Page {
  std::vector<DeferredMessage> items;
  std::optional<std::string> next;
};

/// Failed and retrying messages of one subscription and handler whose last errors are the same
/// once their variable parts (numbers, ids, quoted values, paths …) are normalised away.
struct FailureGroup {
  /// Stable: 16 hex digits of a hash of topic, subscription, handler and normalised error.
  std::string id;
  std::string topic;
  std::string subscription;
  std::string handler;
  std::string error;  ///< The normalised error (`order <n> not found`).
  std::size_t count = 0;
  std::size_t failed = 0;        ///< Of `count`, parked.
  std::size_t retrying = 0;      ///< Of `count`, waiting for a retry.
  Clock::time_point first_seen;  ///< The earliest last failure of a member.
  Clock::time_point last_seen;   ///< The latest.
  MessageKey sample;             ///< The member that failed last.
  std::string sample_error;      ///< Its error as it was (`handler: why`).
  std::string sample_subject;
};

struct FailureQuery {
  std::optional<std::string> topic;
  std::optional<std::string> subscription;
  std::size_t limit = 100;  ///< Largest groups first.
};

/// What a bulk job does to each message.
enum class JobAction { kRetry, kComplete, kDeadLetter };
enum class JobState { kQueued, kRunning, kCompleted, kCancelled, kFailed };
std::string_view to_string(JobAction action);
std::optional<JobAction> job_action_from_string(std::string_view text);
std::string_view to_string(JobState state);

/// A bulk action on the messages a filter matched when it was created (their keys are kept with
/// it, so that it acts on exactly those, and goes on after a restart).
struct Job {
  std::string id;
  JobAction action = JobAction::kRetry;
  std::string filter;  ///< The filter as the request gave it (JSON text), for people.
  std::string reason;  ///< Dead-letter: the reason and description.
  std::string description;
  std::string created_by;  ///< The token's name.
  JobState state = JobState::kQueued;
  std::size_t total = 0;
  std::size_t done = 0;    ///< Acted on.
  std::size_t failed = 0;  ///< Could not be acted on (each with its error).
  Clock::time_point created;
  Clock::time_point updated;
  std::optional<Clock::time_point> finished;
  std::string error;  ///< Why the job itself failed or was cancelled.
};

/// The outcome of one message of a job.
struct JobItem {
  MessageKey key;
  bool ok = true;
  std::string error;
};

class Ledger {
 public:
  virtual ~Ledger() = default;
  /// Records the intent to defer (state `deferring`), before the message is deferred. A message
  /// already recorded (the same message id and enqueued time, where both are known) is moved to
  /// the given state; a *different* message with a known sequence number supersedes the record
  /// there: the earlier record and its runs are kept as generation 1, 2, … and the new message
  /// gets generation 0.
  void record(const DeferredMessage& message) { record_all({message}); }
  virtual void record_all(const std::vector<DeferredMessage>& messages) = 0;
  /// Moves a message to `state` (and sets its last error unless `error` is empty); false when the
  /// ledger does not know it, or when it is `completed` or `dead-lettered` already (final states
  /// are never left).
  bool set_state(const MessageKey& key, State state, const std::string& error = {}) {
    return set_state_all({key}, state, error) == 1;
  }
  /// The same for many messages at once; returns how many the ledger knew.
  virtual std::size_t set_state_all(const std::vector<MessageKey>& keys, State state,
                                    const std::string& error = {}) = 0;
  /// Adds a handler run, or updates the run with the same handler and attempt.
  virtual void record_run(const MessageKey& key, const HandlerRun& run) = 0;
  /// Moves a message to `running` and adds the start of a run, in one commit.
  virtual void begin_run(const MessageKey& key, const HandlerRun& run) = 0;
  /// Drops a message and its runs (it was never deferred after all); false when unknown.
  virtual bool forget(const MessageKey& key) = 0;
  virtual std::optional<DeferredMessage> find(const MessageKey& key) = 0;
  virtual std::vector<HandlerRun> runs(const MessageKey& key) = 0;
  virtual Page list(const Query& query) = 0;
  /// Current messages (generation 0) per state, for one subscription or (both empty) for all.
  virtual std::map<State, std::size_t> counts(const std::string& topic = {},
                                              const std::string& subscription = {}) = 0;
  /// When the oldest message of a subscription still deferred in Service Bus (any state but
  /// `completed` and `dead-lettered`) was recorded; nullopt when there is none.
  virtual std::optional<Clock::time_point> oldest_deferred(const std::string& topic,
                                                           const std::string& subscription) = 0;
  /// Deletes `completed` and `dead-lettered` messages, and superseded records, (with their runs)
  /// last updated before `before`; returns how many.
  virtual std::size_t prune(Clock::time_point before) = 0;
  /// Whether a write can be made now: true when `write_problem()` has none.
  bool writable() { return !write_problem(); }
  /// Makes a small real write and says why it failed (the file is read-only, the disk is full,
  /// the file was deleted or replaced …); nullopt when it succeeded.
  virtual std::optional<std::string> write_problem() = 0;

  // ---- failure groups and bulk jobs ------------------------------------------------------------

  /// The failure groups of current `failed` and `retrying` messages, largest first. A run that
  /// ends failed or asking for a retry (`record_run`) files its message under its group.
  virtual std::vector<FailureGroup> failure_groups(const FailureQuery& query) = 0;
  /// How many messages `query` matches (its `limit` and `after` are ignored).
  virtual std::size_t count(const Query& query) = 0;
  /// Records a job (its id, action, filter, reason, creator; state `queued`) with the keys of
  /// the current messages `query` matches (its `limit` and `after` are ignored) in one commit;
  /// returns it with `total`, `created` and `updated` set.
  virtual Job create_job(const Job& job, const Query& query) = 0;
  virtual std::optional<Job> find_job(const std::string& id) = 0;
  /// Newest first; with `unfinished_only`, only `queued` and `running` ones (oldest first).
  virtual std::vector<Job> jobs(std::size_t limit, bool unfinished_only) = 0;
  /// Up to `limit` keys of the job not acted on yet, in key order.
  virtual std::vector<MessageKey> job_pending(const std::string& id, std::size_t limit) = 0;
  /// Records outcomes of a job's messages and adds them to its `done` and `failed`.
  virtual void record_job_items(const std::string& id, const std::vector<JobItem>& items) = 0;
  /// Up to `limit` of a job's messages that failed, with their errors.
  virtual std::vector<JobItem> job_failures(const std::string& id, std::size_t limit) = 0;
  /// Moves a job to `state` (setting `finished` for completed, cancelled and failed, and `error`
  /// unless empty); false when it is unknown or already finished.
  virtual bool set_job_state(const std::string& id, JobState state,
                             const std::string& error = {}) = 0;
};

/// A page cursor: the last key of the previous page, as every ledger pages
/// ("topic\nsubscription\nsequence\ngeneration").
std::string cursor_of(const MessageKey& key);
/// The key a cursor names, or nullopt when it is not one `cursor_of` made (cursors of three
/// parts, from before generations, are still read).
std::optional<MessageKey> parse_cursor(std::string_view cursor);

/// Opens a ledger from its URL: `sqlite://<file>` (created if missing). Throws `metro::Error`
/// naming the problem (an unknown scheme, a file that cannot be opened).
std::unique_ptr<Ledger> open_ledger(const std::string& url);

}  // namespace metro::ledger
