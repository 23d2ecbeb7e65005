// SqliteLedger: the ledger in one SQLite file (WAL), one connection, group commit. The schema
// comes from numbered migrations (sqlite_migrations.cpp), run at open. One metro process uses a
// file: `join` refuses a second live instance.

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <thread>

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <metro/ledger/ledger.hpp>

#include "../common/thread_annotations.hpp"
#include "../sqlite/sqlite.hpp"
#include "failure_groups.hpp"
#include "ledger_impl.hpp"
#include "run_summary.hpp"
#include "sqlite_migrations.hpp"

namespace metro::ledger {
namespace {

using namespace detail;
using sqlite::Statement;

/// Binds a message key to ?1, ?2, ?3 and its generation to ?4, as every statement on one
/// message does.
void bind_key(Statement& s, const MessageKey& key) {
  s.bind(1, key.topic).bind(2, key.subscription).bind(3, key.sequence_number);
  s.bind(4, key.generation);
}

constexpr const char* kKeyWhere =
    " WHERE topic = ?1 AND subscription = ?2 AND sequence_number = ?3 AND generation = ?4";

constexpr const char* kColumns =
    "topic, subscription, sequence_number, generation, subject, message_id, correlation_id, "
    "body, body_truncated, state, created, updated, last_error, enqueued, owner, lease_until, "
    "trace_parent, failure_group";

/// What a read of a message selects: the written columns, then those only reads take.
const std::string kReadColumns = std::string(kColumns) + ", body_dropped";

DeferredMessage read_message(const Statement& s) {
  DeferredMessage m;
  m.key = {s.text(0), s.text(1), s.integer(2), s.integer(3)};
  m.subject = s.text(4);
  m.message_id = s.text(5);
  m.correlation_id = s.text(6);
  m.body = s.text(7);
  m.body_truncated = s.integer(8) != 0;
  m.state = state_from_string(s.text(9)).value_or(State::kOrphaned);
  m.created = from_ms(s.integer(10));
  m.updated = from_ms(s.integer(11));
  m.last_error = s.text(12);
  m.enqueued_time = from_ms(s.integer(13));
  m.owner = s.text(14);
  m.lease_until = from_ms(s.integer(15));
  m.trace_parent = s.text(16);
  m.failure_group = s.text(17);
  m.body_dropped = s.integer(18) != 0;
  return m;
}

constexpr const char* kJobColumns =
    "id, action, filter, reason, description, created_by, state, total, done, failed, created,"
    " updated, finished, error";

Job read_job(const Statement& s) {
  Job j;
  j.id = s.text(0);
  j.action = job_action_from_string(s.text(1)).value_or(JobAction::kRetry);
  j.filter = s.text(2);
  j.reason = s.text(3);
  j.description = s.text(4);
  j.created_by = s.text(5);
  auto state = s.text(6);
  for (std::size_t i = 0; i < kJobStates.size(); ++i) {
    if (kJobStates[i] == state) j.state = static_cast<JobState>(i);
  }
  j.total = static_cast<std::size_t>(s.integer(7));
  j.done = static_cast<std::size_t>(s.integer(8));
  j.failed = static_cast<std::size_t>(s.integer(9));
  j.created = from_ms(s.integer(10));
  j.updated = from_ms(s.integer(11));
  if (!s.is_null(12)) j.finished = from_ms(s.integer(12));
  j.error = s.text(13);
  return j;
}

/// The unsettled states, written exactly as the partial index deferred_messages_age has them:
/// a query must name them in these words for SQLite to use the index.
constexpr const char* kUnsettled =
    "state IN ('deferring', 'deferred', 'running', 'retrying', 'failed', 'orphaned')";

/// The WHERE clause of a query (from parameter ?20 on, so that callers can add their own
/// below it), and how to bind it. Shared by list, count and create_job.
struct Filter {
  std::string where = " WHERE 1 = 1";
  std::optional<MessageKey> after;

  explicit Filter(const Query& q, bool paged) {
    if (q.topic) where += " AND topic = ?20";
    if (q.subscription) where += " AND subscription = ?21";
    if (q.state) where += " AND state = ?22";
    // Compared as bytes: a NUL in a subject does not end it.
    if (q.subject_prefix) {
      where +=
          " AND substr(CAST(subject AS BLOB), 1, length(CAST(?23 AS BLOB))) = CAST(?23 AS BLOB)";
    }
    if (q.updated_before) where += " AND updated < ?24";
    if (q.subject_glob) where += " AND subject GLOB ?25";
    if (q.created_before) where += " AND created < ?26";
    if (q.current_only) where += " AND generation = 0";
    if (q.failure_group) {
      where += " AND failure_group = ?27 AND generation = 0 AND state IN ('failed', 'retrying')";
    }
    if (!q.any_state.empty()) {
      where += " AND state IN (";
      for (std::size_t i = 0; i < q.any_state.size(); ++i) {
        // The states' own names: constants, never text from outside.
        where += (i == 0 ? "'" : ", '") + std::string(to_string(q.any_state[i])) + "'";
      }
      where += ")";
    }
    if (paged && q.after) {
      after = parse_cursor(*q.after);
      if (!after)
        throw InvalidArgument("the cursor '" + *q.after + "' is not one this API gave out");
      where += " AND (topic, subscription, sequence_number, generation) > (?28, ?29, ?30, ?31)";
    }
  }

