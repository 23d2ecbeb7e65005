// SqliteLedger: the ledger in one SQLite file (WAL), one connection guarded by a mutex.

#include <array>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include <sqlite3.h>

#include <metro/ledger/ledger.hpp>

namespace metro::ledger {
namespace {

constexpr std::array<std::string_view, 8> kStates = {"deferring",     "deferred", "running",
                                                     "retrying",      "failed",   "completed",
                                                     "dead-lettered", "orphaned"};
constexpr std::array<std::string_view, 4> kOutcomes = {"running", "succeeded", "failed", "retry"};

std::int64_t to_ms(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}
Clock::time_point from_ms(std::int64_t ms) {
  return Clock::time_point(std::chrono::milliseconds(ms));
}

/// A prepared statement borrowed from the ledger's cache for one use: reset and unbound when the
/// borrow ends.
class Statement {
 public:
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  ~Statement() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  /// Steps once; true when a row is ready.
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw Error(std::string("ledger: ") + sqlite3_errmsg(db_));
  }
  std::string text(int i) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, i));
    return p == nullptr ? std::string()
                        : std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, i)));
  }
  std::int64_t integer(int i) const { return sqlite3_column_int64(stmt_, i); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

/// Binds a message key to parameters ?1, ?2, ?3, as every statement on one message does.
void bind_key(Statement& s, const MessageKey& key) {
  s.bind(1, key.topic).bind(2, key.subscription).bind(3, key.sequence_number);
}

constexpr const char* kColumns =
    "topic, subscription, sequence_number, subject, message_id, correlation_id, body, "
    "body_truncated, state, created, updated, last_error";

DeferredMessage read_message(const Statement& s) {
  DeferredMessage m;
  m.key = {s.text(0), s.text(1), s.integer(2)};
  m.subject = s.text(3);
  m.message_id = s.text(4);
  m.correlation_id = s.text(5);
  m.body = s.text(6);
  m.body_truncated = s.integer(7) != 0;
  m.state = state_from_string(s.text(8)).value_or(State::kOrphaned);
  m.created = from_ms(s.integer(9));
  m.updated = from_ms(s.integer(10));
  m.last_error = s.text(11);
  return m;
}

// The cursor is "topic\nsubscription\nsequence": the last key of the previous page.
std::string cursor_of(const MessageKey& k) {
  return k.topic + "\n" + k.subscription + "\n" + std::to_string(k.sequence_number);
}

std::optional<MessageKey> parse_cursor(const std::string& cursor) {
  auto a = cursor.find('\n');
  auto b = a == std::string::npos ? a : cursor.find('\n', a + 1);
  if (b == std::string::npos) return std::nullopt;
  try {
    return MessageKey{cursor.substr(0, a), cursor.substr(a + 1, b - a - 1),
                      std::stoll(cursor.substr(b + 1))};
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

/// One connection (WAL) for everything. Writes are group-committed: each writer queues its
/// change and waits; whichever writer finds no commit under way takes every queued change into
/// one transaction, so concurrent writers share one fsync instead of queueing for one each.
class SqliteLedger : public Ledger {
 public:
  explicit SqliteLedger(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string why = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw Error("cannot open the ledger " + path + ": " + why);
    }
    sqlite3_busy_timeout(db_, 5000);
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=NORMAL");
    exec(
        "CREATE TABLE IF NOT EXISTS deferred_messages ("
        " topic TEXT NOT NULL, subscription TEXT NOT NULL, sequence_number INTEGER NOT NULL,"
        " subject TEXT NOT NULL, message_id TEXT NOT NULL, correlation_id TEXT NOT NULL,"
        " body BLOB NOT NULL, body_truncated INTEGER NOT NULL, state TEXT NOT NULL,"
        " created INTEGER NOT NULL, updated INTEGER NOT NULL, last_error TEXT NOT NULL,"
        " PRIMARY KEY (topic, subscription, sequence_number))");
    exec(
        "CREATE INDEX IF NOT EXISTS deferred_messages_state ON deferred_messages (state, updated)");
    exec(
        "CREATE INDEX IF NOT EXISTS deferred_messages_age ON deferred_messages"
        " (topic, subscription, state, created)");
    exec(
        "CREATE TABLE IF NOT EXISTS handler_runs ("
        " topic TEXT NOT NULL, subscription TEXT NOT NULL, sequence_number INTEGER NOT NULL,"
        " handler TEXT NOT NULL, attempt INTEGER NOT NULL, outcome TEXT NOT NULL,"
        " started INTEGER NOT NULL, finished INTEGER, error TEXT NOT NULL,"
        " PRIMARY KEY (topic, subscription, sequence_number, handler, attempt))");
  }

  ~SqliteLedger() override {
    for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
    sqlite3_close(db_);
  }
  SqliteLedger(const SqliteLedger&) = delete;
  SqliteLedger& operator=(const SqliteLedger&) = delete;

  void record_all(const std::vector<DeferredMessage>& messages) override {
    write([this, &messages] {
      for (const auto& m : messages) {
        auto s = statement(
            "INSERT INTO deferred_messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, "
            "?12)"
            " ON CONFLICT (topic, subscription, sequence_number) DO UPDATE SET"
            " state = excluded.state, updated = excluded.updated");
        auto now = to_ms(Clock::now());
        bind_key(s, m.key);
        s.bind(4, m.subject).bind(5, m.message_id).bind(6, m.correlation_id).bind(7, m.body);
        s.bind(8, std::int64_t{m.body_truncated ? 1 : 0}).bind(9, std::string(to_string(m.state)));
        s.bind(10, m.created.time_since_epoch().count() != 0 ? to_ms(m.created) : now);
        s.bind(11, now).bind(12, m.last_error);
        s.step();
      }
      return std::size_t{0};
    });
  }

  std::size_t set_state_all(const std::vector<MessageKey>& keys, State state,
                            const std::string& error) override {
    return write([this, &keys, state, &error] {
      std::size_t known = 0;
      for (const auto& key : keys) known += update_state(key, state, error);
      return known;
    });
  }

  void record_run(const MessageKey& key, const HandlerRun& run) override {
    write([this, &key, &run] {
      insert_run(key, run);
      return std::size_t{0};
    });
  }

  void begin_run(const MessageKey& key, const HandlerRun& run) override {
    write([this, &key, &run] {
      update_state(key, State::kRunning, {});
      insert_run(key, run);
      return std::size_t{0};
    });
  }

  bool forget(const MessageKey& key) override {
    return 0 != write([this, &key] {
             auto runs = statement(
                 "DELETE FROM handler_runs WHERE topic = ?1 AND subscription = ?2 AND"
                 " sequence_number = ?3");
             bind_key(runs, key);
             runs.step();
             auto s = statement(
                 "DELETE FROM deferred_messages WHERE topic = ?1 AND subscription = ?2 AND"
                 " sequence_number = ?3");
             bind_key(s, key);
             s.step();
             return static_cast<std::size_t>(sqlite3_changes(db_));
           });
  }

  std::optional<DeferredMessage> find(const MessageKey& key) override {
    std::lock_guard lock(db_mutex_);
    auto s = statement((std::string("SELECT ") + kColumns +
                        " FROM deferred_messages WHERE topic = ?1 AND subscription = ?2 AND"
                        " sequence_number = ?3"));
    bind_key(s, key);
    if (!s.step()) return std::nullopt;
    return read_message(s);
  }

  std::vector<HandlerRun> runs(const MessageKey& key) override {
    std::lock_guard lock(db_mutex_);
    auto s = statement(
        "SELECT handler, attempt, outcome, started, finished, error FROM handler_runs"
        " WHERE topic = ?1 AND subscription = ?2 AND sequence_number = ?3"
        " ORDER BY started, handler, attempt");
    bind_key(s, key);
    std::vector<HandlerRun> out;
    while (s.step()) {
      HandlerRun r;
      r.handler = s.text(0);
      r.attempt = static_cast<int>(s.integer(1));
      auto outcome = s.text(2);
      for (std::size_t i = 0; i < kOutcomes.size(); ++i) {
        if (kOutcomes[i] == outcome) r.outcome = static_cast<HandlerRun::Outcome>(i);
      }
      r.started = from_ms(s.integer(3));
      if (s.integer(4) != 0) r.finished = from_ms(s.integer(4));
      r.error = s.text(5);
      out.push_back(std::move(r));
    }
    return out;
  }

  Page list(const Query& q) override {
    std::string sql = std::string("SELECT ") + kColumns + " FROM deferred_messages WHERE 1 = 1";
    if (q.topic) sql += " AND topic = ?1";
    if (q.subscription) sql += " AND subscription = ?2";
    if (q.state) sql += " AND state = ?3";
    if (q.subject_prefix) sql += " AND substr(subject, 1, length(?4)) = ?4";
    if (q.updated_before) sql += " AND updated < ?5";
    if (q.subject_glob) sql += " AND subject GLOB ?10";
    if (q.created_before) sql += " AND created < ?11";
    std::optional<MessageKey> after;
    if (q.after) {
      after = parse_cursor(*q.after);
      if (!after)
        throw InvalidArgument("the cursor '" + *q.after + "' is not one this API gave out");
      sql += " AND (topic, subscription, sequence_number) > (?6, ?7, ?8)";
    }
    sql += " ORDER BY topic, subscription, sequence_number LIMIT ?9";
    std::lock_guard lock(db_mutex_);
    auto s = statement(sql);
    if (q.topic) s.bind(1, *q.topic);
    if (q.subscription) s.bind(2, *q.subscription);
    if (q.state) s.bind(3, std::string(to_string(*q.state)));
    if (q.subject_prefix) s.bind(4, *q.subject_prefix);
    if (q.updated_before) s.bind(5, to_ms(*q.updated_before));
    if (q.subject_glob) s.bind(10, *q.subject_glob);
    if (q.created_before) s.bind(11, to_ms(*q.created_before));
    if (after) s.bind(6, after->topic).bind(7, after->subscription).bind(8, after->sequence_number);
    auto limit = std::max<std::size_t>(1, std::min<std::size_t>(q.limit, 1000));
    s.bind(9, static_cast<std::int64_t>(limit + 1));
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
    std::lock_guard lock(db_mutex_);
    auto s = statement(
        "SELECT state, count(*) FROM deferred_messages"
        " WHERE (?1 = '' OR topic = ?1) AND (?2 = '' OR subscription = ?2) GROUP BY state");
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
    std::lock_guard lock(db_mutex_);
    auto s = statement(
        "SELECT min(created) FROM deferred_messages WHERE topic = ?1 AND subscription = ?2"
        " AND state IN ('deferring', 'deferred', 'running', 'retrying', 'failed', 'orphaned')");
    s.bind(1, topic).bind(2, subscription);
    if (!s.step() || s.integer(0) == 0) return std::nullopt;
    return from_ms(s.integer(0));
  }

  std::size_t prune(Clock::time_point before) override {
    return write([this, before] {
      auto runs = statement(
          "DELETE FROM handler_runs WHERE (topic, subscription, sequence_number) IN"
          " (SELECT topic, subscription, sequence_number FROM deferred_messages"
          "  WHERE state IN ('completed', 'dead-lettered') AND updated < ?1)");
      runs.bind(1, to_ms(before));
      runs.step();
      auto s = statement(
          "DELETE FROM deferred_messages WHERE state IN ('completed', 'dead-lettered')"
          " AND updated < ?1");
      s.bind(1, to_ms(before));
      s.step();
      return static_cast<std::size_t>(sqlite3_changes(db_));
    });
  }

  bool writable() override {
    std::lock_guard lock(db_mutex_);
    if (sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) return false;
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return true;
  }

 private:
  /// A queued write: run inside the group's transaction; `result` is its answer.
  struct Pending {
    std::function<std::size_t()> apply;
    bool done = false;
    std::size_t result = 0;
    std::exception_ptr error;
  };

  // The single-row writes the public ones are made of. Call inside `write`.
  std::size_t update_state(const MessageKey& key, State state, const std::string& error) {
    auto s = statement(
        "UPDATE deferred_messages SET state = ?4, updated = ?5,"
        " last_error = CASE WHEN ?6 = '' THEN last_error ELSE ?6 END"
        " WHERE topic = ?1 AND subscription = ?2 AND sequence_number = ?3");
    bind_key(s, key);
    s.bind(4, std::string(to_string(state))).bind(5, to_ms(Clock::now())).bind(6, error);
    s.step();
    return static_cast<std::size_t>(sqlite3_changes(db_));
  }

  void insert_run(const MessageKey& key, const HandlerRun& run) {
    auto s = statement(
        "INSERT OR REPLACE INTO handler_runs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
    bind_key(s, key);
    s.bind(4, run.handler).bind(5, std::int64_t{run.attempt});
    s.bind(6, std::string(to_string(run.outcome))).bind(7, to_ms(run.started));
    if (run.finished) s.bind(8, to_ms(*run.finished));
    s.bind(9, run.error);
    s.step();
  }

  /// Queues `apply`, waits until the transaction holding it has committed, returns its answer.
  std::size_t write(std::function<std::size_t()> apply) {
    auto pending = std::make_shared<Pending>();
    pending->apply = std::move(apply);
    std::unique_lock lock(queue_mutex_);
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
      committing_ = false;
      committed_.notify_all();
    }
    if (pending->error) std::rethrow_exception(pending->error);
    return pending->result;
  }

  void commit(std::vector<std::shared_ptr<Pending>>& group) {
    std::lock_guard db(db_mutex_);
    std::exception_ptr failed;
    try {
      exec("BEGIN IMMEDIATE");
      for (auto& p : group) {
        try {
          p->result = p->apply();
        } catch (...) {
          p->error = std::current_exception();  // That statement alone had no effect.
        }
      }
      exec("COMMIT");
    } catch (...) {
      failed = std::current_exception();
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    std::lock_guard lock(queue_mutex_);
    for (auto& p : group) {
      if (failed) p->error = failed;
      p->done = true;
    }
  }

  /// The cached statement for `sql`, prepared on first use. Call with `db_mutex_` held.
  Statement statement(const std::string& sql) {
    auto& stmt = statements_[sql];
    if (stmt == nullptr && sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
      std::string why = sqlite3_errmsg(db_);
      statements_.erase(sql);
      throw Error("ledger: " + why + " in: " + sql);
    }
    return Statement(db_, stmt);
  }

  void exec(const char* sql) {
    char* error = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
      std::string why = error != nullptr ? error : "unknown error";
      sqlite3_free(error);
      throw Error(std::string("ledger: ") + why);
    }
  }

  sqlite3* db_ = nullptr;
  std::mutex db_mutex_;  // The connection and the statement cache.
  std::map<std::string, sqlite3_stmt*> statements_;
  std::mutex queue_mutex_;
  std::condition_variable committed_;
  std::vector<std::shared_ptr<Pending>> queue_;
  bool committing_ = false;
};

}  // namespace

std::string_view to_string(State state) { return kStates[static_cast<std::size_t>(state)]; }

std::optional<State> state_from_string(std::string_view text) {
  for (std::size_t i = 0; i < kStates.size(); ++i) {
    if (kStates[i] == text) return static_cast<State>(i);
  }
  return std::nullopt;
}

std::string_view to_string(HandlerRun::Outcome outcome) {
  return kOutcomes[static_cast<std::size_t>(outcome)];
}

std::unique_ptr<Ledger> open_ledger(const std::string& url) {
  constexpr std::string_view kSqlite = "sqlite://";
  if (url.rfind(kSqlite, 0) == 0 && url.size() > kSqlite.size()) {
    return std::make_unique<SqliteLedger>(url.substr(kSqlite.size()));
  }
  if (url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0) {
    throw Error("the PostgreSQL ledger is not built yet; use sqlite://<file>");
  }
  throw InvalidArgument("a ledger URL must be sqlite://<file> (got '" + url + "')");
}

}  // namespace metro::ledger
