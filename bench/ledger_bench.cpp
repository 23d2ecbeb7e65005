// The ledger's cost per message: bytes on disk and commits, for the SQLite and the PostgreSQL
// ledger, with `completed_rows = "lean"` and `"full"`. Each message goes the way `metro run`
// takes it, with the calls the service makes: recorded `deferring` in batches (intake), moved to
// `deferred` (intake), a run begun and ended by one of several workers at once (task runner), and
// `completed` in batches (settler). 55-byte JSON bodies, one no-op handler, one run.
//
// usage: bench_ledger [N] [postgresql URL of an empty database to use]
// Prints, per ledger and mode, one line of figures:
//   bytes/msg    growth of the database divided by N: SQLite the file after a WAL checkpoint
//                (page_count × page_size); PostgreSQL pg_total_relation_size of its tables.
//   compact      the same once the free space is given back (SQLite VACUUM; PostgreSQL VACUUM
//                FULL): what the live rows take, the steady state that reuse of free space
//                approaches.
//   commits/msg  transactions the ledger committed (its write_stats) divided by N.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <libpq-fe.h>
#include <sqlite3.h>
#include <unistd.h>

#include <metro/ledger/ledger.hpp>

namespace {

namespace ml = metro::ledger;
using SysClock = std::chrono::system_clock;

constexpr std::size_t kBatch = 100;  // Messages the intake records at once (a receive's worth).
constexpr int kWorkers = 8;          // Handler runs at once.

struct Figures {
  double bytes = 0;
  double compact = 0;
  double commits = 0;
  double seconds = 0;
};

// ---- SQLite ---------------------------------------------------------------------------------

using SqliteDb = std::unique_ptr<sqlite3, decltype(&sqlite3_close)>;

std::int64_t sqlite_pragma(sqlite3* db, const char* sql) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &raw, nullptr) != SQLITE_OK) {
    throw std::runtime_error(sqlite3_errmsg(db));
  }
  std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)> s(raw, sqlite3_finalize);
  return sqlite3_step(s.get()) == SQLITE_ROW ? sqlite3_column_int64(s.get(), 0) : 0;
}

/// The file's size in bytes after a checkpoint: every page, free ones included.
std::int64_t sqlite_size(const std::string& path, bool vacuum) {
  sqlite3* raw = nullptr;
  if (sqlite3_open(path.c_str(), &raw) != SQLITE_OK) throw std::runtime_error("cannot open");
  SqliteDb db(raw, sqlite3_close);
  sqlite3_busy_timeout(db.get(), 10000);
  if (vacuum) sqlite3_exec(db.get(), "VACUUM", nullptr, nullptr, nullptr);
  sqlite3_exec(db.get(), "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
  return sqlite_pragma(db.get(), "PRAGMA page_count") * sqlite_pragma(db.get(), "PRAGMA page_size");
}

// ---- PostgreSQL -----------------------------------------------------------------------------

using PgConn = std::unique_ptr<PGconn, decltype(&PQfinish)>;

PgConn pg_connect(const std::string& url) {
  PgConn c(PQconnectdb(url.c_str()), PQfinish);
  if (PQstatus(c.get()) != CONNECTION_OK) {
    throw std::runtime_error(std::string("cannot connect: ") + PQerrorMessage(c.get()));
  }
  // Quiet: DROP … CASCADE's notices.
  PQsetNoticeProcessor(
      c.get(), [](void*, const char*) {}, nullptr);
  return c;
}

std::string pg_value(PGconn* c, const std::string& sql) {
  std::unique_ptr<PGresult, decltype(&PQclear)> r(PQexec(c, sql.c_str()), PQclear);
  auto status = PQresultStatus(r.get());
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    throw std::runtime_error(sql + ": " + PQerrorMessage(c));
  }
  return status == PGRES_TUPLES_OK && PQntuples(r.get()) > 0 ? PQgetvalue(r.get(), 0, 0) : "";
}

/// The ledger's tables with their indexes and TOAST, in bytes.
std::int64_t pg_size(const std::string& url, bool vacuum_full) {
  auto c = pg_connect(url);
  pg_value(c.get(), vacuum_full ? "VACUUM FULL" : "VACUUM");
  return std::stoll(
      pg_value(c.get(),
               "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
               " JOIN pg_namespace n ON n.oid = c.relnamespace"
               " WHERE n.nspname = current_schema() AND c.relkind = 'r'"));
}

void pg_reset(const std::string& url) {
  auto c = pg_connect(url);
  pg_value(c.get(), "DROP SCHEMA IF EXISTS public CASCADE");
  pg_value(c.get(), "CREATE SCHEMA public");
}

// ---- the flow -------------------------------------------------------------------------------

std::string hex(std::uint64_t v, int digits) {
  static const char* kDigits = "0123456789abcdef";
  std::string out(static_cast<std::size_t>(digits), '0');
  for (int i = digits - 1; i >= 0 && v != 0; --i, v >>= 4) {
    out[static_cast<std::size_t>(i)] = kDigits[v & 15];
  }
  return out;
}