  void bind(const Query& q, Statement& s) const {
    if (q.topic) s.bind(20, *q.topic);
    if (q.subscription) s.bind(21, *q.subscription);
    if (q.state) s.bind(22, to_string(*q.state));
    if (q.subject_prefix) s.bind(23, *q.subject_prefix);
    if (q.updated_before) s.bind(24, to_ms(*q.updated_before));
    if (q.subject_glob) s.bind(25, *q.subject_glob);
    if (q.created_before) s.bind(26, to_ms(*q.created_before));
    if (q.failure_group) s.bind(27, *q.failure_group);
    if (after) {
      s.bind(28, after->topic).bind(29, after->subscription).bind(30, after->sequence_number);
      s.bind(31, after->generation);
    }
  }
};

std::int64_t now_ms() { return to_ms(Clock::now()); }

/// A row's lease has lapsed at `now` (a parameter): its own deadline passed and its owner's
/// heartbeat (which renews the leases of everything the owner holds) is older than the owner's
/// lease, or the owner is gone.
std::string lapsed(const char* now) {
  return std::string("(deferred_messages.lease_until < ") + now +
         " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = deferred_messages.owner"
         " AND i.heartbeat + i.lease_ms >= " + now + "))";
}

/// Which file a path names now (device and inode); nullopt when there is none.
std::optional<std::pair<dev_t, ino_t>> identity_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return std::pair{st.st_dev, st.st_ino};
}

/// One connection (WAL) for everything. Writes are group-committed: each writer queues its
/// change and waits; whichever writer finds no commit under way takes every queued change into
/// one transaction, each change in a savepoint of its own, so concurrent writers share one commit
/// and each learns exactly whether its own change was committed.
class SqliteLedger : public Ledger {
 public:
  SqliteLedger(std::string path, const OpenOptions& options)
      : path_(std::move(path)),
        migrate_(options.migrate),
        lean_(options.completed_rows == CompletedRows::kLean) {
    MutexLock lock(db_mutex_);
    try {
      open();
    } catch (const sqlite::SqliteError& e) {
      throw Error("cannot open the ledger " + path_ + ": " + e.what());
    }
    identity_ = identity_of(path_);
  }

  void record_all(const std::vector<DeferredMessage>& messages) override {
    write([this, &messages]() REQUIRES(db_mutex_) {
      for (const auto& m : messages) record_one(m);
      return std::size_t{0};
    });
  }

  std::size_t set_state_all(const std::vector<MessageKey>& keys, State state,
                            const std::string& error) override {
    return write([this, &keys, state, &error]() REQUIRES(db_mutex_) {
      std::size_t known = 0;
      for (const auto& key : keys) known += update_state(key, state, error);
      return known;
    });
  }

  void record_run(const MessageKey& key, const HandlerRun& run) override {
    write([this, &key, &run]() REQUIRES(db_mutex_) {
      insert_run(key, run);
      return std::size_t{0};
    });
  }

  void begin_run(const MessageKey& key, const HandlerRun& run) override {
    write([this, &key, &run]() REQUIRES(db_mutex_) {
      update_state(key, State::kRunning, {});
      insert_run(key, run);
      return std::size_t{0};
    });
  }

  bool forget(const MessageKey& key) override {
    return 0 != write([this, &key]() REQUIRES(db_mutex_) {
             {
               auto runs = db_->statement(std::string("DELETE FROM handler_runs") + kKeyWhere);
               bind_key(runs, key);
               runs.run();
             }
             auto s = db_->statement(std::string("DELETE FROM deferred_messages") + kKeyWhere +
                                     " AND (?5 = '' OR owner IN ('', ?5))");
             bind_key(s, key);
             s.bind(5, me_.id);
             s.run();
             return static_cast<std::size_t>(db_->changes());
           });
  }

  std::optional<DeferredMessage> find(const MessageKey& key) override {
    MutexLock lock(db_mutex_);
    auto s = db_->statement("SELECT " + kReadColumns + " FROM deferred_messages" + kKeyWhere);
    bind_key(s, key);
    if (!s.step()) return std::nullopt;
    return read_message(s);
  }

  std::vector<HandlerRun> runs(const MessageKey& key) override {
    MutexLock lock(db_mutex_);
    auto out = table_runs(key);
    if (!out.empty()) return out;
    // A lean completed message keeps its runs on its row.
    auto row = db_->statement(std::string("SELECT runs FROM deferred_messages") + kKeyWhere);
    bind_key(row, key);
    if (row.step()) out = decode_runs(row.text(0));
    return out;
  }

  Page list(const Query& q) override {
    Filter filter(q, true);
    auto sql = "SELECT " + kReadColumns + " FROM deferred_messages" + filter.where +
               " ORDER BY topic, subscription, sequence_number, generation LIMIT ?1";
    MutexLock lock(db_mutex_);
    auto s = db_->statement(sql);
    filter.bind(q, s);
    auto limit = std::max<std::size_t>(1, std::min<std::size_t>(q.limit, 1000));
    s.bind(1, static_cast<std::int64_t>(limit + 1));
    Page page;
    while (s.step()) page.items.push_back(read_message(s));
    if (page.items.size() > limit) {
      page.items.pop_back();
      page.next = cursor_of(page.items.back().key);
    }
    return page;
  }

  std::map<State, std::size_t> counts(const std::string& topic,
                                      const std::string& subscription) override {
    MutexLock lock(db_mutex_);
    auto s = db_->statement(
        "SELECT state, count(*) FROM deferred_messages WHERE generation = 0"
        " AND (?1 = '' OR topic = ?1) AND (?2 = '' OR subscription = ?2) GROUP BY state");
    s.bind(1, topic).bind(2, subscription);
    std::map<State, std::size_t> out;
    while (s.step()) {
      if (auto state = state_from_string(s.text(0))) {
        out[*state] = static_cast<std::size_t>(s.integer(1));
      }
    }
    return out;
  }

  std::optional<Clock::time_point> oldest_deferred(const std::string& topic,
                                                   const std::string& subscription) override {
    MutexLock lock(db_mutex_);
    auto s =
        db_->statement(std::string("SELECT min(created) FROM deferred_messages WHERE topic = ?1"
                                   " AND subscription = ?2 AND generation = 0 AND ") +
                       kUnsettled);
    s.bind(1, topic).bind(2, subscription);
    if (!s.step() || s.is_null(0) || s.integer(0) == 0) return std::nullopt;
    return from_ms(s.integer(0));
  }

