#include "sqlite.hpp"

#include <sqlite3.h>

namespace metro::sqlite {

SqliteError::SqliteError(const std::string& what, int code) : Error(what, false), code_(code) {}

void ConnectionDeleter::operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
void StatementDeleter::operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }

namespace {

[[noreturn]] void fail(sqlite3* db, const std::string& context) {
  int code = db != nullptr ? sqlite3_extended_errcode(db) : SQLITE_NOMEM;
  std::string why = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
  throw SqliteError(context.empty() ? why : context + ": " + why, code);
}

}  // namespace

// ---- Statement ---------------------------------------------------------------------------------

Statement::~Statement() {
  if (stmt_ == nullptr) return;
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

Statement& Statement::bind(int index, std::string_view value) {
  sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  return *this;
}

Statement& Statement::bind(int index, std::int64_t value) {
  sqlite3_bind_int64(stmt_, index, value);
  return *this;
}

Statement& Statement::bind_null(int index) {
  sqlite3_bind_null(stmt_, index);
  return *this;
}

bool Statement::step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  fail(db_, {});
}

std::string Statement::text(int column) const {
  const auto* p = static_cast<const char*>(sqlite3_column_blob(stmt_, column));
  auto n = static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column));
  return p == nullptr ? std::string() : std::string(p, n);
}

std::int64_t Statement::integer(int column) const { return sqlite3_column_int64(stmt_, column); }

bool Statement::is_null(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

// ---- Database ----------------------------------------------------------------------------------

Database::Database(const std::string& path, int busy_timeout_ms) : path_(path) {
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  db_.reset(raw);  // Owned even when the open failed.
  if (rc != SQLITE_OK) fail(db_.get(), "cannot open " + path);
  sqlite3_extended_result_codes(db_.get(), 1);
  sqlite3_busy_timeout(db_.get(), busy_timeout_ms);
}

void Database::exec(std::string_view sql) {
  std::string text(sql);
  char* error = nullptr;
  if (sqlite3_exec(db_.get(), text.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    std::string why = error != nullptr ? error : sqlite3_errmsg(db_.get());
    sqlite3_free(error);
    throw SqliteError(why, sqlite3_extended_errcode(db_.get()));
  }
}

Statement Database::statement(const std::string& sql) {
  auto it = statements_.find(sql);
  if (it == statements_.end()) {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v3(db_.get(), sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) !=
        SQLITE_OK) {
      sqlite3_finalize(raw);
      fail(db_.get(), "in: " + sql);
    }
    it = statements_.emplace(sql, StatementPtr(raw)).first;
  }
  return Statement(db_.get(), it->second.get());
}

std::int64_t Database::changes() const { return sqlite3_changes64(db_.get()); }

bool Database::in_transaction() const { return sqlite3_get_autocommit(db_.get()) == 0; }

// ---- Transaction and Savepoint -----------------------------------------------------------------

Transaction::Transaction(Database& db) : db_(db) { db_.exec("BEGIN IMMEDIATE"); }

Transaction::~Transaction() {
  // A failed COMMIT (or a statement error) may have ended the transaction already.
  if (open_ && db_.in_transaction())
    sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  db_.exec("COMMIT");
  open_ = false;
}

Savepoint::Savepoint(Database& db, std::string name) : db_(db), name_(std::move(name)) {
  db_.exec("SAVEPOINT " + name_);
}

Savepoint::~Savepoint() {
  if (!open_ || !db_.in_transaction()) return;
  std::string sql = "ROLLBACK TO " + name_ + "; RELEASE " + name_;
  sqlite3_exec(db_.handle(), sql.c_str(), nullptr, nullptr, nullptr);
}

void Savepoint::release() {
  db_.exec("RELEASE " + name_);
  open_ = false;
}

// ---- migrations --------------------------------------------------------------------------------

int migrate(Database& db, const std::vector<Migration>& migrations) {
  db.exec(
      "CREATE TABLE IF NOT EXISTS schema_migrations ("
      " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied INTEGER NOT NULL)");
  int before = 0;
  {
    auto s = db.statement("SELECT coalesce(max(version), 0) FROM schema_migrations");
    if (s.step()) before = static_cast<int>(s.integer(0));
  }
  int newest = migrations.empty() ? 0 : migrations.back().version;
  if (before > newest) {
    throw Error(db.path() + " has schema version " + std::to_string(before) +
                ", newer than this metro knows (" + std::to_string(newest) +
                "); run a newer metro on it");
  }
  for (const auto& m : migrations) {
    if (m.version <= before) continue;
    Transaction tx(db);
    try {
      db.exec(m.sql);
    } catch (const SqliteError& e) {
      throw SqliteError(db.path() + ": migration " + std::to_string(m.version) + " (" +
                            std::string(m.description) + ") failed: " + e.what(),
                        e.code());
    }
    auto s = db.statement(
        "INSERT INTO schema_migrations (version, description, applied)"
        " VALUES (?1, ?2, CAST(strftime('%s', 'now') AS INTEGER))");
    s.bind(1, m.version).bind(2, m.description);
    s.run();
    tx.commit();
  }
  return before;
}

int schema_version(Database& db) {
  {
    auto s = db.statement(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'");
    if (!s.step() || s.integer(0) == 0) return 0;
  }
  auto s = db.statement("SELECT coalesce(max(version), 0) FROM schema_migrations");
  return s.step() ? static_cast<int>(s.integer(0)) : 0;
}

}  // namespace metro::sqlite
