#pragma once

/// The durable record of every deferred message and of each handler run on it: what `metro run`
/// writes before it defers a message (so no sequence number is ever lost) and what the API lists.
/// Thread-safety: a `Ledger` may be used from any number of threads at once. Every write is
/// committed when it returns (it survives a crash of the process); concurrent writes share one
/// commit (group commit), and the `_all` forms put many changes in one.
///
/// Several metro processes (instances) may share one PostgreSQL ledger. Each `join`s under its
/// instance id; a message's row records the instance handling it (`owner`) and a lease that the
/// instance renews with its `heartbeat`. An instance takes (`claim`) only rows that are its own,
/// have no owner, or whose lease lapsed, and a write that moves a message to a state other than
/// `completed` or `dead-lettered` applies only to a row this instance owns (or that has no owner):
/// the owner is the fencing token, so an instance cut off past its lease cannot undo the work of
/// the one that took its messages over. A SQLite ledger serves one process: a second instance
/// joining the same file is refused.

#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
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
  /// The body was dropped when the message completed (`completed_rows = "lean"`): `body` is
  /// empty (and the handler runs were moved onto the row, at most 20 of them).
  bool body_dropped = false;
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
  /// The instance handling it (its `[metro] instance_id`); empty when none has taken it.
  std::string owner;
  /// Until when `owner`'s claim holds unless renewed (the ledger's clock; the epoch when none).
  Clock::time_point lease_until{};
};

struct HandlerRun {
  enum class Outcome { kRunning, kSucceeded, kFailed, kRetry };
  std::string handler;
  int attempt = 1;
  Outcome outcome = Outcome::kRunning;
  Clock::time_point started;
  std::optional<Clock::time_point> finished;
  std::string error;
  /// The run's id outside metro (its Celery task id); empty for runs in this process. Recorded
  /// before the task is sent, so that a restart can pick up its outcome.
  std::string task_id;
  /// Times the run retried itself without ending (a Celery task's self.retry).
  int retries = 0;
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

/// Who this process is among the instances sharing a ledger.
struct InstanceInfo {
  std::string id;  ///< `[metro] instance_id`: unique among the instances.
  std::string host;
  std::int64_t pid = 0;
  /// How long a claim on a message holds without a heartbeat renewing it.
  std::chrono::milliseconds lease{std::chrono::seconds(30)};
};

/// An instance as its heartbeat row says.
struct Instance {
  std::string id;
  std::string host;
  std::int64_t pid = 0;
  Clock::time_point started{};
  Clock::time_point heartbeat{};
  std::size_t in_flight = 0;  ///< Messages it was handling at its last heartbeat.
  bool live = false;          ///< Its last heartbeat is younger than its lease.
};

/// Which rows `claim` takes: current rows (generation 0) of one subscription in one of `states`,
/// after sequence number `after`, in sequence order, that are this instance's own (last updated
/// before `own_updated_before`, when given), have no owner, or whose lease lapsed (`lapsed`).
/// Rows another instance is claiming at the same moment are skipped, never taken twice.
struct Claim {
  std::string topic;
  std::string subscription;
  std::vector<State> states;
  bool own = true;
  std::optional<Clock::time_point> own_updated_before;
  bool lapsed = true;
  std::int64_t after = 0;
  std::size_t limit = 100;
};

/// Held while one instance does what only one may do at a time (the reaper's sweep).
class Exclusive {
 public:
  virtual ~Exclusive() = default;
};

/// What a ledger wrote since it was opened, through this object.
struct WriteStats {
  std::uint64_t writes = 0;   ///< Write calls that committed (`record_all`, `set_state_all` …).
  std::uint64_t commits = 0;  ///< Transactions committed for them: group commit shares one.
};

/// A schema migration and whether the ledger has it.
struct MigrationStatus {
  int version = 0;
  std::string description;
  bool applied = false;
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
  std::size_t prune(Clock::time_point before) { return prune(before, before); }
  /// The same with a retention of its own for `completed` messages: those last updated before
  /// `completed_before`, and dead-lettered and superseded ones before `settled_before`.
  virtual std::size_t prune(Clock::time_point settled_before,
                            Clock::time_point completed_before) = 0;
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
  // ---- instances sharing the ledger ------------------------------------------------------------