  std::size_t prune(Clock::time_point before, Clock::time_point completed_before) override {
    // In batches, each a commit of its own: other writers wait for one batch at most. Each
    // condition has an index of its own (state, updated; superseded).
    constexpr std::int64_t kBatch = 2000;
    static const std::array<const char*, 3> kPrunable = {"state = 'completed' AND updated < ?2",
                                                         "state = 'dead-lettered' AND updated < ?1",
                                                         "generation > 0 AND updated < ?1"};
    std::size_t pruned = 0;
    for (const char* prunable : kPrunable) {
      while (true) {
        auto n = write([&]() REQUIRES(db_mutex_) {
          std::vector<std::pair<std::int64_t, MessageKey>> doomed;
          {
            auto s = db_->statement(
                std::string("SELECT rowid, topic, subscription, sequence_number, generation"
                            " FROM deferred_messages WHERE ") +
                prunable + " LIMIT ?3");
            s.bind(1, to_ms(before)).bind(2, to_ms(completed_before)).bind(3, kBatch);
            while (s.step()) {
              doomed.push_back({s.integer(0), {s.text(1), s.text(2), s.integer(3), s.integer(4)}});
            }
          }
          for (const auto& [rowid, key] : doomed) {
            auto runs = db_->statement(std::string("DELETE FROM handler_runs") + kKeyWhere);
            bind_key(runs, key);
            runs.run();
            auto row = db_->statement("DELETE FROM deferred_messages WHERE rowid = ?1");
            row.bind(1, rowid);
            row.run();
          }
          return doomed.size();
        });
        pruned += n;
        if (n < static_cast<std::size_t>(kBatch)) break;
      }
    }
    write([this, before]() REQUIRES(db_mutex_) {
      // Finished jobs go with ledger_retention, with the keys they kept.
      auto items = db_->statement(
          "DELETE FROM job_items WHERE job IN (SELECT id FROM jobs WHERE finished < ?1)");
      items.bind(1, to_ms(before));
      items.run();
      auto jobs = db_->statement("DELETE FROM jobs WHERE finished < ?1");
      jobs.bind(1, to_ms(before));
      jobs.run();
      return std::size_t{0};
    });
    return pruned;
  }