/// A message as the intake records it: names as bench_service's, a 36-character message id
/// (an SDK's UUID), a W3C trace context, a 55-byte JSON body.
ml::DeferredMessage message(std::int64_t seq) {
  ml::DeferredMessage m;
  m.key = {"bench-t1", "metro", seq, 0};
  m.subject = "Bench/Type/Noop";
  auto id = hex(static_cast<std::uint64_t>(seq) * 2654435761u, 32);
  m.message_id = id.substr(0, 8) + "-" + id.substr(8, 4) + "-" + id.substr(12, 4) + "-" +
                 id.substr(16, 4) + "-" + id.substr(20, 12);
  m.body = R"({"subject": "Bench/Type/Noop", "n": )" + std::to_string(seq);
  m.body += std::string(54 - m.body.size(), ' ') + "}";
  m.enqueued_time = SysClock::now();
  m.state = ml::State::kDeferring;
  m.trace_parent = "00-" + hex(static_cast<std::uint64_t>(seq), 32) + "-" +
                   hex(static_cast<std::uint64_t>(seq) * 7, 16) + "-01";
  return m;
}

/// Sends `n` messages through `ledger` as the service does.
void flow(ml::Ledger& ledger, std::int64_t n) {
  for (std::int64_t first = 1; first <= n; first += kBatch) {
    auto last = std::min<std::int64_t>(n, first + static_cast<std::int64_t>(kBatch) - 1);
    std::vector<ml::DeferredMessage> rows;
    std::vector<ml::MessageKey> keys;
    for (auto seq = first; seq <= last; ++seq) {
      rows.push_back(message(seq));
      keys.push_back(rows.back().key);
    }
    ledger.record_all(rows);
    ledger.set_state_all(keys, ml::State::kDeferred);
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> workers;
    for (int w = 0; w < kWorkers; ++w) {
      workers.emplace_back([&] {
        for (auto i = next++; i < keys.size(); i = next++) {
          ml::HandlerRun run;
          run.handler = "noop";
          run.started = SysClock::now();
          ledger.begin_run(keys[i], run);
          run.outcome = ml::HandlerRun::Outcome::kSucceeded;
          run.finished = SysClock::now();
          ledger.record_run(keys[i], run);
        }
      });
    }
    for (auto& t : workers) t.join();
    ledger.set_state_all(keys, ml::State::kCompleted);
  }
}

Figures measure(const std::string& url, ml::CompletedRows mode, std::int64_t n,
                const std::function<std::int64_t(bool)>& size) {
  ml::OpenOptions options;
  options.completed_rows = mode;
  auto ledger = ml::open_ledger(url, options);
  ml::InstanceInfo me;
  me.id = "bench-1";
  me.host = "bench";
  me.pid = ::getpid();
  ledger->join(me);
  auto before = size(false);
  auto commits = ledger->write_stats().commits;
  auto start = std::chrono::steady_clock::now();
  flow(*ledger, n);
  Figures f;
  f.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  f.commits = static_cast<double>(ledger->write_stats().commits - commits) / static_cast<double>(n);
  ledger.reset();
  f.bytes = static_cast<double>(size(false) - before) / static_cast<double>(n);
  f.compact = static_cast<double>(size(true) - before) / static_cast<double>(n);
  return f;
}

void print(const char* ledger, const char* mode, std::int64_t n, const Figures& f) {
  std::printf(
      "%-10s completed_rows=%-4s N=%lld  bytes/msg %6.0f  compact %6.0f  commits/msg %.2f"
      "  (%.0f msg/s)\n",
      ledger, mode, static_cast<long long>(n), f.bytes, f.compact, f.commits,
      static_cast<double>(n) / f.seconds);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::int64_t n = argc > 1 ? std::stoll(argv[1]) : 20000;
    std::string pg = argc > 2 ? argv[2] : "";
    auto dir = std::filesystem::temp_directory_path() /
               ("metro-bench-ledger-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    for (auto [mode, name] : {std::pair{ml::CompletedRows::kLean, "lean"},
                              std::pair{ml::CompletedRows::kFull, "full"}}) {
      auto path = (dir / (std::string(name) + ".db")).string();
      // The empty ledger's size is measured after it is created (its schema), as a baseline.
      ml::open_ledger("sqlite://" + path).reset();
      print("sqlite", name, n,
            measure("sqlite://" + path, mode, n, [&](bool c) { return sqlite_size(path, c); }));
      if (!pg.empty()) {
        pg_reset(pg);
        ml::open_ledger(pg).reset();
        print("postgresql", name, n, measure(pg, mode, n, [&](bool c) { return pg_size(pg, c); }));
      }
    }
    std::filesystem::remove_all(dir);
  } catch (const std::exception& e) {
    std::cerr << "bench_ledger: " << e.what() << "\n";
    return 1;
  }
}