  /// Registers this process as `me` (its heartbeat row) and makes it the owner of what it
  /// records and claims from now on. Throws `metro::Error` when another live process is that
  /// instance already, or (SQLite) when another process uses the file.
  virtual void join(const InstanceInfo& me) = 0;
  /// Renews the heartbeat, and with it the leases of every message this instance owns (a row's
  /// lease lapses once its own deadline passed and its owner's heartbeat is older than the
  /// owner's lease); `in_flight` is shown with the instance.
  virtual void heartbeat(std::size_t in_flight) = 0;
  /// Leaving for good (a graceful stop): the heartbeat row goes and the leases of this
  /// instance's messages lapse at once, so the others take them over without waiting.
  virtual void leave() = 0;
  /// Every instance with a heartbeat row.
  virtual std::vector<Instance> instances() = 0;
  /// Takes rows for this instance (see `Claim`): they are owned by it with a fresh lease. The
  /// rows come back as they were before, so `owner` says whom each was taken from.
  virtual std::vector<DeferredMessage> claim(const Claim& claim) = 0;
  /// Takes one current message for this instance unless another live instance holds its lease;
  /// nullopt when unknown, settled, or held by another instance.
  virtual std::optional<DeferredMessage> claim_one(const MessageKey& key) = 0;
  /// The right to do `name` alone among the instances, held until the result is destroyed;
  /// null when another instance holds it now.
  virtual std::unique_ptr<Exclusive> try_exclusive(std::string_view name) = 0;
  /// The instance id joined under (empty before `join`).
  virtual std::string instance_id() const = 0;

  // ---- copying -----------------------------------------------------------------------------------

  /// Writes rows and their runs exactly as given (every field, generations and times included),
  /// replacing what has the same keys: `metro ledger copy`.
  virtual void restore(const std::vector<std::pair<DeferredMessage, std::vector<HandlerRun>>>&
                           rows) = 0;
  /// The ledger's schema migrations (applied or pending).
  virtual std::vector<MigrationStatus> migrations() = 0;
  /// Counts of this object's writes and commits (for benchmarks and metrics).
  virtual WriteStats write_stats() const = 0;
};

/// A page cursor: the last key of the previous page, as every ledger pages
/// ("topic\nsubscription\nsequence\ngeneration").
std::string cursor_of(const MessageKey& key);
/// The key a cursor names, or nullopt when it is not one `cursor_of` made (cursors of three
/// parts, from before generations, are still read).
std::optional<MessageKey> parse_cursor(std::string_view cursor);

/// What stays of a message's row once it completed (`[metro] completed_rows`).
enum class CompletedRows {
  /// The body is dropped (`body_dropped`) and the handler runs move from rows of their own into
  /// one field of the message's row (at most 20: the last of each handler and the latest
  /// others): with a 55-byte body and one run, about 120 bytes less per message on SQLite and
  /// 220 on PostgreSQL.
  kLean,
  kFull,  ///< Everything is kept, as for every other state.
};

struct OpenOptions {
  /// Bring the schema up to date at open. false: open as it is, only to read `migrations()`.
  bool migrate = true;
  /// What a completed message keeps. Dead-lettered, failed and unfinished rows keep everything.
  CompletedRows completed_rows = CompletedRows::kLean;
  /// PostgreSQL: connections in the pool (at least 2).
  std::size_t connections = 4;
};

/// Opens a ledger from its URL: `sqlite://<file>` (created if missing) or
/// `postgresql://user:password@host:port/database?…` (libpq's URL form; `postgres://` too).
/// Throws `metro::Error` naming the problem (an unknown scheme, a file that cannot be opened, a
/// server that cannot be reached or refuses the login: its host and the reason, the password
/// redacted).
std::unique_ptr<Ledger> open_ledger(const std::string& url, const OpenOptions& options = {});

/// The migrations `url`'s ledger has not applied yet (without applying them).
std::vector<MigrationStatus> pending_migrations(const std::string& url);

/// Copies every row of `from` (every generation, state, owner, time and handler run) into `to`,
/// replacing rows with the same keys; `progress` is called after each batch with the rows copied
/// so far. Returns how many rows were copied.
std::size_t copy_ledger(Ledger& from, Ledger& to,
                        const std::function<void(std::size_t)>& progress = {});

/// `text` with the password of every `postgresql://user:password@…` URL and every `password=…`
/// setting in it replaced by `***` (for log lines and errors).
std::string redact_ledger_url(std::string_view text);

}  // namespace metro::ledger
