#pragma once

// A small internal layer over libpq: every PGconn and PGresult has an owner, statements are
// prepared once per connection, parameters and results travel in binary (so any bytes, NULs
// included, go into a bytea unchanged), and a pool hands connections out with a deadline and
// reconnects with backoff. Not a public header: the PostgreSQL ledger is built on it.
//
// Thread-safety: a `Connection` is used by one thread at a time (the pool hands each to one
// borrower); a `Pool` may be used from any thread. Errors are thrown as `PgError`.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <metro/error.hpp>

#include "../common/thread_annotations.hpp"

struct pg_conn;
struct pg_result;

namespace metro::postgres {

/// A failed libpq call or statement. `sqlstate()` is PostgreSQL's five-character code (empty when
/// the server never answered); `connection_lost()` when the connection is unusable.
class PgError : public Error {
 public:
  PgError(const std::string& what, std::string sqlstate, bool connection_lost);
  const std::string& sqlstate() const noexcept { return sqlstate_; }
  bool connection_lost() const noexcept { return connection_lost_; }

 private:
  std::string sqlstate_;
  bool connection_lost_;
};

struct ConnectionDeleter {
  void operator()(pg_conn* c) const noexcept;
};
struct ResultDeleter {
  void operator()(pg_result* r) const noexcept;
};
using ConnectionPtr = std::unique_ptr<pg_conn, ConnectionDeleter>;
using ResultPtr = std::unique_ptr<pg_result, ResultDeleter>;

/// Statement parameters ($1, $2 …), all sent in binary with their types.
class Params {
 public:
  Params& text(std::string_view v);   ///< text (valid UTF-8 without NUL: names, states)
  Params& bytes(std::string_view v);  ///< bytea: any bytes
  Params& int8(std::int64_t v);
  Params& null_int8();

  std::size_t size() const { return values_.size(); }

 private:
  friend class Connection;
  std::vector<unsigned int> types_;
  std::vector<std::string> values_;
  std::vector<bool> nulls_;
};

/// The rows of a statement (binary format).
class Result {
 public:
  explicit Result(ResultPtr r);
  int rows() const { return rows_; }
  bool is_null(int row, int column) const;
  /// A text or bytea column, as bytes.
  std::string bytes(int row, int column) const;
  /// An int8, int4, int2 or bool column.
  std::int64_t integer(int row, int column) const;
  /// Rows changed by an INSERT/UPDATE/DELETE.
  std::int64_t affected() const;

 private:
  ResultPtr result_;
  int rows_ = 0;
};

/// Connection settings: the user's URL plus metro's defaults for timeouts and keepalives.
struct ConnectOptions {
  std::string url;  ///< `postgresql://user:password@host:port/db?…`
  std::chrono::seconds connect_timeout{10};
  std::chrono::seconds statement_timeout{30};
  std::string application_name = "metro";
};

/// One connection with its prepared statements.
class Connection {
 public:
  /// Connects; throws `PgError` saying where (host and port, the password redacted) and why.
  explicit Connection(const ConnectOptions& options);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// Runs statements without parameters (`;`-separated allowed).
  void exec(std::string_view sql);
  /// Runs one statement with parameters (prepared once on this connection).
  Result query(const std::string& sql, const Params& params = {});
  bool ok() const;
  /// Whether a transaction is open (and whether it failed: then only a rollback helps).
  bool in_transaction() const;
  /// `host:port` this connection went to.
  const std::string& where() const { return where_; }

 private:
  [[noreturn]] void fail(const std::string& context, pg_result* result);
  ConnectionPtr conn_;
  std::string where_;
  std::map<std::string, std::string, std::less<>> prepared_;  // SQL → statement name.
};

/// A fixed number of connections, made on demand, handed out one borrower at a time. A broken
/// connection is dropped when given back; connecting again backs off (up to `max_backoff`) after
/// a failure, answering with the last error meanwhile, so an unreachable server is not hammered.
class Pool {
 public:
  Pool(ConnectOptions options, std::size_t size);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  class Lease {
   public:
    Lease(Pool* pool, std::unique_ptr<Connection> c) : pool_(pool), conn_(std::move(c)) {}
    Lease(Lease&& other) noexcept = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    Connection& operator*() const { return *conn_; }
    Connection* operator->() const { return conn_.get(); }

   private:
    Pool* pool_;
    std::unique_ptr<Connection> conn_;
  };

  /// A connection, waiting at most `wait` for one to be free. Throws `PgError` (transient) when
  /// none is free in time or the server cannot be reached.
  Lease acquire(std::chrono::milliseconds wait = std::chrono::seconds(30)) EXCLUDES(mutex_);
  const ConnectOptions& options() const { return options_; }

 private:
  void give_back(std::unique_ptr<Connection> c) EXCLUDES(mutex_);

  const ConnectOptions options_;
  const std::size_t size_;
  Mutex mutex_;
  CondVar freed_;
  std::vector<std::unique_ptr<Connection>> idle_ GUARDED_BY(mutex_);
  std::size_t out_ GUARDED_BY(mutex_) = 0;  // Connections handed out or being made.
  std::chrono::steady_clock::time_point next_connect_ GUARDED_BY(mutex_){};
  std::chrono::milliseconds backoff_ GUARDED_BY(mutex_){0};
  // The last failure to connect, kept as text: each borrower gets an exception of its own (an
  // exception object shared between threads shares its message buffer).
  std::optional<std::pair<std::string, std::string>> last_error_ GUARDED_BY(mutex_);
};

/// `host:port/db` of a URL (for messages), without user or password.
std::string describe(std::string_view url);

/// A transaction on a borrowed connection: rolled back in the destructor unless committed.
class Transaction {
 public:
  explicit Transaction(Connection& c);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Connection& c_;
  bool open_ = true;
};

}  // namespace metro::postgres
