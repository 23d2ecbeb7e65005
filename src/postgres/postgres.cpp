#include "postgres.hpp"

#include <arpa/inet.h>
#include <libpq-fe.h>

#include <cstring>

namespace metro::postgres {

namespace {

constexpr unsigned int kInt8 = 20;
constexpr unsigned int kText = 25;
constexpr unsigned int kBytea = 17;

/// Transient: the connection went, or the server says trying again later can work (connection
/// exceptions, serialisation and deadlocks, insufficient resources such as a full disk, the
/// server shutting down or starting, a read-only server that may be promoted).
bool transient(const std::string& sqlstate, bool lost) {
  if (lost || sqlstate.size() != 5) return true;
  auto cls = sqlstate.substr(0, 2);
  return cls == "08" || cls == "40" || cls == "53" || cls == "57" || sqlstate == "25006";
}

/// libpq's messages span lines ("…failed: Connection refused\n\tIs the server running…"): one
/// line for a log.
std::string one_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\n') {
      out += "; ";
      while (i + 1 < text.size() && (text[i + 1] == '\t' || text[i + 1] == ' ')) ++i;
    } else {
      out += text[i];
    }
  }
  return out;
}

std::int64_t decode_int(const char* p, int n) {
  switch (n) {
    case 8: {
      std::uint64_t v = 0;
      for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
      return static_cast<std::int64_t>(v);
    }
    case 4: {
      std::uint32_t v = 0;
      std::memcpy(&v, p, 4);
      return static_cast<std::int32_t>(ntohl(v));
    }
    case 2: {
      std::uint16_t v = 0;
      std::memcpy(&v, p, 2);
      return static_cast<std::int16_t>(ntohs(v));
    }
    case 1:
      return p[0] != 0 ? 1 : 0;
    default:
      return 0;
  }
}

}  // namespace

PgError::PgError(const std::string& what, std::string sqlstate, bool connection_lost)
    : Error(what, transient(sqlstate, connection_lost)),
      sqlstate_(std::move(sqlstate)),
      connection_lost_(connection_lost) {}

void ConnectionDeleter::operator()(pg_conn* c) const noexcept { PQfinish(c); }
void ResultDeleter::operator()(pg_result* r) const noexcept { PQclear(r); }

// ---- Params ------------------------------------------------------------------------------------

Params& Params::text(std::string_view v) {
  types_.push_back(kText);
  values_.emplace_back(v);
  nulls_.push_back(false);
  return *this;
}

Params& Params::bytes(std::string_view v) {
  types_.push_back(kBytea);
  values_.emplace_back(v);
  nulls_.push_back(false);
  return *this;
}

Params& Params::int8(std::int64_t v) {
  std::string be(8, '\0');
  auto u = static_cast<std::uint64_t>(v);
  for (int i = 7; i >= 0; --i) {
    be[static_cast<std::size_t>(i)] = static_cast<char>(u & 0xFF);
    u >>= 8;
  }
  types_.push_back(kInt8);
  values_.push_back(std::move(be));
  nulls_.push_back(false);
  return *this;
}

Params& Params::null_int8() {
  types_.push_back(kInt8);
  values_.emplace_back();
  nulls_.push_back(true);
  return *this;
}

// ---- Result ------------------------------------------------------------------------------------

Result::Result(ResultPtr r) : result_(std::move(r)), rows_(PQntuples(result_.get())) {}

bool Result::is_null(int row, int column) const {
  return PQgetisnull(result_.get(), row, column) != 0;
}

std::string Result::bytes(int row, int column) const {
  if (is_null(row, column)) return {};
  return std::string(PQgetvalue(result_.get(), row, column),
                     static_cast<std::size_t>(PQgetlength(result_.get(), row, column)));
}

std::int64_t Result::integer(int row, int column) const {
  if (is_null(row, column)) return 0;
  return decode_int(PQgetvalue(result_.get(), row, column),
                    PQgetlength(result_.get(), row, column));
}

std::int64_t Result::affected() const {
  const char* n = PQcmdTuples(result_.get());
  return n == nullptr || *n == '\0' ? 0 : std::stoll(n);
}

// ---- Connection --------------------------------------------------------------------------------

Connection::Connection(const ConnectOptions& options) : where_(describe(options.url)) {
  auto timeout = std::to_string(options.connect_timeout.count());
  auto statement = "-c statement_timeout=" +
                   std::to_string(std::chrono::milliseconds(options.statement_timeout).count()) +
                   " -c lock_timeout=" +
                   std::to_string(std::chrono::milliseconds(options.statement_timeout).count());
  auto user_timeout =
      std::to_string(std::chrono::milliseconds(options.statement_timeout).count());
  // metro's defaults first: what the URL says wins (libpq takes the last value of a key).
  const char* keys[] = {"connect_timeout", "application_name", "keepalives",
                        "keepalives_idle",  "keepalives_interval", "keepalives_count",
                        "tcp_user_timeout", "options",             "dbname",
                        nullptr};
  const char* values[] = {timeout.c_str(),
                          options.application_name.c_str(),
                          "1",
                          "10",
                          "5",
                          "3",
                          user_timeout.c_str(),
                          statement.c_str(),
                          options.url.c_str(),
                          nullptr};
  conn_.reset(PQconnectdbParams(keys, values, 1));
  if (!conn_) throw PgError("cannot connect to PostgreSQL at " + where_ + ": out of memory", "", true);
  if (PQstatus(conn_.get()) != CONNECTION_OK) {
    throw PgError("cannot connect to PostgreSQL at " + where_ + ": " +
                      one_line(PQerrorMessage(conn_.get())),
                  "", true);
  }
  // Notices (e.g. "relation already exists, skipping") are not metro's to print.
  PQsetNoticeProcessor(conn_.get(), [](void*, const char*) {}, nullptr);
}

