// PostgresLedger: the ledger in a PostgreSQL database that several metro instances share. A pool
// of connections; writes are group-committed as in the SQLite ledger (one transaction, a savepoint
// per queued write, so a failed write leaves nothing of itself and costs no other writer its
// change); claims take rows with FOR UPDATE SKIP LOCKED; leases are measured on the database's
// clock, so instances on hosts whose clocks differ agree on when a lease lapsed.

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>

#include <metro/ledger/ledger.hpp>

#include "../common/fresh_exception.hpp"
#include "../common/thread_annotations.hpp"
#include "../postgres/postgres.hpp"
#include "failure_groups.hpp"
#include "ledger_impl.hpp"
#include "postgres_migrations.hpp"
#include "run_summary.hpp"

namespace metro::ledger {
namespace {

using namespace detail;
using postgres::Params;
using postgres::PgError;
using postgres::Result;

/// The database's clock, in milliseconds since the epoch.
constexpr const char* kNow = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A row's lease has lapsed: its own deadline passed and its owner's heartbeat (which renews the
/// leases of everything the owner holds) is older than the owner's lease, or the owner is gone.
std::string lapsed() {
  return std::string("(deferred_messages.lease_until < ") + kNow +
         " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = deferred_messages.owner"
         " AND i.heartbeat + i.lease_ms >= " +
         kNow + "))";
}

constexpr const char* kColumns =
    "topic, subscription, sequence_number, generation, subject, message_id, correlation_id, "
    "body, body_truncated, state, created, updated, last_error, enqueued, owner, lease_until, "
    "trace_parent, failure_group, body_dropped";

constexpr const char* kJobColumns =
    "id, action, filter, reason, description, created_by, state, total, done, failed, created,"
    " updated, finished, error";

/// Current rows in a failure group.
constexpr const char* kGroupMembers = " generation = 0 AND state IN ('failed', 'retrying')";

constexpr const char* kKeyWhere =
    " WHERE topic = $1 AND subscription = $2 AND sequence_number = $3 AND generation = $4";

Params& key_params(Params& p, const MessageKey& key) {
  return p.text(key.topic).text(key.subscription).int8(key.sequence_number).int8(key.generation);
}

DeferredMessage read_message(const Result& r, int row) {
  DeferredMessage m;
  m.key = {r.bytes(row, 0), r.bytes(row, 1), r.integer(row, 2), r.integer(row, 3)};
  m.subject = r.bytes(row, 4);
  m.message_id = r.bytes(row, 5);
  m.correlation_id = r.bytes(row, 6);
  m.body = r.bytes(row, 7);
  m.body_truncated = r.integer(row, 8) != 0;
  m.state = state_from_string(r.bytes(row, 9)).value_or(State::kOrphaned);
  m.created = from_ms(r.integer(row, 10));
  m.updated = from_ms(r.integer(row, 11));
  m.last_error = r.bytes(row, 12);
  m.enqueued_time = from_ms(r.integer(row, 13));
  m.owner = r.bytes(row, 14);
  m.lease_until = from_ms(r.integer(row, 15));
  m.trace_parent = r.bytes(row, 16);
  m.failure_group = r.bytes(row, 17);
  m.body_dropped = r.integer(row, 18) != 0;
  return m;
}

Job read_job(const Result& r, int row) {
  Job j;
  j.id = r.bytes(row, 0);
  j.action = job_action_from_string(r.bytes(row, 1)).value_or(JobAction::kRetry);
  j.filter = r.bytes(row, 2);
  j.reason = r.bytes(row, 3);
  j.description = r.bytes(row, 4);
  j.created_by = r.bytes(row, 5);
  auto state = r.bytes(row, 6);
  for (std::size_t i = 0; i < kJobStates.size(); ++i) {
    if (kJobStates[i] == state) j.state = static_cast<JobState>(i);
  }
  j.total = static_cast<std::size_t>(r.integer(row, 7));
  j.done = static_cast<std::size_t>(r.integer(row, 8));
  j.failed = static_cast<std::size_t>(r.integer(row, 9));
  j.created = from_ms(r.integer(row, 10));
  j.updated = from_ms(r.integer(row, 11));
  if (!r.is_null(row, 12)) j.finished = from_ms(r.integer(row, 12));
  j.error = r.bytes(row, 13);
  return j;
}

/// Whether `id` (a job or failure group id from a request) can be sent as text: printable ASCII.
/// Ids metro makes always are; any other matches nothing.
bool plain_id(std::string_view id) {
  return std::all_of(id.begin(), id.end(), [](char c) { return c > ' ' && c < 0x7F; });
}

/// The subject as valid UTF-8 without NUL (each invalid byte and NUL becomes U+FFFD), for the
/// `subject_text` column that glob filters read.
std::string utf8_text(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  std::size_t i = 0;
  while (i < in.size()) {
    auto c = static_cast<unsigned char>(in[i]);
    std::size_t n = c < 0x80           ? 1
                    : (c >> 5) == 0x6  ? 2
                    : (c >> 4) == 0xE  ? 3
                    : (c >> 3) == 0x1E ? 4
                                       : 0;
    bool ok = n > 0 && c != 0 && i + n <= in.size();
    for (std::size_t k = 1; ok && k < n; ++k) {
      ok = (static_cast<unsigned char>(in[i + k]) & 0xC0) == 0x80;
    }
    if (ok && n == 2) ok = c >= 0xC2;
    if (ok && n == 3) {
      auto c1 = static_cast<unsigned char>(in[i + 1]);
      ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
    }
    if (ok && n == 4) {
      auto c1 = static_cast<unsigned char>(in[i + 1]);
      ok = c <= 0xF4 && !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
    }
    if (ok) {
      out.append(in.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

/// A glob as SQLite's GLOB reads it (`*`, `?`, `[…]`, `[^…]`), as an anchored PostgreSQL regular
/// expression.
std::string glob_to_regex(std::string_view glob) {
  std::string out = "^";
  for (std::size_t i = 0; i < glob.size(); ++i) {
    char c = glob[i];
    if (c == '*') {
      out += ".*";
    } else if (c == '?') {
      out += '.';
    } else if (c == '[') {
      auto j = i + 1;
      if (j < glob.size() && glob[j] == '^') ++j;
      if (j < glob.size() && glob[j] == ']') ++j;  // A ']' first is literal.
      auto close = glob.find(']', j);
      if (close == std::string_view::npos) {
        out += "\\[";
        continue;
      }
      out += '[';
      for (auto k = i + 1; k < close; ++k) {
        if (glob[k] == '\\') out += '\\';
        out += glob[k];
      }
      out += ']';
      i = close;
    } else {
      if (std::string_view("\\.^$|()+{}[]").find(c) != std::string_view::npos) out += '\\';
      out += c;
    }
  }
  return out + "$";
}

/// A PostgreSQL error said as what it means for the ledger: unreachable, read-only, disk full.
Error explain(const PgError& e, const std::string& where) {
  std::string what = e.what();
  if (what.rfind("cannot connect", 0) == 0 || what.rfind("no PostgreSQL connection", 0) == 0) {
    return Error(what, true);
  }
  if (e.connection_lost()) {
    return Error("the connection to PostgreSQL at " + where + " was lost: " + what, true);
  }
  const auto& s = e.sqlstate();
  if (s == "25006") {
    return Error("PostgreSQL at " + where +
                     " is read-only (a standby, or default_transaction_read_only): " + what,
                 true);
  }
  if (s == "53100") return Error("PostgreSQL at " + where + ": the disk is full: " + what, true);
  if (s.rfind("57P", 0) == 0) {
    return Error("PostgreSQL at " + where + " is shutting down or starting: " + what, true);
  }
  return Error("PostgreSQL at " + where + ": " + what, e.is_transient());
}

/// FNV-1a of a name, folded to a positive 63-bit advisory lock key.
std::int64_t lock_key(std::string_view name) {
  std::uint64_t h = 1469598103934665603ULL;
  for (char c : std::string("metro:") + std::string(name)) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ULL;
  }
  return static_cast<std::int64_t>(h >> 1);
}

/// A session advisory lock held on a connection of its own until destroyed (released by the
/// server if the connection dies).
class PgExclusive : public Exclusive {
 public:
  PgExclusive(postgres::Pool::Lease lease, std::int64_t key)
      : lease_(std::move(lease)), key_(key) {}
  ~PgExclusive() override {
    try {
      lease_->query("SELECT pg_advisory_unlock($1)", Params().int8(key_));
    } catch (const PgError&) {
      // A lost connection released it.
    }
  }

 private:
  postgres::Pool::Lease lease_;
  std::int64_t key_;
};

/// The WHERE clause of a query with its parameters ($1 … in order, after `p`'s own). Shared by
/// list, count and create_job.
std::string where_of(const Query& q, Params& p, bool paged) {
  std::optional<MessageKey> after;
  if (paged && q.after) {
    after = parse_cursor(*q.after);
    if (!after) {
      throw InvalidArgument("the cursor '" + *q.after + "' is not one this API gave out");
    }
  }
  std::string sql = " WHERE true";
  // Not `"$" + string`: GCC 12 warns (-Wrestrict) on that form.
  auto next = [&p] { return std::string("$").append(std::to_string(p.size() + 1)); };
  if (q.topic) {
    sql += " AND topic = " + next();
    p.text(*q.topic);
  }
  if (q.subscription) {
    sql += " AND subscription = " + next();
    p.text(*q.subscription);
  }
  if (q.state) {
    sql += " AND state = " + next();
    p.text(to_string(*q.state));
  }
  if (q.subject_prefix) {
    auto i = next();
    sql += " AND substr(subject, 1, length(" + i + ")) = " + i;
    p.bytes(*q.subject_prefix);
  }
  if (q.updated_before) {
    sql += " AND updated < " + next();
    p.int8(to_ms(*q.updated_before));
  }
  if (q.subject_glob) {
    sql += " AND subject_text ~ " + next();
    p.text(glob_to_regex(utf8_text(*q.subject_glob)));
  }
  if (q.created_before) {
    sql += " AND created < " + next();
    p.int8(to_ms(*q.created_before));
  }
  if (q.current_only) sql += " AND generation = 0";
  if (q.failure_group) {
    if (plain_id(*q.failure_group)) {
      sql += " AND failure_group = " + next() + " AND" + kGroupMembers;
      p.text(*q.failure_group);
    } else {
      sql += " AND false";
    }
  }
  if (!q.any_state.empty()) {
    sql += " AND state IN (";
    for (std::size_t i = 0; i < q.any_state.size(); ++i) {
      // The states' own names: constants, never text from outside.
      sql += (i == 0 ? "'" : ", '") + std::string(to_string(q.any_state[i])) + "'";
    }
    sql += ")";
  }
  if (after) {
    auto a = next();
    p.text(after->topic);
    auto b = next();
    p.text(after->subscription);
    auto c = next();
    p.int8(after->sequence_number);
    auto d = next();
    p.int8(after->generation);
    sql += " AND (topic, subscription, sequence_number, generation) > (" + a + ", " + b + ", " +
           c + ", " + d + ")";
  }
  return sql;
}

class PostgresLedger : public Ledger {
 public:
  PostgresLedger(const std::string& url, const OpenOptions& options)
      : where_(postgres::describe(url)),
        lean_(options.completed_rows == CompletedRows::kLean),
        pool_(postgres::ConnectOptions{url}, std::max<std::size_t>(2, options.connections)),
        // Connections left over for reads and the exclusive right.
        committers_(std::max<std::size_t>(1, std::max<std::size_t>(2, options.connections) - 2)) {
    try {
      auto c = pool_.acquire();
      if (options.migrate) {
        migrate_postgres(*c, where_);
        try {
          file_unfiled(*c);
        } catch (const PgError&) {
          // A database that cannot be written now: filed at the next open.
        }
      }
    } catch (const PgError& e) {
      throw Error("cannot open the ledger at " + where_ + ": " + redact_ledger_url(e.what()),
                  e.is_transient());
    }
  }

  void record_all(const std::vector<DeferredMessage>& messages) override {
    write([this, &messages](postgres::Connection& c) {
      for (const auto& m : messages) record_one(c, m);
      return std::size_t{0};
    });
  }

  std::size_t set_state_all(const std::vector<MessageKey>& keys, State state,
                            const std::string& error) override {
    return write([this, &keys, state, &error](postgres::Connection& c) {
      std::size_t known = 0;
      for (const auto& key : keys) known += update_state(c, key, state, error);
      return known;
    });
  }

  void record_run(const MessageKey& key, const HandlerRun& run) override {
    write([&key, &run](postgres::Connection& c) {
      insert_run(c, key, run);
      return std::size_t{0};
    });
  }

  void begin_run(const MessageKey& key, const HandlerRun& run) override {
    write([this, &key, &run](postgres::Connection& c) {
      update_state(c, key, State::kRunning, {});
      insert_run(c, key, run);
      return std::size_t{0};
    });
  }

  bool forget(const MessageKey& key) override {
    return 0 != write([this, &key](postgres::Connection& c) {
             Params p;
             key_params(p, key).text(me().id);
             auto gone = c.query(std::string("DELETE FROM deferred_messages") + kKeyWhere +
                                     " AND ($5 = '' OR owner IN ('', $5))",
                                 p);
             if (gone.affected() == 0) return std::size_t{0};
             Params k;
             c.query(std::string("DELETE FROM handler_runs") + kKeyWhere, key_params(k, key));
             return static_cast<std::size_t>(gone.affected());
           });
  }

  std::optional<DeferredMessage> find(const MessageKey& key) override {
    return read([&key](postgres::Connection& c) -> std::optional<DeferredMessage> {
      Params p;
      auto r = c.query(std::string("SELECT ") + kColumns + " FROM deferred_messages" + kKeyWhere,
                       key_params(p, key));
      if (r.rows() == 0) return std::nullopt;
      return read_message(r, 0);
    });
  }

  std::vector<HandlerRun> runs(const MessageKey& key) override {
    return read([&key](postgres::Connection& c) {
      auto out = table_runs(c, key);
      if (!out.empty()) return out;
      // A lean completed message keeps its runs on its row.
      Params p;
      auto r = c.query(std::string("SELECT runs FROM deferred_messages") + kKeyWhere,
                       key_params(p, key));
      if (r.rows() > 0) out = decode_runs(r.bytes(0, 0));
      return out;
    });
  }

  Page list(const Query& q) override {
    Params p;
    std::string sql =
        std::string("SELECT ") + kColumns + " FROM deferred_messages" + where_of(q, p, true);
    auto next = [&p] { return std::string("$").append(std::to_string(p.size() + 1)); };
    auto limit = std::max<std::size_t>(1, std::min<std::size_t>(q.limit, 1000));
    sql += " ORDER BY topic, subscription, sequence_number, generation LIMIT " + next();
    p.int8(static_cast<std::int64_t>(limit + 1));
    return read([&](postgres::Connection& c) {
      auto r = c.query(sql, p);
      Page page;
      for (int i = 0; i < r.rows(); ++i) page.items.push_back(read_message(r, i));
      if (page.items.size() > limit) {
        page.items.pop_back();
        page.next = cursor_of(page.items.back().key);
      }
      return page;
    });
  }

  std::map<State, std::size_t> counts(const std::string& topic,
                                      const std::string& subscription) override {
    return read([&](postgres::Connection& c) {
      auto r = c.query(
          "SELECT state, count(*) FROM deferred_messages WHERE generation = 0"
          " AND ($1 = '' OR topic = $1) AND ($2 = '' OR subscription = $2) GROUP BY state",
          Params().text(topic).text(subscription));
      std::map<State, std::size_t> out;
      for (int i = 0; i < r.rows(); ++i) {
        if (auto state = state_from_string(r.bytes(i, 0))) {
          out[*state] = static_cast<std::size_t>(r.integer(i, 1));
        }
      }
      return out;
    });
  }

  std::optional<Clock::time_point> oldest_deferred(const std::string& topic,
                                                   const std::string& subscription) override {
    return read([&](postgres::Connection& c) -> std::optional<Clock::time_point> {
      auto r = c.query(
          "SELECT min(created) FROM deferred_messages WHERE topic = $1 AND subscription = $2"
          " AND generation = 0"
          " AND state IN ('deferring', 'deferred', 'running', 'retrying', 'failed', 'orphaned')",
          Params().text(topic).text(subscription));
      if (r.rows() == 0 || r.is_null(0, 0) || r.integer(0, 0) == 0) return std::nullopt;
      return from_ms(r.integer(0, 0));
    });
  }

  std::size_t prune(Clock::time_point before, Clock::time_point completed_before) override {
    // In batches, each a commit of its own: other writers wait for one batch at most. Each
    // condition has an index of its own (state, updated; superseded).
    constexpr std::int64_t kBatch = 2000;
    static const std::array<const char*, 3> kPrunable = {"state = 'completed' AND updated < $2",
                                                         "state = 'dead-lettered' AND updated < $1",
                                                         "generation > 0 AND updated < $1"};
    std::size_t pruned = 0;
    for (const char* prunable : kPrunable) {
      while (true) {
        auto n = write([&](postgres::Connection& c) {
          auto r = c.query(
              std::string("WITH doomed AS (DELETE FROM deferred_messages WHERE ctid IN (SELECT"
                          " ctid FROM deferred_messages WHERE ") +
                  prunable +
                  " LIMIT $3) RETURNING topic, subscription, sequence_number, generation),"
                  " runs AS (DELETE FROM handler_runs h USING doomed d WHERE h.topic = d.topic"
                  " AND h.subscription = d.subscription AND h.sequence_number ="
                  " d.sequence_number AND h.generation = d.generation)"
                  " SELECT count(*) FROM doomed",
              Params().int8(to_ms(before)).int8(to_ms(completed_before)).int8(kBatch));
          return static_cast<std::size_t>(r.integer(0, 0));
        });
        pruned += n;
        if (n < static_cast<std::size_t>(kBatch)) break;
      }
    }
    write([before](postgres::Connection& c) {
      // Finished jobs go with ledger_retention, with the keys they kept.
      c.query("DELETE FROM job_items WHERE job IN (SELECT id FROM jobs WHERE finished < $1)",
              Params().int8(to_ms(before)));
      c.query("DELETE FROM jobs WHERE finished < $1", Params().int8(to_ms(before)));
      // Instances gone for a day (no heartbeat, nothing of theirs left leased) are forgotten.
      c.query(std::string("DELETE FROM instances WHERE heartbeat < ") + kNow +
              " - 86400000 AND NOT EXISTS (SELECT 1 FROM deferred_messages WHERE owner = "
              "instances.id AND lease_until > " +
              kNow + ")");
      return std::size_t{0};
    });
    return pruned;
  }

  std::optional<std::string> write_problem() override {
    try {
      write([this](postgres::Connection& c) {
        auto id = me().id;
        c.query(std::string("INSERT INTO ledger_probe (id, at) VALUES ($1, ") + kNow +
                    ") ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                Params().text(id.empty() ? "probe" : id));
        return std::size_t{0};
      });
      return std::nullopt;
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
  }

  // ---- failure groups and bulk jobs --------------------------------------------------------

  std::vector<FailureGroup> failure_groups(const FailureQuery& q) override {
    // Counted from the partial index; then one indexed look-up per group for its names and the
    // member that failed last.
    std::string sql = std::string(
                          "SELECT failure_group, count(*), sum(CASE WHEN state = 'failed' THEN 1"
                          " ELSE 0 END), min(failure_at), max(failure_at) FROM deferred_messages"
                          " WHERE") +
                      kGroupMembers + " AND failure_group <> ''";
    Params p;
    auto next = [&p] { return std::string("$").append(std::to_string(p.size() + 1)); };
    if (q.topic) {
      sql += " AND topic = " + next();
      p.text(*q.topic);
    }
    if (q.subscription) {
      sql += " AND subscription = " + next();
      p.text(*q.subscription);
    }
    sql += " GROUP BY failure_group ORDER BY count(*) DESC, failure_group LIMIT " + next();
    p.int8(static_cast<std::int64_t>(std::clamp<std::size_t>(q.limit, 1, 1000)));
    return read([&](postgres::Connection& c) {
      auto r = c.query(sql, p);
      std::vector<FailureGroup> out;
      for (int i = 0; i < r.rows(); ++i) {
        FailureGroup g;
        g.id = r.bytes(i, 0);
        g.count = static_cast<std::size_t>(r.integer(i, 1));
        g.failed = static_cast<std::size_t>(r.integer(i, 2));
        g.retrying = g.count - g.failed;
        g.first_seen = from_ms(r.integer(i, 3));
        g.last_seen = from_ms(r.integer(i, 4));
        out.push_back(std::move(g));
      }
      for (auto& g : out) {
        auto m = c.query(
            std::string("SELECT topic, subscription, sequence_number, generation,"
                        " failure_handler, failure_error, last_error, subject"
                        " FROM deferred_messages WHERE failure_group = $1 AND") +
                kGroupMembers + " ORDER BY failure_at DESC LIMIT 1",
            Params().text(g.id));
        if (m.rows() == 0) continue;
        g.topic = m.bytes(0, 0);
        g.subscription = m.bytes(0, 1);
        g.sample = {g.topic, g.subscription, m.integer(0, 2), m.integer(0, 3)};
        g.handler = m.bytes(0, 4);
        g.error = m.bytes(0, 5);
        g.sample_error = m.bytes(0, 6);
        g.sample_subject = m.bytes(0, 7);
      }
      return out;
    });
  }

  std::size_t count(const Query& q) override {
    Params p;
    auto sql = "SELECT count(*) FROM deferred_messages" + where_of(q, p, false);
    return read([&](postgres::Connection& c) {
      return static_cast<std::size_t>(c.query(sql, p).integer(0, 0));
    });
  }

  Job create_job(const Job& job, const Query& q) override {
    Params items;
    items.text(job.id);
    auto sql = std::string(
                   "INSERT INTO job_items (job, topic, subscription, sequence_number, generation)"
                   " SELECT $1, topic, subscription, sequence_number, generation"
                   " FROM deferred_messages") +
               where_of(q, items, false) + " AND generation = 0";
    Job out = job;
    out.created = out.updated = from_ms(to_ms(Clock::now()));
    out.state = JobState::kQueued;
    write([&](postgres::Connection& c) {
      out.total = static_cast<std::size_t>(c.query(sql, items).affected());
      c.query(std::string("INSERT INTO jobs (") + kJobColumns +
                  ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9, $9, NULL, ''::bytea)",
              Params()
                  .text(out.id)
                  .text(to_string(out.action))
                  .bytes(out.filter)
                  .bytes(out.reason)
                  .bytes(out.description)
                  .bytes(out.created_by)
                  .text(to_string(out.state))
                  .int8(static_cast<std::int64_t>(out.total))
                  .int8(to_ms(out.created)));
      return std::size_t{0};
    });
    return out;
  }

  std::optional<Job> find_job(const std::string& id) override {
    if (!plain_id(id)) return std::nullopt;
    return read([&](postgres::Connection& c) -> std::optional<Job> {
      auto r = c.query(std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = $1",
                       Params().text(id));
      if (r.rows() == 0) return std::nullopt;
      return read_job(r, 0);
    });
  }

  std::vector<Job> jobs(std::size_t limit, bool unfinished_only) override {
    return read([&](postgres::Connection& c) {
      auto r = c.query(std::string("SELECT ") + kJobColumns + " FROM jobs" +
                           (unfinished_only
                                ? " WHERE state IN ('queued', 'running') ORDER BY created, id"
                                : " ORDER BY created DESC, id DESC") +
                           " LIMIT $1",
                       Params().int8(
                           static_cast<std::int64_t>(std::clamp<std::size_t>(limit, 1, 1000))));
      std::vector<Job> out;
      for (int i = 0; i < r.rows(); ++i) out.push_back(read_job(r, i));
      return out;
    });
  }

  std::vector<MessageKey> job_pending(const std::string& id, std::size_t limit) override {
    if (!plain_id(id)) return {};
    return read([&](postgres::Connection& c) {
      auto r = c.query(
          "SELECT topic, subscription, sequence_number, generation FROM job_items"
          " WHERE job = $1 AND ok IS NULL"
          " ORDER BY topic, subscription, sequence_number, generation LIMIT $2",
          Params().text(id).int8(static_cast<std::int64_t>(std::max<std::size_t>(limit, 1))));
      std::vector<MessageKey> out;
      for (int i = 0; i < r.rows(); ++i) {
        out.push_back({r.bytes(i, 0), r.bytes(i, 1), r.integer(i, 2), r.integer(i, 3)});
      }
      return out;
    });
  }

  void record_job_items(const std::string& id, const std::vector<JobItem>& items) override {
    if (!plain_id(id)) return;
    write([&](postgres::Connection& c) {
      std::int64_t done = 0, failed = 0;
      for (const auto& item : items) {
        Params p;
        key_params(p, item.key).text(id).int8(item.ok ? 1 : 0).bytes(item.error);
        auto r = c.query(
            "UPDATE job_items SET ok = $6, error = $7 WHERE job = $5 AND topic = $1"
            " AND subscription = $2 AND sequence_number = $3 AND generation = $4 AND ok IS NULL",
            p);
        if (r.affected() == 0) continue;  // Recorded before (a resumed job).
        (item.ok ? done : failed) += 1;
      }
      c.query(
          "UPDATE jobs SET done = done + $2, failed = failed + $3, updated = $4 WHERE id = $1",
          Params().text(id).int8(done).int8(failed).int8(to_ms(Clock::now())));
      return std::size_t{0};
    });
  }

  std::vector<JobItem> job_failures(const std::string& id, std::size_t limit) override {
    if (!plain_id(id)) return {};
    return read([&](postgres::Connection& c) {
      auto r = c.query(
          "SELECT topic, subscription, sequence_number, generation, error FROM job_items"
          " WHERE job = $1 AND ok = 0"
          " ORDER BY topic, subscription, sequence_number, generation LIMIT $2",
          Params().text(id).int8(static_cast<std::int64_t>(std::max<std::size_t>(limit, 1))));
      std::vector<JobItem> out;
      for (int i = 0; i < r.rows(); ++i) {
        out.push_back(
            {{r.bytes(i, 0), r.bytes(i, 1), r.integer(i, 2), r.integer(i, 3)}, false, r.bytes(i, 4)});
      }
      return out;
    });
  }

  bool set_job_state(const std::string& id, JobState state, const std::string& error) override {
    if (!plain_id(id)) return false;
    return 0 != write([&](postgres::Connection& c) {
             bool final = state != JobState::kQueued && state != JobState::kRunning;
             auto r = c.query(
                 "UPDATE jobs SET state = $2, updated = $3,"
                 " finished = CASE WHEN $4 = 1 THEN $3 ELSE finished END,"
                 " error = CASE WHEN $5 = ''::bytea THEN error ELSE $5 END"
                 " WHERE id = $1 AND state IN ('queued', 'running')",
                 Params()
                     .text(id)
                     .text(to_string(state))
                     .int8(to_ms(Clock::now()))
                     .int8(final ? 1 : 0)
                     .bytes(error));
             return static_cast<std::size_t>(r.affected());
           });
  }

  // ---- instances sharing the ledger --------------------------------------------------------

  void join(const InstanceInfo& me) override {
    write([&me](postgres::Connection& c) {
      auto r = c.query(std::string("SELECT host, pid, heartbeat, lease_ms, ") + kNow +
                           " FROM instances WHERE id = $1 FOR UPDATE",
                       Params().text(me.id));
      if (r.rows() > 0) {
        auto host = r.bytes(0, 0);
        auto pid = r.integer(0, 1);
        bool same = host == me.host && pid == me.pid;
        if (!same && instance_alive(host, pid, r.integer(0, 2), r.integer(0, 3), r.integer(0, 4))) {
          throw Error("the instance_id '" + me.id + "' is in use: " +
                      in_use_by(me.id, host, pid, r.integer(0, 4) - r.integer(0, 2)) +
                      "; give every instance sharing the ledger an id of its own");
        }
      }
      c.query(std::string("INSERT INTO instances (id, host, pid, started, heartbeat, in_flight,"
                          " lease_ms) VALUES ($1, $2, $3, ") +
                  kNow + ", " + kNow +
                  ", 0, $4) ON CONFLICT (id) DO UPDATE SET host = excluded.host,"
                  " pid = excluded.pid, started = excluded.started,"
                  " heartbeat = excluded.heartbeat, in_flight = 0, lease_ms = excluded.lease_ms",
              Params().text(me.id).text(me.host).int8(me.pid).int8(me.lease.count()));
      return std::size_t{0};
    });
    MutexLock lock(me_mutex_);
    me_ = me;
  }

  void heartbeat(std::size_t in_flight) override {
    auto self = me();
    if (self.id.empty()) return;
    write([&self, in_flight](postgres::Connection& c) {
      c.query(std::string("INSERT INTO instances (id, host, pid, started, heartbeat, in_flight,"
                          " lease_ms) VALUES ($1, $2, $3, ") +
                  kNow + ", " + kNow +
                  ", $4, $5) ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat,"
                  " in_flight = excluded.in_flight",
              Params()
                  .text(self.id)
                  .text(self.host)
                  .int8(self.pid)
                  .int8(static_cast<std::int64_t>(in_flight))
                  .int8(self.lease.count()));
      return std::size_t{0};
    });
  }

  void leave() override {
    auto self = me();
    if (self.id.empty()) return;
    write([&self](postgres::Connection& c) {
      c.query("DELETE FROM instances WHERE id = $1", Params().text(self.id));
      // Leases are held on unfinished rows only (the owner index has those alone).
      c.query(std::string("UPDATE deferred_messages SET lease_until = 0 WHERE owner = $1"
                          " AND state IN ") +
                  kLeasedStates,
              Params().text(self.id));
      return std::size_t{0};
    });
  }

  std::vector<Instance> instances() override {
    return read([](postgres::Connection& c) {
      auto r = c.query(std::string("SELECT id, host, pid, started, heartbeat, in_flight,"
                                   " heartbeat + lease_ms >= ") +
                       kNow + " FROM instances ORDER BY id");
      std::vector<Instance> out;
      for (int i = 0; i < r.rows(); ++i) {
        Instance in;
        in.id = r.bytes(i, 0);
        in.host = r.bytes(i, 1);
        in.pid = r.integer(i, 2);
        in.started = from_ms(r.integer(i, 3));
        in.heartbeat = from_ms(r.integer(i, 4));
        in.in_flight = static_cast<std::size_t>(r.integer(i, 5));
        in.live = r.integer(i, 6) != 0;
        out.push_back(std::move(in));
      }
      return out;
    });
  }

  std::vector<DeferredMessage> claim(const Claim& cl) override {
    std::string states;
    for (auto st : cl.states) {
      states.append(states.empty() ? "'" : ", '").append(to_string(st)).append("'");
    }
    if (states.empty()) return {};
    auto self = me();
    std::vector<DeferredMessage> out;
    write([&](postgres::Connection& c) {
      out.clear();
      // Rows another instance is claiming right now are locked: skipped, never taken twice.
      auto r = c.query(
          std::string("WITH c AS (SELECT topic, subscription, sequence_number, generation,"
                      " owner FROM deferred_messages WHERE topic = $1 AND subscription = $2"
                      " AND generation = 0 AND sequence_number > $3 AND state IN (") +
              states +
              ") AND (($4 = 1 AND owner = $5 AND ($6 = 0 OR updated < $6))"
              " OR ($7 = 1 AND owner <> $5 AND (owner = '' OR " +
              lapsed() +
              ")))"
              " ORDER BY sequence_number LIMIT $8 FOR UPDATE SKIP LOCKED)"
              " UPDATE deferred_messages t SET owner = $5, lease_until = CASE WHEN $5 = ''"
              " THEN 0 ELSE " +
              kNow +
              " + $9 END FROM c WHERE t.topic = c.topic AND t.subscription = c.subscription"
              " AND t.sequence_number = c.sequence_number AND t.generation = c.generation"
              " RETURNING t.topic, t.subscription, t.sequence_number, t.generation, t.subject,"
              " t.message_id, t.correlation_id, t.body, t.body_truncated, t.state, t.created,"
              " t.updated, t.last_error, t.enqueued, c.owner, t.lease_until, t.trace_parent,"
              " t.failure_group, t.body_dropped",
          Params()
              .text(cl.topic)
              .text(cl.subscription)
              .int8(cl.after)
              .int8(cl.own ? 1 : 0)
              .text(self.id)
              .int8(cl.own_updated_before ? to_ms(*cl.own_updated_before) : 0)
              .int8(cl.lapsed ? 1 : 0)
              .int8(static_cast<std::int64_t>(std::max<std::size_t>(1, cl.limit)))
              .int8(self.lease.count()));
      for (int i = 0; i < r.rows(); ++i) out.push_back(read_message(r, i));
      return out.size();
    });
    std::sort(out.begin(), out.end(),
              [](const DeferredMessage& a, const DeferredMessage& b) { return a.key < b.key; });
    return out;
  }

  std::optional<DeferredMessage> claim_one(const MessageKey& key) override {
    auto self = me();
    std::optional<DeferredMessage> out;
    write([&](postgres::Connection& c) {
      out.reset();
      Params p;
      key_params(p, key).text(self.id).int8(self.lease.count());
      auto r = c.query(std::string("UPDATE deferred_messages SET owner = $5, lease_until = CASE"
                                   " WHEN $5 = '' THEN 0 ELSE ") +
                           kNow + " + $6 END" + kKeyWhere +
                           " AND state NOT IN ('completed', 'dead-lettered')"
                           " AND (owner IN ('', $5) OR state NOT IN " +
                           kLeasedStates + " OR " + lapsed() + ") RETURNING " + kColumns,
                       p);
      if (r.rows() > 0) out = read_message(r, 0);
      return out ? std::size_t{1} : std::size_t{0};
    });
    return out;
  }

  std::unique_ptr<Exclusive> try_exclusive(std::string_view name) override {
    auto key = lock_key(name);
    try {
      auto lease = pool_.acquire();
      auto r = lease->query("SELECT pg_try_advisory_lock($1)", Params().int8(key));
      if (r.integer(0, 0) == 0) return nullptr;
      return std::make_unique<PgExclusive>(std::move(lease), key);
    } catch (const PgError& e) {
      throw explain(e, where_);
    }
  }

  std::string instance_id() const override { return me().id; }

  void restore(
      const std::vector<std::pair<DeferredMessage, std::vector<HandlerRun>>>& rows) override {
    write([&rows](postgres::Connection& c) {
      for (const auto& [m, runs] : rows) {
        Params k;
        c.query(std::string("DELETE FROM handler_runs") + kKeyWhere, key_params(k, m.key));
        Params p;
        key_params(p, m.key)
            .bytes(m.subject)
            .text(utf8_text(m.subject))
            .bytes(m.message_id)
            .bytes(m.correlation_id)
            .bytes(m.body)
            .int8(m.body_truncated ? 1 : 0)
            .text(to_string(m.state))
            .int8(to_ms(m.created))
            .int8(to_ms(m.updated))
            .bytes(m.last_error)
            .int8(to_ms(m.enqueued_time))
            .text(m.owner)
            .int8(to_ms(m.lease_until))
            .bytes(m.trace_parent)
            .int8(m.body_dropped ? 1 : 0);
        // The runs come as rows of their own (below): none stay collapsed on the row.
        c.query(
            "INSERT INTO deferred_messages (topic, subscription, sequence_number, generation,"
            " subject, subject_text, message_id, correlation_id, body, body_truncated, state,"
            " created, updated, last_error, enqueued, owner, lease_until, trace_parent,"
            " body_dropped, runs)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,"
            " $18, $19, ''::bytea)"
            " ON CONFLICT (topic, subscription, sequence_number, generation) DO UPDATE SET"
            " subject = excluded.subject, subject_text = excluded.subject_text,"
            " message_id = excluded.message_id, correlation_id = excluded.correlation_id,"
            " body = excluded.body, body_truncated = excluded.body_truncated,"
            " state = excluded.state, created = excluded.created, updated = excluded.updated,"
            " last_error = excluded.last_error, enqueued = excluded.enqueued,"
            " owner = excluded.owner, lease_until = excluded.lease_until,"
            " trace_parent = excluded.trace_parent, body_dropped = excluded.body_dropped,"
            " runs = excluded.runs",
            p);
        // The runs file the row under its failure group again (a row without runs: at the next
        // open).
        for (const auto& run : runs) insert_run(c, m.key, run);
      }
      return rows.size();
    });
  }

  WriteStats write_stats() const override {
    return {writes_.load(std::memory_order_relaxed), commits_.load(std::memory_order_relaxed)};
  }

  std::vector<MigrationStatus> migrations() override {
    return read([](postgres::Connection& c) {
      auto version = postgres_schema_version(c);
      std::vector<MigrationStatus> out;
      for (const auto& m : postgres_migrations()) {
        out.push_back({m.version, std::string(m.description), m.version <= version});
      }
      return out;
    });
  }

 private:
  using Apply = std::function<std::size_t(postgres::Connection&)>;
  struct Pending {
    Apply apply;
    bool taken = false;  // In a group being committed.
    bool done = false;
    std::size_t result = 0;
    std::exception_ptr error;
  };

  InstanceInfo me() const EXCLUDES(me_mutex_) {
    MutexLock lock(me_mutex_);
    return me_;
  }

  /// Runs a read on a pooled connection; PostgreSQL's errors are explained.
  template <class F>
  auto read(F f) -> decltype(f(std::declval<postgres::Connection&>())) {
    try {
      auto c = pool_.acquire();
      return f(*c);
    } catch (const PgError& e) {
      throw explain(e, where_);
    }
  }

  void record_one(postgres::Connection& c, const DeferredMessage& m) {
    auto now = to_ms(Clock::now());
    auto self = me();
    Params k;
    auto known = c.query(
        std::string("SELECT message_id, enqueued, state FROM deferred_messages") + kKeyWhere +
            " FOR UPDATE",
        key_params(k, MessageKey{m.key.topic, m.key.subscription, m.key.sequence_number, 0}));
    if (known.rows() > 0) {
      auto known_id = known.bytes(0, 0);
      auto known_enqueued = known.integer(0, 1);
      auto known_state = state_from_string(known.bytes(0, 2)).value_or(State::kDeferring);
      auto enqueued = to_ms(m.enqueued_time);
      bool other = is_final(known_state) ||
                   (!known_id.empty() && !m.message_id.empty() && known_id != m.message_id) ||
                   (known_enqueued != 0 && enqueued != 0 && known_enqueued != enqueued);
      if (other) supersede(c, m.key, now);
    }
    Params p;
    key_params(p, MessageKey{m.key.topic, m.key.subscription, m.key.sequence_number, 0})
        .bytes(m.subject)
        .text(utf8_text(m.subject))
        .bytes(m.message_id)
        .bytes(m.correlation_id)
        .bytes(m.body)
        .int8(m.body_truncated ? 1 : 0)
        .text(to_string(m.state))
        .int8(m.created.time_since_epoch().count() != 0 ? to_ms(m.created) : now)
        .int8(now)
        .bytes(m.last_error)
        .int8(to_ms(m.enqueued_time))
        .text(self.id)
        .int8(self.id.empty() || releases_lease(m.state) ? 0 : self.lease.count())
        .bytes(m.trace_parent);
    c.query(std::string(
                "INSERT INTO deferred_messages (topic, subscription, sequence_number, generation,"
                " subject, subject_text, message_id, correlation_id, body, body_truncated,"
                " state, created, updated, last_error, enqueued, owner, lease_until,"
                " trace_parent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
                " $14, $15, $16, CASE WHEN $17 = 0 THEN 0 ELSE ") +
                kNow +
                " + $17 END, $18)"
                " ON CONFLICT (topic, subscription, sequence_number, generation) DO UPDATE SET"
                " state = excluded.state, updated = excluded.updated, owner = excluded.owner,"
                " lease_until = excluded.lease_until,"
                " trace_parent = CASE WHEN deferred_messages.trace_parent = ''::bytea"
                " THEN excluded.trace_parent ELSE deferred_messages.trace_parent END,"
                " enqueued = CASE WHEN deferred_messages.enqueued = 0 THEN excluded.enqueued"
                " ELSE deferred_messages.enqueued END,"
                " message_id = CASE WHEN deferred_messages.message_id = ''::bytea"
                " THEN excluded.message_id ELSE deferred_messages.message_id END",
            p);
  }

  /// Moves the current record of a sequence number (and its runs) to the next generation.
  void supersede(postgres::Connection& c, MessageKey key, std::int64_t now) {
    key.generation = 0;
    auto next = c.query(
                     "SELECT coalesce(max(generation), 0) + 1 FROM deferred_messages"
                     " WHERE topic = $1 AND subscription = $2 AND sequence_number = $3",
                     Params().text(key.topic).text(key.subscription).int8(key.sequence_number))
                    .integer(0, 0);
    Params runs;
    key_params(runs, key).int8(next);
    c.query(std::string("UPDATE handler_runs SET generation = $5") + kKeyWhere, runs);
    Params p;
    key_params(p, key).int8(next).int8(now).bytes(kSupersededNote);
    c.query(std::string("UPDATE deferred_messages SET generation = $5, updated = $6,"
                        " lease_until = 0, last_error = CASE WHEN state IN ('completed',"
                        " 'dead-lettered') THEN last_error ELSE $7 END") +
                kKeyWhere,
            p);
  }

  std::size_t update_state(postgres::Connection& c, const MessageKey& key, State state,
                           const std::string& error) {
    // A lean completion drops the body and moves the runs onto the row.
    bool lean = lean_ && state == State::kCompleted;
    std::string runs;
    if (lean) runs = encode_runs(runs_to_keep(table_runs(c, key)));
    // Final states are never left: a late writer cannot revive a settled message. Any other
    // state is written only by the row's owner (the fencing token; $8 empty: not an instance).
    Params p;
    key_params(p, key)
        .text(to_string(state))
        .int8(to_ms(Clock::now()))
        .bytes(error)
        .text(me().id)
        .int8(releases_lease(state) ? 1 : 0)
        .int8(is_final(state) ? 1 : 0)
        .int8(lean ? 1 : 0)
        .bytes(runs);
    auto update = std::string(
                      "UPDATE deferred_messages SET state = $5, updated = $6,"
                      " last_error = CASE WHEN $7 = ''::bytea THEN last_error ELSE $7 END,"
                      " lease_until = CASE WHEN $9 = 1 THEN 0 ELSE lease_until END,"
                      " body = CASE WHEN $11 = 1 THEN ''::bytea ELSE body END,"
                      " body_dropped = CASE WHEN $11 = 1 THEN 1 ELSE body_dropped END,"
                      " runs = CASE WHEN $11 = 1 THEN $12 ELSE runs END") +
                  kKeyWhere +
                  " AND state NOT IN ('completed', 'dead-lettered')"
                  " AND ($10 = 1 OR $8 = '' OR owner IN ('', $8))";
    if (!lean) return static_cast<std::size_t>(c.query(update, p).affected());
    // The runs go with the update, in one round trip.
    auto r = c.query("WITH u AS (" + update + " RETURNING 1), d AS (DELETE FROM handler_runs" +
                         kKeyWhere + " AND EXISTS (SELECT 1 FROM u)) SELECT count(*) FROM u",
                     p);
    return static_cast<std::size_t>(r.integer(0, 0));
  }

  /// The runs of a message in the runs table (not those collapsed on a lean row).
  static std::vector<HandlerRun> table_runs(postgres::Connection& c, const MessageKey& key) {
    Params p;
    auto r = c.query(std::string("SELECT handler, attempt, outcome, started, finished, error,"
                                 " task_id, retries FROM handler_runs") +
                         kKeyWhere + " ORDER BY started, handler, attempt",
                     key_params(p, key));
    std::vector<HandlerRun> out;
    for (int i = 0; i < r.rows(); ++i) {
      HandlerRun run;
      run.handler = r.bytes(i, 0);
      run.attempt = static_cast<int>(r.integer(i, 1));
      run.outcome = outcome_from_string(r.bytes(i, 2)).value_or(HandlerRun::Outcome::kRunning);
      run.started = from_ms(r.integer(i, 3));
      if (!r.is_null(i, 4) && r.integer(i, 4) != 0) run.finished = from_ms(r.integer(i, 4));
      run.error = r.bytes(i, 5);
      run.task_id = r.bytes(i, 6);
      run.retries = static_cast<int>(r.integer(i, 7));
      out.push_back(std::move(run));
    }
    return out;
  }

  static void insert_run(postgres::Connection& c, const MessageKey& key, const HandlerRun& run) {
    Params p;
    key_params(p, key)
        .text(run.handler)
        .int8(run.attempt)
        .text(to_string(run.outcome))
        .int8(to_ms(run.started));
    if (run.finished) {
      p.int8(to_ms(*run.finished));
    } else {
      p.null_int8();
    }
    p.bytes(run.error).text(run.task_id).int8(run.retries);
    // A run that ends after its message completed lean goes on the row with the others.
    auto inserted = c.query(
        std::string("INSERT INTO handler_runs (topic, subscription, sequence_number, generation,"
                    " handler, attempt, outcome, started, finished, error, task_id, retries)"
                    " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12"
                    " WHERE NOT EXISTS (SELECT 1 FROM deferred_messages") +
            kKeyWhere +
            " AND body_dropped = 1) ON CONFLICT (topic, subscription, sequence_number,"
            " generation, handler, attempt) DO UPDATE SET outcome = excluded.outcome,"
            " started = excluded.started, finished = excluded.finished, error = excluded.error,"
            " task_id = excluded.task_id, retries = excluded.retries",
        p);
    if (inserted.affected() == 0) {
      Params k;
      auto row = c.query(std::string("SELECT runs FROM deferred_messages") + kKeyWhere,
                         key_params(k, key));
      auto runs = row.rows() > 0 ? decode_runs(row.bytes(0, 0)) : std::vector<HandlerRun>{};
      std::erase_if(runs, [&](const HandlerRun& r) {
        return r.handler == run.handler && r.attempt == run.attempt;
      });
      runs.push_back(run);
      Params u;
      key_params(u, key).bytes(encode_runs(runs_to_keep(runs)));
      c.query(std::string("UPDATE deferred_messages SET runs = $5") + kKeyWhere, u);
      return;  // Settled: no failure group to file it under.
    }
    bool failed =
        run.outcome == HandlerRun::Outcome::kFailed || run.outcome == HandlerRun::Outcome::kRetry;
    if (failed && run.finished) file_failure(c, key, run.handler, run.error, to_ms(*run.finished));
  }

  /// Files a message under the failure group of a run that failed.
  static void file_failure(postgres::Connection& c, const MessageKey& key,
                           const std::string& handler, const std::string& error, std::int64_t at) {
    auto normalised = normalise_error(error);
    auto name = utf8_text(handler);  // Sent as text: from a message's last error it may not be.
    Params p;
    key_params(p, key)
        .text(failure_group_id(key.topic, key.subscription, name, normalised))
        .text(name)
        .bytes(normalised)
        .int8(at);
    c.query(std::string("UPDATE deferred_messages SET failure_group = $5, failure_handler = $6,"
                        " failure_error = $7, failure_at = $8") +
                kKeyWhere,
            p);
  }

  /// Files the failed and retrying rows that have no group yet (parked by a metro before
  /// failure groups, or copied from another ledger without runs) under the group of their last
  /// failed run. Instances opening at once file the same rows the same way.
  static void file_unfiled(postgres::Connection& c) {
    auto rows = c.query(std::string("SELECT topic, subscription, sequence_number, generation,"
                                    " last_error, updated FROM deferred_messages WHERE") +
                        kGroupMembers + " AND failure_group = ''");
    if (rows.rows() == 0) return;
    postgres::Transaction tx(c);
    for (int i = 0; i < rows.rows(); ++i) {
      MessageKey key{rows.bytes(i, 0), rows.bytes(i, 1), rows.integer(i, 2), rows.integer(i, 3)};
      Params k;
      auto run = c.query(std::string("SELECT handler, error, coalesce(finished, started)"
                                     " FROM handler_runs") +
                             kKeyWhere +
                             " AND outcome IN ('failed', 'retry') ORDER BY started DESC LIMIT 1",
                         key_params(k, key));
      if (run.rows() > 0) {
        file_failure(c, key, run.bytes(0, 0), run.bytes(0, 1), run.integer(0, 2));
      } else {
        // No run recorded: the error as the message has it (`handler: why`).
        auto last_error = rows.bytes(i, 4);
        auto colon = last_error.find(": ");
        auto handler = colon == std::string::npos ? std::string() : last_error.substr(0, colon);
        auto why = colon == std::string::npos ? last_error : last_error.substr(colon + 2);
        file_failure(c, key, handler, why, rows.integer(i, 5));
      }
    }
    tx.commit();
  }

  /// Queues `apply`, waits until the transaction holding it has committed, returns its answer.
  /// Up to `committers_` groups commit at once, each on a connection of its own, so that the
  /// server's flushes overlap (PostgreSQL shares WAL flushes among concurrent commits too).
  std::size_t write(Apply apply) EXCLUDES(queue_mutex_) {
    auto pending = std::make_shared<Pending>();
    pending->apply = std::move(apply);
    MutexLock lock(queue_mutex_);
    queue_.push_back(pending);
    while (!pending->done) {
      if (pending->taken || committing_ >= committers_) {
        committed_.wait(lock);
        continue;
      }
      ++committing_;
      auto group = std::move(queue_);
      queue_.clear();
      for (auto& p : group) p->taken = true;
      lock.unlock();
      commit(group);
      lock.lock();
      for (auto& p : group) p->done = true;
      --committing_;
      committed_.notify_all();
    }
    if (pending->error) std::rethrow_exception(pending->error);
    return pending->result;
  }

  void commit(std::vector<std::shared_ptr<Pending>>& group) {
    try {
      auto c = pool_.acquire();
      // Most groups fail nowhere: first the whole group in one transaction without savepoints
      // (two round trips fewer per write). When a write fails, that transaction is rolled back
      // and the group runs again with a savepoint per write, so only the failing one is lost.
      {
        postgres::Transaction tx(*c);
        try {
          for (auto& p : group) p->result = p->apply(*c);
          tx.commit();
          counted(group);
          return;
        } catch (const PgError& e) {
          if (e.connection_lost() || !c->ok()) throw;
          if (group.size() == 1) {
            group.front()->error = fresh_exception([&] { return explain(e, where_); });
            return;
          }
        } catch (const Error&) {
          if (!c->ok()) throw;
          if (group.size() == 1) {
            group.front()->error = std::current_exception();
            return;
          }
        }
      }
      postgres::Transaction tx(*c);
      for (auto& p : group) {
        c->exec("SAVEPOINT pending_write");
        try {
          p->result = p->apply(*c);
          c->exec("RELEASE SAVEPOINT pending_write");
        } catch (const PgError& e) {
          // This write alone is undone; a lost connection ends the whole transaction.
          if (e.connection_lost() || !c->ok()) throw;
          p->error = fresh_exception([&] { return explain(e, where_); });
          c->exec("ROLLBACK TO SAVEPOINT pending_write; RELEASE SAVEPOINT pending_write");
        } catch (...) {
          p->error = std::current_exception();
          if (!c->ok()) throw;
          c->exec("ROLLBACK TO SAVEPOINT pending_write; RELEASE SAVEPOINT pending_write");
        }
      }
      tx.commit();
      counted(group);
    } catch (const PgError& e) {
      fail_all(group, explain(e, where_));
    } catch (const Error& e) {
      fail_all(group, e);
    } catch (...) {
      auto failed = std::current_exception();
      for (auto& p : group) p->error = failed;
    }
  }

  /// Counts a committed group (its writes that did not fail).
  void counted(const std::vector<std::shared_ptr<Pending>>& group) {
    commits_.fetch_add(1, std::memory_order_relaxed);
    for (const auto& p : group) {
      if (!p->error) writes_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  /// Every writer of the group gets an exception object of its own: they rethrow it on their own
  /// threads, and a shared one would share its message buffer among them.
  static void fail_all(std::vector<std::shared_ptr<Pending>>& group, const Error& e) {
    for (auto& p : group) {
      p->error = fresh_exception([&] { return Error(e.what(), e.is_transient()); });
    }
  }

  const std::string where_;
  const bool lean_;  // completed_rows = "lean".
  std::atomic<std::uint64_t> writes_{0};
  std::atomic<std::uint64_t> commits_{0};
  postgres::Pool pool_;
  mutable Mutex me_mutex_;
  InstanceInfo me_ GUARDED_BY(me_mutex_);
  Mutex queue_mutex_;
  CondVar committed_;
  std::vector<std::shared_ptr<Pending>> queue_ GUARDED_BY(queue_mutex_);
  const std::size_t committers_;
  std::size_t committing_ GUARDED_BY(queue_mutex_) = 0;
};

}  // namespace

namespace detail {

std::unique_ptr<Ledger> open_postgres_ledger(const std::string& url, const OpenOptions& options) {
  return std::make_unique<PostgresLedger>(url, options);
}

}  // namespace detail
}  // namespace metro::ledger
