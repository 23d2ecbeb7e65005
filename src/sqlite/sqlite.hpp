#pragma once

// A small internal layer over the SQLite C API: every sqlite3* and sqlite3_stmt* has an owner,
// statements are prepared once and borrowed, a transaction rolls back unless committed, and a
// savepoint scopes one caller's part of a larger transaction. Numbered schema migrations run at
// open. Not a public header: the ledger (and later the emulator's journal) build on it.
//
// Thread-safety: a `Database` is one connection; use it from one thread at a time (callers hold
// their own lock). Errors are thrown as `metro::sqlite::SqliteError` carrying SQLite's code.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <metro/error.hpp>

struct sqlite3;
struct sqlite3_stmt;

namespace metro::sqlite {

/// A failed SQLite call: `code()` is the extended result code (SQLITE_FULL, SQLITE_READONLY …).
class SqliteError : public Error {
 public:
  SqliteError(const std::string& what, int code);
  int code() const noexcept { return code_; }

 private:
  int code_;
};

struct ConnectionDeleter {
  void operator()(sqlite3* db) const noexcept;
};
struct StatementDeleter {
  void operator()(sqlite3_stmt* stmt) const noexcept;
};
using ConnectionPtr = std::unique_ptr<sqlite3, ConnectionDeleter>;
using StatementPtr = std::unique_ptr<sqlite3_stmt, StatementDeleter>;

/// A prepared statement borrowed for one use: reset and unbound when it goes out of scope.
class Statement {
 public:
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  Statement(Statement&& other) noexcept : db_(other.db_), stmt_(other.stmt_) {
    other.stmt_ = nullptr;
  }
  Statement& operator=(Statement&&) = delete;

  /// Binds text (any bytes, NULs included: the length is given).
  Statement& bind(int index, std::string_view value);
  Statement& bind(int index, const std::string& value) {
    return bind(index, std::string_view(value));
  }
  Statement& bind(int index, const char* value) { return bind(index, std::string_view(value)); }
  Statement& bind(int index, std::int64_t value);
  Statement& bind(int index, int value) { return bind(index, static_cast<std::int64_t>(value)); }
  Statement& bind_null(int index);
  /// Steps once; true when a row is ready. Throws `SqliteError`.
  bool step();
  /// Steps to the end (a statement that returns no rows).
  void run() {
    while (step()) {
    }
  }
  std::string text(int column) const;
  std::int64_t integer(int column) const;
  bool is_null(int column) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

/// One connection with a cache of prepared statements.
class Database {
 public:
  /// Opens (creating when missing) `path` read-write. Throws `SqliteError` naming the file.
  explicit Database(const std::string& path, int busy_timeout_ms = 5000);
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database() = default;

  /// Runs statements without results (`;`-separated). Throws `SqliteError`.
  void exec(std::string_view sql);
  /// The cached statement for `sql`, prepared on first use.
  Statement statement(const std::string& sql);
  /// Rows changed by the last INSERT/UPDATE/DELETE.
  std::int64_t changes() const;
  /// Whether the connection is inside a transaction.
  bool in_transaction() const;
  const std::string& path() const { return path_; }
  sqlite3* handle() const { return db_.get(); }

 private:
  std::string path_;
  ConnectionPtr db_;
  // Declared after the connection, so finalized before it closes.
  std::map<std::string, StatementPtr, std::less<>> statements_;
};

/// `BEGIN IMMEDIATE` … `COMMIT`; rolled back in the destructor unless `commit` succeeded.
class Transaction {
 public:
  explicit Transaction(Database& db);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Database& db_;
  bool open_ = true;
};

/// `SAVEPOINT name` inside a transaction: `release` keeps its changes, the destructor (without a
/// release) rolls back to it, leaving the rest of the transaction intact.
class Savepoint {
 public:
  Savepoint(Database& db, std::string name);
  ~Savepoint();
  Savepoint(const Savepoint&) = delete;
  Savepoint& operator=(const Savepoint&) = delete;
  void release();

 private:
  Database& db_;
  std::string name_;
  bool open_ = true;
};

/// A numbered schema change. Versions start at 1 and increase by one; each runs once, in its
/// own transaction, recorded in the table `schema_migrations`.
struct Migration {
  int version;
  std::string_view description;
  std::string_view sql;
};

/// Brings `db` to the last version of `migrations`; returns the version it was at before (0 for
/// a file that had none recorded). Throws `SqliteError` when one fails (its transaction is rolled
/// back, earlier ones stay), and `metro::Error` when the file is newer than this program knows.
int migrate(Database& db, const std::vector<Migration>& migrations);

/// The last migration applied to `db` (0 when none is recorded).
int schema_version(Database& db);

}  // namespace metro::sqlite