void Connection::fail(const std::string& context, pg_result* result) {
  std::string sqlstate;
  std::string message;
  if (result != nullptr) {
    if (const char* s = PQresultErrorField(result, PG_DIAG_SQLSTATE)) sqlstate = s;
    message = PQresultErrorMessage(result);
  }
  if (message.empty()) message = PQerrorMessage(conn_.get());
  bool lost = PQstatus(conn_.get()) != CONNECTION_OK;
  throw PgError(context + one_line(message), sqlstate, lost);
}

void Connection::exec(std::string_view sql) {
  ResultPtr r(PQexec(conn_.get(), std::string(sql).c_str()));
  auto status = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail("", r.get());
}

Result Connection::query(const std::string& sql, const Params& params) {
  auto it = prepared_.find(sql);
  if (it == prepared_.end()) {
    auto name = "m" + std::to_string(prepared_.size() + 1);
    ResultPtr r(PQprepare(conn_.get(), name.c_str(), sql.c_str(),
                          static_cast<int>(params.types_.size()), params.types_.data()));
    if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK) fail("", r.get());
    it = prepared_.emplace(sql, name).first;
  }
  auto n = params.values_.size();
  std::vector<const char*> values(n);
  std::vector<int> lengths(n);
  std::vector<int> formats(n, 1);
  for (std::size_t i = 0; i < n; ++i) {
    values[i] = params.nulls_[i] ? nullptr : params.values_[i].data();
    lengths[i] = static_cast<int>(params.values_[i].size());
  }
  ResultPtr r(PQexecPrepared(conn_.get(), it->second.c_str(), static_cast<int>(n), values.data(),
                             lengths.data(), formats.data(), 1));
  auto status = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail("", r.get());
  return Result(std::move(r));
}

bool Connection::ok() const { return PQstatus(conn_.get()) == CONNECTION_OK; }

bool Connection::in_transaction() const {
  return PQtransactionStatus(conn_.get()) != PQTRANS_IDLE;
}

// ---- Pool --------------------------------------------------------------------------------------

Pool::Pool(ConnectOptions options, std::size_t size)
    : options_(std::move(options)), size_(std::max<std::size_t>(1, size)) {}

Pool::~Pool() {
  MutexLock lock(mutex_);
  idle_.clear();
}

Pool::Lease::~Lease() {
  if (pool_ != nullptr && conn_) pool_->give_back(std::move(conn_));
}

Pool::Lease Pool::acquire(std::chrono::milliseconds wait) {
  auto deadline = std::chrono::steady_clock::now() + wait;
  MutexLock lock(mutex_);
  while (true) {
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      ++out_;
      return Lease(this, std::move(c));
    }
    if (out_ + idle_.size() < size_) {
      auto now = std::chrono::steady_clock::now();
      if (last_error_ && now < next_connect_) {
        throw PgError(last_error_->first, last_error_->second, true);
      }
      ++out_;
      lock.unlock();
      try {
        auto c = std::make_unique<Connection>(options_);
        lock.lock();
        backoff_ = std::chrono::milliseconds(0);
        last_error_.reset();
        return Lease(this, std::move(c));
      } catch (const PgError& e) {
        lock.lock();
        --out_;
        // Back off 100 ms, doubling to 5 s, before the next attempt; answer with this meanwhile.
        backoff_ = std::min<std::chrono::milliseconds>(
            std::chrono::seconds(5),
            std::max<std::chrono::milliseconds>(std::chrono::milliseconds(100), backoff_ * 2));
        next_connect_ = std::chrono::steady_clock::now() + backoff_;
        last_error_.emplace(e.what(), e.sqlstate());
        freed_.notify_all();
        throw;
      }
    }
    if (freed_.wait_until(lock, deadline) == std::cv_status::timeout) {
      throw PgError("no PostgreSQL connection to " + describe(options_.url) + " was free within " +
                        std::to_string(wait.count()) + " ms",
                    "", false);
    }
  }
}

void Pool::give_back(std::unique_ptr<Connection> c) {
  {
    MutexLock lock(mutex_);
    --out_;
    // A connection that broke, or was left inside a transaction, is not handed out again.
    if (c->ok() && !c->in_transaction()) idle_.push_back(std::move(c));
  }
  freed_.notify_one();
}

std::string describe(std::string_view url) {
  auto scheme = url.find("://");
  auto rest = scheme == std::string_view::npos ? url : url.substr(scheme + 3);
  auto query = rest.find('?');
  if (query != std::string_view::npos) rest = rest.substr(0, query);
  auto slash = rest.find('/');
  auto authority = rest.substr(0, slash);
  auto at = authority.rfind('@');
  if (at != std::string_view::npos) authority = authority.substr(at + 1);
  std::string out(authority.empty() ? std::string_view("localhost") : authority);
  if (slash != std::string_view::npos) out += rest.substr(slash);
  return out;
}

// ---- Transaction -------------------------------------------------------------------------------

Transaction::Transaction(Connection& c) : c_(c) { c_.exec("BEGIN"); }

Transaction::~Transaction() {
  if (!open_ || !c_.ok() || !c_.in_transaction()) return;
  try {
    c_.exec("ROLLBACK");
  } catch (const PgError&) {
    // The connection is dropped when given back.
  }
}

void Transaction::commit() {
  open_ = false;
  c_.exec("COMMIT");
}

}  // namespace metro::postgres