  std::optional<std::string> write_problem() override {
    try {
      write([this]() REQUIRES(db_mutex_) {
        auto s = db_->statement("INSERT OR REPLACE INTO ledger_probe (id, at) VALUES (1, ?1)");
        s.bind(1, to_ms(Clock::now()));
        s.run();
        return std::size_t{0};
      });
      return std::nullopt;
    } catch (const sqlite::SqliteError& e) {
      std::string why = e.what();
      // A connection opened on a read-only file stays read-only: open it again, so that the
      // next probe sees whether the file can be written now.
      if ((e.code() & 0xFF) == 8 /* SQLITE_READONLY */) reopen();
      return why;
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
  }

  // ---- failure groups and bulk jobs --------------------------------------------------------

  std::vector<FailureGroup> failure_groups(const FailureQuery& q) override {
    // Counted from the partial index alone (named: without statistics the planner takes the
    // state index and reads every row, five times slower at 100,000); then one indexed look-up
    // per group for its names and the member that failed last.
    constexpr const char* kMembers = " generation = 0 AND state IN ('failed', 'retrying')";
    std::string sql = std::string(
                          "SELECT failure_group, count(*), sum(state = 'failed'),"
                          " min(failure_at), max(failure_at) FROM deferred_messages"
                          " INDEXED BY deferred_messages_failures WHERE") +
                      kMembers + " AND failure_group <> ''";
    if (q.topic) sql += " AND topic = ?1";
    if (q.subscription) sql += " AND subscription = ?2";
    sql += " GROUP BY failure_group ORDER BY count(*) DESC, failure_group LIMIT ?3";
    MutexLock lock(db_mutex_);
    std::vector<FailureGroup> out;
    {
      auto s = db_->statement(sql);
      if (q.topic) s.bind(1, *q.topic);
      if (q.subscription) s.bind(2, *q.subscription);
      s.bind(3, static_cast<std::int64_t>(std::clamp<std::size_t>(q.limit, 1, 1000)));
      while (s.step()) {
        FailureGroup g;
        g.id = s.text(0);
        g.count = static_cast<std::size_t>(s.integer(1));
        g.failed = static_cast<std::size_t>(s.integer(2));
        g.retrying = g.count - g.failed;
        g.first_seen = from_ms(s.integer(3));
        g.last_seen = from_ms(s.integer(4));
        out.push_back(std::move(g));
      }
    }
    for (auto& g : out) {
      auto s = db_->statement(
          std::string("SELECT topic, subscription, sequence_number, generation, failure_handler,"
                      " failure_error, last_error, subject FROM deferred_messages"
                      " WHERE failure_group = ?1 AND") +
          kMembers + " ORDER BY failure_at DESC LIMIT 1");
      s.bind(1, g.id);
      if (!s.step()) continue;
      g.topic = s.text(0);
      g.subscription = s.text(1);
      g.sample = {g.topic, g.subscription, s.integer(2), s.integer(3)};
      g.handler = s.text(4);
      g.error = s.text(5);
      g.sample_error = s.text(6);
      g.sample_subject = s.text(7);
    }
    return out;
  }

  std::size_t count(const Query& q) override {
    Filter filter(q, false);
    MutexLock lock(db_mutex_);
    auto s = db_->statement("SELECT count(*) FROM deferred_messages" + filter.where);
    filter.bind(q, s);
    return s.step() ? static_cast<std::size_t>(s.integer(0)) : 0;
  }

  Job create_job(const Job& job, const Query& q) override {
    Filter filter(q, false);
    Job out = job;
    out.created = out.updated = Clock::now();
    out.state = JobState::kQueued;
    write([&]() REQUIRES(db_mutex_) {
      {
        auto s = db_->statement(
            "INSERT INTO job_items (job, topic, subscription, sequence_number, generation)"
            " SELECT ?1, topic, subscription, sequence_number, generation FROM deferred_messages" +
            filter.where + " AND generation = 0");
        filter.bind(q, s);
        s.bind(1, job.id);
        s.run();
        out.total = static_cast<std::size_t>(db_->changes());
      }
      auto s = db_->statement(std::string("INSERT INTO jobs (") + kJobColumns +
                              ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, ?9, ?9, NULL, '')");
      s.bind(1, out.id).bind(2, to_string(out.action)).bind(3, out.filter).bind(4, out.reason);
      s.bind(5, out.description).bind(6, out.created_by).bind(7, to_string(out.state));
      s.bind(8, static_cast<std::int64_t>(out.total)).bind(9, to_ms(out.created));
      s.run();
      return std::size_t{0};
    });
    out.created = out.updated = from_ms(to_ms(out.created));
    return out;
  }

  std::optional<Job> find_job(const std::string& id) override {
    MutexLock lock(db_mutex_);
    auto s = db_->statement(std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = ?1");
    s.bind(1, id);
    if (!s.step()) return std::nullopt;
    return read_job(s);
  }

  std::vector<Job> jobs(std::size_t limit, bool unfinished_only) override {
    MutexLock lock(db_mutex_);
    auto s = db_->statement(std::string("SELECT ") + kJobColumns + " FROM jobs" +
                            (unfinished_only
                                 ? " WHERE state IN ('queued', 'running') ORDER BY created, id"
                                 : " ORDER BY created DESC, id DESC") +
                            " LIMIT ?1");
    s.bind(1, static_cast<std::int64_t>(std::clamp<std::size_t>(limit, 1, 1000)));
    std::vector<Job> out;
    while (s.step()) out.push_back(read_job(s));
    return out;
  }

  std::vector<MessageKey> job_pending(const std::string& id, std::size_t limit) override {
    MutexLock lock(db_mutex_);
    auto s = db_->statement(
        "SELECT topic, subscription, sequence_number, generation FROM job_items"
        " WHERE job = ?1 AND ok IS NULL"
        " ORDER BY topic, subscription, sequence_number, generation LIMIT ?2");
    s.bind(1, id).bind(2, static_cast<std::int64_t>(std::max<std::size_t>(limit, 1)));
    std::vector<MessageKey> out;
    while (s.step()) out.push_back({s.text(0), s.text(1), s.integer(2), s.integer(3)});
    return out;
  }

  void record_job_items(const std::string& id, const std::vector<JobItem>& items) override {
    write([&]() REQUIRES(db_mutex_) {
      std::int64_t done = 0, failed = 0;
      for (const auto& item : items) {
        auto s = db_->statement(
            "UPDATE job_items SET ok = ?6, error = ?7 WHERE job = ?5 AND topic = ?1"
            " AND subscription = ?2 AND sequence_number = ?3 AND generation = ?4 AND ok IS NULL");
        bind_key(s, item.key);
        s.bind(5, id).bind(6, std::int64_t{item.ok ? 1 : 0}).bind(7, item.error);
        s.run();
        if (db_->changes() == 0) continue;  // Recorded before (a resumed job).
        (item.ok ? done : failed) += 1;
      }
      auto s = db_->statement(
          "UPDATE jobs SET done = done + ?2, failed = failed + ?3, updated = ?4 WHERE id = ?1");
      s.bind(1, id).bind(2, done).bind(3, failed).bind(4, to_ms(Clock::now()));
      s.run();
      return std::size_t{0};
    });
  }

  std::vector<JobItem> job_failures(const std::string& id, std::size_t limit) override {
    MutexLock lock(db_mutex_);
    auto s = db_->statement(
        "SELECT topic, subscription, sequence_number, generation, error FROM job_items"
        " WHERE job = ?1 AND ok = 0"
        " ORDER BY topic, subscription, sequence_number, generation LIMIT ?2");
    s.bind(1, id).bind(2, static_cast<std::int64_t>(std::max<std::size_t>(limit, 1)));
    std::vector<JobItem> out;
    while (s.step()) {
      out.push_back({{s.text(0), s.text(1), s.integer(2), s.integer(3)}, false, s.text(4)});
    }
    return out;
  }

  bool set_job_state(const std::string& id, JobState state, const std::string& error) override {
    return 0 != write([&]() REQUIRES(db_mutex_) {
             bool final = state != JobState::kQueued && state != JobState::kRunning;
             auto s = db_->statement(
                 "UPDATE jobs SET state = ?2, updated = ?3,"
                 " finished = CASE WHEN ?4 THEN ?3 ELSE finished END,"
                 " error = CASE WHEN ?5 = '' THEN error ELSE ?5 END"
                 " WHERE id = ?1 AND state IN ('queued', 'running')");
             s.bind(1, id).bind(2, to_string(state)).bind(3, to_ms(Clock::now()));
             s.bind(4, std::int64_t{final ? 1 : 0}).bind(5, error);
             s.run();
             return static_cast<std::size_t>(db_->changes());
           });
  }

  // ---- instances sharing the ledger --------------------------------------------------------

  void join(const InstanceInfo& me) override {
    // One transaction that waits for any other writer: of two processes joining at once, the
    // second sees the first's heartbeat.
    write([this, &me]() REQUIRES(db_mutex_) {
      auto now = now_ms();
      {
        auto s = db_->statement("SELECT id, host, pid, heartbeat, lease_ms FROM instances");
        while (s.step()) {
          if (s.text(0) == me.id && s.integer(2) == me.pid && s.text(1) == me.host) continue;
          if (instance_alive(s.text(1), s.integer(2), s.integer(3), s.integer(4), now)) {
            throw Error("the ledger " + path_ + " is in use by " +
                        in_use_by(s.text(0), s.text(1), s.integer(2), now - s.integer(3)) +
                        ": a SQLite ledger serves one metro process; give each instance a file "
                        "of its own, or let the instances share one postgresql:// ledger");
          }
        }
      }
      // Every other instance of this file is gone: what they held is this one's now.
      db_->statement("DELETE FROM instances").run();
      db_->statement("UPDATE deferred_messages SET lease_until = 0 WHERE lease_until <> 0").run();
      auto s = db_->statement(
          "INSERT INTO instances (id, host, pid, started, heartbeat, in_flight, lease_ms)"
          " VALUES (?1, ?2, ?3, ?4, ?4, 0, ?5)");
      s.bind(1, me.id).bind(2, me.host).bind(3, me.pid).bind(4, now);
      s.bind(5, static_cast<std::int64_t>(me.lease.count()));
      s.run();
      me_ = me;
      return std::size_t{0};
    });
  }

  void heartbeat(std::size_t in_flight) override {
    write([this, in_flight]() REQUIRES(db_mutex_) {
      if (me_.id.empty()) return std::size_t{0};
      auto now = now_ms();
      {
        auto s = db_->statement(
            "INSERT INTO instances (id, host, pid, started, heartbeat, in_flight, lease_ms)"
            " VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE SET"
            " heartbeat = excluded.heartbeat, in_flight = excluded.in_flight");
        s.bind(1, me_.id).bind(2, me_.host).bind(3, me_.pid).bind(4, now);
        s.bind(5, static_cast<std::int64_t>(in_flight));
        s.bind(6, static_cast<std::int64_t>(me_.lease.count()));
        s.run();
      }
      return std::size_t{0};
    });
  }

  void leave() override {
    write([this]() REQUIRES(db_mutex_) {
      if (me_.id.empty()) return std::size_t{0};
      auto d = db_->statement("DELETE FROM instances WHERE id = ?1");
      d.bind(1, me_.id);
      d.run();
      // Leases are held on unfinished rows only (the owner index has those alone).
      auto s = db_->statement(
          std::string(
              "UPDATE deferred_messages SET lease_until = 0 WHERE owner = ?1 AND state IN ") +
          kLeasedStates);
      s.bind(1, me_.id);
      s.run();
      return std::size_t{0};
    });
  }

  std::vector<Instance> instances() override {
    MutexLock lock(db_mutex_);
    auto now = now_ms();
    auto s = db_->statement(
        "SELECT id, host, pid, started, heartbeat, in_flight, lease_ms FROM instances ORDER BY id");
    std::vector<Instance> out;
    while (s.step()) {
      Instance i;
      i.id = s.text(0);
      i.host = s.text(1);
      i.pid = s.integer(2);
      i.started = from_ms(s.integer(3));
      i.heartbeat = from_ms(s.integer(4));
      i.in_flight = static_cast<std::size_t>(s.integer(5));
      i.live = s.integer(4) + s.integer(6) >= now;
      out.push_back(std::move(i));
    }
    return out;
  }

  std::vector<DeferredMessage> claim(const Claim& c) override {
    std::vector<DeferredMessage> out;
    write([this, &c, &out]() REQUIRES(db_mutex_) {
      out.clear();
      std::string states;
      for (auto st : c.states) {
        states.append(states.empty() ? "'" : ", '").append(to_string(st)).append("'");
      }
      if (states.empty()) return std::size_t{0};
      auto now = now_ms();
      // The write transaction holds the file: no other connection claims at the same time.
      {
        auto s = db_->statement(
            "SELECT " + kReadColumns +
            " FROM deferred_messages WHERE topic = ?1 AND subscription = ?2 AND generation = 0"
            " AND sequence_number > ?3 AND state IN (" +
            states +
            ") AND ("
            " (?4 AND owner = ?5 AND (?6 = 0 OR updated < ?6))"
            " OR (?7 AND owner <> ?5 AND (owner = '' OR " +
            lapsed("?8") +
            ")))"
            " ORDER BY sequence_number LIMIT ?9");
        s.bind(1, c.topic).bind(2, c.subscription).bind(3, c.after);
        s.bind(4, c.own ? 1 : 0).bind(5, me_.id);
        s.bind(6, c.own_updated_before ? to_ms(*c.own_updated_before) : std::int64_t{0});
        s.bind(7, c.lapsed ? 1 : 0).bind(8, now);
        s.bind(9, static_cast<std::int64_t>(std::max<std::size_t>(1, c.limit)));
        while (s.step()) out.push_back(read_message(s));
      }
      auto lease_until = me_.id.empty() ? 0 : now + me_.lease.count();
      for (auto& m : out) {
        auto u = db_->statement(std::string("UPDATE deferred_messages SET owner = ?5,"
                                            " lease_until = ?6") +
                                kKeyWhere);
        bind_key(u, m.key);
        u.bind(5, me_.id).bind(6, lease_until);
        u.run();
        m.lease_until = from_ms(lease_until);  // `owner` stays whom it was taken from.
      }
      return out.size();
    });
    return out;
  }

  std::optional<DeferredMessage> claim_one(const MessageKey& key) override {
    std::optional<DeferredMessage> out;
    write([this, &key, &out]() REQUIRES(db_mutex_) {
      out.reset();
      auto now = now_ms();
      auto lease_until = me_.id.empty() ? 0 : now + me_.lease.count();
      auto u = db_->statement(
          std::string("UPDATE deferred_messages SET owner = ?5, lease_until = ?6") + kKeyWhere +
          " AND state NOT IN ('completed', 'dead-lettered')"
          " AND (owner IN ('', ?5) OR state NOT IN " + kLeasedStates + " OR " + lapsed("?7") +
          ")");
      bind_key(u, key);
      u.bind(5, me_.id).bind(6, lease_until).bind(7, now);
      u.run();
      if (db_->changes() == 0) return std::size_t{0};
      auto s = db_->statement("SELECT " + kReadColumns + " FROM deferred_messages" + kKeyWhere);
      bind_key(s, key);
      if (s.step()) out = read_message(s);
      return std::size_t{1};
    });
    return out;
  }

  std::unique_ptr<Exclusive> try_exclusive(std::string_view) override {
    return std::make_unique<Exclusive>();  // One process per file: always this one.
  }

  std::string instance_id() const override {
    MutexLock lock(db_mutex_);
    return me_.id;
  }

  void restore(
      const std::vector<std::pair<DeferredMessage, std::vector<HandlerRun>>>& rows) override {
    write([this, &rows]() REQUIRES(db_mutex_) {
      for (const auto& [m, runs] : rows) {
        {
          auto d = db_->statement(std::string("DELETE FROM handler_runs") + kKeyWhere);
          bind_key(d, m.key);
          d.run();
        }
        auto s = db_->statement(std::string("INSERT OR REPLACE INTO deferred_messages (") +
                                kColumns +
                                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,"
                                " ?13, ?14, ?15, ?16, ?17, '')");
        bind_key(s, m.key);
        s.bind(5, m.subject).bind(6, m.message_id).bind(7, m.correlation_id).bind(8, m.body);
        s.bind(9, std::int64_t{m.body_truncated ? 1 : 0}).bind(10, to_string(m.state));
        s.bind(11, to_ms(m.created)).bind(12, to_ms(m.updated)).bind(13, m.last_error);
        s.bind(14, to_ms(m.enqueued_time)).bind(15, m.owner).bind(16, to_ms(m.lease_until));
        s.bind(17, m.trace_parent);
        s.run();
        if (m.body_dropped) {
          auto d = db_->statement(std::string("UPDATE deferred_messages SET body_dropped = 1") +
                                  kKeyWhere);
          bind_key(d, m.key);
          d.run();
        }
        // The runs file the row under its failure group again (a row without runs: at the next
        // open).
        for (const auto& r : runs) insert_run(m.key, r);
      }
      return rows.size();
    });
  }

  WriteStats write_stats() const override {
    return {writes_.load(std::memory_order_relaxed), commits_.load(std::memory_order_relaxed)};
  }

  std::vector<MigrationStatus> migrations() override {
    MutexLock lock(db_mutex_);
    auto version = sqlite::schema_version(*db_);
    std::vector<MigrationStatus> out;
    for (const auto& m : sqlite_migrations()) {
      out.push_back({m.version, std::string(m.description), m.version <= version});
    }
    return out;
  }

 private:
  /// A queued write: run inside the group's transaction; `result` is its answer.
  struct Pending {
    std::function<std::size_t()> apply;
    bool done = false;
    std::size_t result = 0;
    std::exception_ptr error;
  };

  void open() REQUIRES(db_mutex_) {
    db_ = std::make_unique<sqlite::Database>(path_);
    db_->exec("PRAGMA journal_mode=WAL");
    db_->exec("PRAGMA synchronous=NORMAL");
    if (!migrate_) return;  // Opened to read its migrations: nothing written.
    sqlite::migrate(*db_, sqlite_migrations());
    try {
      file_unfiled();
    } catch (const sqlite::SqliteError&) {
      // A file that cannot be written now: filed at the next open.
    }
  }

  void reopen() {
    MutexLock lock(db_mutex_);
    if (identity_of(path_) != identity_) return;  // Replaced or gone: not this file any more.
    try {
      open();
    } catch (const std::exception&) {
      // Still not writable; the next probe tries again.
    }
  }

  /// Throws when the file at the ledger's path is not the one this connection writes: writes to
  /// a deleted or replaced file would be lost.
  void check_file() {
    if (identity_ && identity_of(path_) != identity_) {
      throw sqlite::SqliteError("the ledger file " + path_ +
                                    " was deleted or replaced while metro ran; its writes would "
                                    "be lost (restart metro to use the file there now)",
                                14 /* SQLITE_CANTOPEN */);
    }
  }

  // The single-row writes the public ones are made of. Call inside `write`.

  void record_one(const DeferredMessage& m) REQUIRES(db_mutex_) {
    auto now = to_ms(Clock::now());
    std::optional<std::string> known_id;
    std::int64_t known_enqueued = 0;
    std::string known_state;
    {
      auto s = db_->statement(std::string("SELECT message_id, enqueued, state FROM "
                                          "deferred_messages") +
                              kKeyWhere);
      bind_key(s, m.key);
      if (s.step()) {
        known_id = s.text(0);
        known_enqueued = s.integer(1);
        known_state = s.text(2);
      }
    }
    if (known_id) {
      auto enqueued = to_ms(m.enqueued_time);
      bool other = is_final(state_from_string(known_state).value_or(State::kDeferring)) ||
                   (!known_id->empty() && !m.message_id.empty() && *known_id != m.message_id) ||
                   (known_enqueued != 0 && enqueued != 0 && known_enqueued != enqueued);
      if (other) supersede(m.key, now);
    }
    auto s = db_->statement(
        std::string("INSERT INTO deferred_messages (") + kColumns +
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,"
        " '')"
        " ON CONFLICT (topic, subscription, sequence_number, generation) DO UPDATE SET"
        " state = excluded.state, updated = excluded.updated, owner = excluded.owner,"
        " lease_until = excluded.lease_until,"
        " trace_parent = CASE WHEN trace_parent = '' THEN excluded.trace_parent"
        " ELSE trace_parent END,"
        " enqueued = CASE WHEN enqueued = 0 THEN excluded.enqueued ELSE enqueued END,"
        " message_id = CASE WHEN message_id = '' THEN excluded.message_id ELSE message_id END");
    MessageKey key = m.key;
    key.generation = 0;
    bind_key(s, key);
    s.bind(5, m.subject).bind(6, m.message_id).bind(7, m.correlation_id).bind(8, m.body);
    s.bind(9, std::int64_t{m.body_truncated ? 1 : 0}).bind(10, to_string(m.state));
    s.bind(11, m.created.time_since_epoch().count() != 0 ? to_ms(m.created) : now);
    s.bind(12, now).bind(13, m.last_error).bind(14, to_ms(m.enqueued_time));
    s.bind(15, me_.id).bind(16, me_.id.empty() || releases_lease(m.state) ? 0 : now + me_.lease.count());
    s.bind(17, m.trace_parent);
    s.run();
  }

  /// Moves the current record of a sequence number (and its runs) to the next generation.
  void supersede(MessageKey key, std::int64_t now) REQUIRES(db_mutex_) {
    key.generation = 0;
    std::int64_t next = 1;
    {
      auto s = db_->statement(
          "SELECT coalesce(max(generation), 0) + 1 FROM deferred_messages"
          " WHERE topic = ?1 AND subscription = ?2 AND sequence_number = ?3");
      s.bind(1, key.topic).bind(2, key.subscription).bind(3, key.sequence_number);
      if (s.step()) next = s.integer(0);
    }
    {
      auto s = db_->statement(std::string("UPDATE handler_runs SET generation = ?5") + kKeyWhere);
      bind_key(s, key);
      s.bind(5, next);
      s.run();
    }
    auto s = db_->statement(
        std::string("UPDATE deferred_messages SET generation = ?5, updated = ?6,"
                    " last_error = CASE WHEN state IN ('completed', 'dead-lettered') THEN"
                    " last_error ELSE ?7 END") +
        kKeyWhere);
    bind_key(s, key);
    s.bind(5, next).bind(6, now);
    s.bind(7, kSupersededNote);
    s.run();
  }

  std::size_t update_state(const MessageKey& key, State state, const std::string& error)
      REQUIRES(db_mutex_) {
    // A lean completion drops the body and moves the runs onto the row.
    bool lean = lean_ && state == State::kCompleted;
    std::string runs;
    if (lean) runs = encode_runs(runs_to_keep(table_runs(key)));
    // Final states are never left: a late writer cannot revive a settled message. Any other
    // state is written only by the row's owner (the fencing token; ?8 empty: not an instance).
    auto s =
        db_->statement(std::string("UPDATE deferred_messages SET state = ?5, updated = ?6,"
                                   " last_error = CASE WHEN ?7 = '' THEN last_error ELSE ?7 END,"
                                   " lease_until = CASE WHEN ?9 THEN 0 ELSE lease_until END,"
                                   " body = CASE WHEN ?11 THEN X'' ELSE body END,"
                                   " body_dropped = CASE WHEN ?11 THEN 1 ELSE body_dropped END,"
                                   " runs = CASE WHEN ?11 THEN ?12 ELSE runs END") +
                       kKeyWhere +
                       " AND state NOT IN ('completed', 'dead-lettered')"
                       " AND (?10 OR ?8 = '' OR owner IN ('', ?8))");
    bind_key(s, key);
    s.bind(5, to_string(state)).bind(6, to_ms(Clock::now())).bind(7, error);
    s.bind(8, me_.id).bind(9, releases_lease(state) ? 1 : 0).bind(10, is_final(state) ? 1 : 0);
    s.bind(11, lean ? 1 : 0).bind(12, runs);
    s.run();
    auto changed = static_cast<std::size_t>(db_->changes());
    if (lean && changed != 0) {
      auto d = db_->statement(std::string("DELETE FROM handler_runs") + kKeyWhere);
      bind_key(d, key);
      d.run();
    }
    return changed;
  }

  /// The runs of a message in the runs table (not those collapsed on a lean row).
  std::vector<HandlerRun> table_runs(const MessageKey& key) REQUIRES(db_mutex_) {
    auto s = db_->statement(
        std::string("SELECT handler, attempt, outcome, started, finished, error, task_id, retries"
                    " FROM handler_runs") +
        kKeyWhere + " ORDER BY started, handler, attempt");
    bind_key(s, key);
    std::vector<HandlerRun> out;
    while (s.step()) {
      HandlerRun r;
      r.handler = s.text(0);
      r.attempt = static_cast<int>(s.integer(1));
      r.outcome = outcome_from_string(s.text(2)).value_or(HandlerRun::Outcome::kRunning);
      r.started = from_ms(s.integer(3));
      if (!s.is_null(4) && s.integer(4) != 0) r.finished = from_ms(s.integer(4));
      r.error = s.text(5);
      r.task_id = s.text(6);
      r.retries = static_cast<int>(s.integer(7));
      out.push_back(std::move(r));
    }
    return out;
  }

  void insert_run(const MessageKey& key, const HandlerRun& run) REQUIRES(db_mutex_) {
    // A run that ends after its message completed lean goes on the row with the others.
    auto s = db_->statement(
        std::string("INSERT OR REPLACE INTO handler_runs (topic, subscription, sequence_number,"
                    " generation, handler, attempt, outcome, started, finished, error, task_id,"
                    " retries) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12"
                    " WHERE NOT EXISTS (SELECT 1 FROM deferred_messages") +
        kKeyWhere + " AND body_dropped = 1)");
    bind_key(s, key);
    s.bind(5, run.handler).bind(6, std::int64_t{run.attempt});
    s.bind(7, to_string(run.outcome)).bind(8, to_ms(run.started));
    if (run.finished) {
      s.bind(9, to_ms(*run.finished));
    } else {
      s.bind_null(9);
    }
    s.bind(10, run.error).bind(11, run.task_id).bind(12, std::int64_t{run.retries});
    s.run();
    if (db_->changes() == 0) {
      std::vector<HandlerRun> runs;
      {
        auto row = db_->statement(std::string("SELECT runs FROM deferred_messages") + kKeyWhere);
        bind_key(row, key);
        if (row.step()) runs = decode_runs(row.text(0));
      }
      std::erase_if(runs, [&](const HandlerRun& r) {
        return r.handler == run.handler && r.attempt == run.attempt;
      });
      runs.push_back(run);
      auto u = db_->statement(std::string("UPDATE deferred_messages SET runs = ?5") + kKeyWhere);
      bind_key(u, key);
      u.bind(5, encode_runs(runs_to_keep(runs)));
      u.run();
      return;  // Settled: no failure group to file it under.
    }
    bool failed =
        run.outcome == HandlerRun::Outcome::kFailed || run.outcome == HandlerRun::Outcome::kRetry;
    if (failed && run.finished) file_failure(key, run.handler, run.error, to_ms(*run.finished));
  }

  /// Files a message under the failure group of a run that failed.
  void file_failure(const MessageKey& key, const std::string& handler, const std::string& error,
                    std::int64_t at) REQUIRES(db_mutex_) {
    auto normalised = normalise_error(error);
    auto s = db_->statement(
        std::string("UPDATE deferred_messages SET failure_group = ?5, failure_handler = ?6,"
                    " failure_error = ?7, failure_at = ?8") +
        kKeyWhere);
    bind_key(s, key);
    s.bind(5, failure_group_id(key.topic, key.subscription, handler, normalised));
    s.bind(6, handler).bind(7, normalised).bind(8, at);
    s.run();
  }

  /// Files the failed and retrying rows that have no group yet (parked by a metro before
  /// failure groups, or by a ledger of another kind) under the group of their last failed run.
  void file_unfiled() REQUIRES(db_mutex_) {
    struct Unfiled {
      MessageKey key;
      std::string last_error;
      std::int64_t updated;
    };
    std::vector<Unfiled> rows;
    {
      auto s = db_->statement(
          "SELECT topic, subscription, sequence_number, generation, last_error, updated"
          " FROM deferred_messages WHERE generation = 0 AND state IN ('failed', 'retrying')"
          " AND failure_group = ''");
      while (s.step()) {
        rows.push_back(
            {{s.text(0), s.text(1), s.integer(2), s.integer(3)}, s.text(4), s.integer(5)});
      }
    }
    if (rows.empty()) return;
    sqlite::Transaction tx(*db_);
    for (const auto& r : rows) {
      auto run = db_->statement(
          std::string("SELECT handler, error, coalesce(finished, started) FROM handler_runs") +
          kKeyWhere + " AND outcome IN ('failed', 'retry') ORDER BY started DESC LIMIT 1");
      bind_key(run, r.key);
      if (run.step()) {
        file_failure(r.key, run.text(0), run.text(1), run.integer(2));
      } else {
        // No run recorded: the error as the message has it (`handler: why`).
        auto colon = r.last_error.find(": ");
        auto handler = colon == std::string::npos ? std::string() : r.last_error.substr(0, colon);
        auto why = colon == std::string::npos ? r.last_error : r.last_error.substr(colon + 2);
        file_failure(r.key, handler, why, r.updated);
      }
    }
    tx.commit();
  }

  /// Queues `apply`, waits until the transaction holding it has committed, returns its answer.
  std::size_t write(std::function<std::size_t()> apply) EXCLUDES(queue_mutex_, db_mutex_) {
    auto pending = std::make_shared<Pending>();
    pending->apply = std::move(apply);
    MutexLock lock(queue_mutex_);
    queue_.push_back(pending);
    while (!pending->done) {
      if (committing_) {
        committed_.wait(lock);
        continue;
      }
      committing_ = true;
      auto group = std::move(queue_);
      queue_.clear();
      lock.unlock();
      commit(group);
      lock.lock();
      for (auto& p : group) p->done = true;
      committing_ = false;
      committed_.notify_all();
    }
    if (pending->error) std::rethrow_exception(pending->error);
    return pending->result;
  }

  void commit(std::vector<std::shared_ptr<Pending>>& group) EXCLUDES(db_mutex_) {
    MutexLock lock(db_mutex_);
    std::exception_ptr failed;
    try {
      check_file();
      sqlite::Transaction tx(*db_);
      for (auto& p : group) {
        sqlite::Savepoint savepoint(*db_, "pending_write");
        try {
          p->result = p->apply();
          savepoint.release();
        } catch (...) {
          p->error = std::current_exception();  // Rolled back to the savepoint: this one alone.
          // Some errors (a full disk, I/O) end the whole transaction: then nothing commits.
          if (!db_->in_transaction()) throw;
        }
      }
      tx.commit();
      commits_.fetch_add(1, std::memory_order_relaxed);
      for (auto& p : group) {
        if (!p->error) writes_.fetch_add(1, std::memory_order_relaxed);
      }
    } catch (...) {
      failed = std::current_exception();
    }
    if (failed) {
      for (auto& p : group) p->error = failed;
    }
  }

  const std::string path_;
  const bool migrate_;
  const bool lean_;  // completed_rows = "lean".
  std::atomic<std::uint64_t> writes_{0};
  std::atomic<std::uint64_t> commits_{0};
  std::optional<std::pair<dev_t, ino_t>> identity_;  // The file opened; set once.
  mutable Mutex db_mutex_;                           // The connection and its statements.
  std::unique_ptr<sqlite::Database> db_ GUARDED_BY(db_mutex_);
  InstanceInfo me_ GUARDED_BY(db_mutex_);  // Set by join; empty id before.
  Mutex queue_mutex_;
  CondVar committed_;
  std::vector<std::shared_ptr<Pending>> queue_ GUARDED_BY(queue_mutex_);
  bool committing_ GUARDED_BY(queue_mutex_) = false;
};

}  // namespace

namespace detail {

std::unique_ptr<Ledger> open_sqlite_ledger(const std::string& path, const OpenOptions& options) {
  return std::make_unique<SqliteLedger>(path, options);
}

}  // namespace detail

}  // namespace metro::ledger
