#include "journal.hpp"

#include <sqlite3.h>

#include <metro/error.hpp>

namespace metro::emulator {
namespace {

struct Statement {
  sqlite3_stmt* stmt = nullptr;
  ~Statement() { sqlite3_finalize(stmt); }
};

void check(sqlite3* db, int rc, const char* what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    throw Error(std::string("emulator journal: ") + what + ": " + sqlite3_errmsg(db));
  }
}

void text(sqlite3_stmt* s, int i, const std::string& v) {
  sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
}

}  // namespace

struct Journal::Statements {
  Statement put, erase, sequence, load_messages, load_sequences;
};

Journal::Journal(const std::filesystem::path& directory)
    : path_(directory / "emulator.db"), statements_(std::make_unique<Statements>()) {
  std::filesystem::create_directories(directory);
  sqlite3* db = nullptr;
  int rc = sqlite3_open(path_.c_str(), &db);
  db_.reset(db);  // sqlite3_open gives a handle to close even when it fails
  if (rc != SQLITE_OK) {
    std::string message = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    throw Error("cannot open the emulator journal " + path_.string() + ": " + message);
  }
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=NORMAL");
  exec(
      "CREATE TABLE IF NOT EXISTS messages (entity TEXT NOT NULL, sequence_number INTEGER NOT "
      "NULL, bytes BLOB NOT NULL, enqueued INTEGER NOT NULL, expires INTEGER NOT NULL, "
      "scheduled_for INTEGER NOT NULL, delivery_count INTEGER NOT NULL, state INTEGER NOT NULL, "
      "PRIMARY KEY (entity, sequence_number))");
  exec("CREATE TABLE IF NOT EXISTS sequences (entity TEXT PRIMARY KEY, next INTEGER NOT NULL)");
  auto prepare = [&](Statement& s, const char* sql) {
    check(db_.get(), sqlite3_prepare_v2(db_.get(), sql, -1, &s.stmt, nullptr), sql);
  };
  prepare(statements_->put,
          "INSERT OR REPLACE INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
  prepare(statements_->erase, "DELETE FROM messages WHERE entity = ?1 AND sequence_number = ?2");
  prepare(statements_->sequence, "INSERT OR REPLACE INTO sequences VALUES (?1, ?2)");
  prepare(statements_->load_messages,
          "SELECT entity, sequence_number, bytes, enqueued, expires, scheduled_for, "
          "delivery_count, state FROM messages ORDER BY entity, sequence_number");
  prepare(statements_->load_sequences, "SELECT entity, next FROM sequences");
}

Journal::~Journal() = default;

void Journal::Close::operator()(sqlite3* db) const { sqlite3_close(db); }

void Journal::exec(const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error ? error : "unknown error";
    sqlite3_free(error);
    throw Error(std::string("emulator journal: ") + sql + ": " + message);
  }
}

Journal::Transaction::Transaction(Journal& journal) : journal_(journal) { journal_.exec("BEGIN"); }

Journal::Transaction::~Transaction() {
  // After a failed statement SQLite may already have rolled back; ROLLBACK then only reports that
  // no transaction is active, which leaves nothing to do.
  if (open_) sqlite3_exec(journal_.db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Journal::Transaction::commit() {
  journal_.exec("COMMIT");
  open_ = false;
}

void Journal::refuse_writes(bool refuse) {
  exec(refuse ? "PRAGMA query_only=1" : "PRAGMA query_only=0");
}

void Journal::limit_pages(std::int64_t pages) {
  exec(("PRAGMA max_page_count=" + std::to_string(pages)).c_str());
}

void Journal::put(const JournalRow& row) {
  auto* s = statements_->put.stmt;
  sqlite3_reset(s);
  text(s, 1, row.entity);
  sqlite3_bind_int64(s, 2, row.sequence_number);
  sqlite3_bind_blob(s, 3, row.bytes.data(), static_cast<int>(row.bytes.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(s, 4, row.enqueued);
  sqlite3_bind_int64(s, 5, row.expires);
  sqlite3_bind_int64(s, 6, row.scheduled_for);
  sqlite3_bind_int64(s, 7, row.delivery_count);
  sqlite3_bind_int(s, 8, row.state);
  check(db_.get(), sqlite3_step(s), "storing a message");
}

void Journal::erase(const std::string& entity, std::int64_t sequence_number) {
  auto* s = statements_->erase.stmt;
  sqlite3_reset(s);
  text(s, 1, entity);
  sqlite3_bind_int64(s, 2, sequence_number);
  check(db_.get(), sqlite3_step(s), "removing a message");
}

void Journal::set_next_sequence(const std::string& entity, std::int64_t next) {
  auto* s = statements_->sequence.stmt;
  sqlite3_reset(s);
  text(s, 1, entity);
  sqlite3_bind_int64(s, 2, next);
  check(db_.get(), sqlite3_step(s), "storing a sequence number");
}

void Journal::load(const std::function<void(const JournalRow&)>& row,
                   const std::function<void(const std::string&, std::int64_t)>& next_sequence) {
  auto* s = statements_->load_sequences.stmt;
  sqlite3_reset(s);
  while (sqlite3_step(s) == SQLITE_ROW) {
    next_sequence(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)),
                  sqlite3_column_int64(s, 1));
  }
  s = statements_->load_messages.stmt;
  sqlite3_reset(s);
  while (sqlite3_step(s) == SQLITE_ROW) {
    JournalRow r;
    r.entity = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    r.sequence_number = sqlite3_column_int64(s, 1);
    r.bytes.assign(static_cast<const char*>(sqlite3_column_blob(s, 2)),
                   static_cast<std::size_t>(sqlite3_column_bytes(s, 2)));
    r.enqueued = sqlite3_column_int64(s, 3);
    r.expires = sqlite3_column_int64(s, 4);
    r.scheduled_for = sqlite3_column_int64(s, 5);
    r.delivery_count = sqlite3_column_int64(s, 6);
    r.state = sqlite3_column_int(s, 7);
    row(r);
  }
}

}  // namespace metro::emulator
