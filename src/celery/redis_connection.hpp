#pragma once

// One connection to Redis, plain TCP or TLS. hiredis formats the commands
// (redisFormatCommandArgv) and parses the replies (redisReader); the socket and the TLS session
// are metro's own, because Debian's hiredis 0.14 has no TLS. Every call carries a deadline, every
// reply is bounded in size (hiredis bounds its nesting), and the C handles have owners.
// Thread-safety: none; one thread uses a connection at a time.

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <metro/error.hpp>

#include "redis_url.hpp"

namespace metro::celery {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

/// A Redis reply, copied out of hiredis's.
struct Reply {
  enum class Type { kNil, kString, kStatus, kError, kInteger, kArray };
  Type type = Type::kNil;
  std::string text;  ///< kString, kStatus, kError.
  long long integer = 0;
  std::vector<Reply> elements;  ///< kArray.

  bool is_error() const { return type == Type::kError; }
};

/// Redis could not be reached or broke off (transient), or refused what metro sent (not).
class RedisError : public Error {
 public:
  RedisError(const std::string& what, bool transient) : Error(what, transient) {}
};

/// Redis refused the credentials of the URL, or needs some and the URL has none. An operator has
/// to act: not transient.
class RedisAuthError : public RedisError {
 public:
  explicit RedisAuthError(const std::string& what) : RedisError(what, false) {}
};

/// A reply larger than the connection's bound; the connection is then closed (not transient:
/// reading the same value again gives the same answer).
class RedisReplyTooLarge : public RedisError {
 public:
  explicit RedisReplyTooLarge(const std::string& what) : RedisError(what, false) {}
};

/// The largest reply metro reads (a task result is one bulk string).
inline constexpr std::size_t kMaxReplyBytes = 64u * 1024 * 1024;

class RedisConnection {
 public:
  /// Connects (name lookup, TCP, TLS for rediss://), then authenticates and selects the URL's
  /// database, all before `deadline`. Throws RedisAuthError for refused or missing credentials,
  /// RedisError otherwise (transient when the server could not be reached in time).
  static std::unique_ptr<RedisConnection> connect(const RedisUrl& url, Deadline deadline,
                                                  std::size_t max_reply_bytes = kMaxReplyBytes);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  /// Sends one command and reads its reply (an error reply is returned, not thrown).
  Reply command(const std::vector<std::string>& args, Deadline deadline);
  /// Sends the commands in one write and reads their replies, in order.
  std::vector<Reply> pipeline(const std::vector<std::vector<std::string>>& commands,
                              Deadline deadline);
  /// Sends a command without reading (pub/sub: replies come as they come).
  void write(const std::vector<std::string>& args, Deadline deadline);
  /// The next reply: from what is already buffered, else from the socket until `deadline`.
  /// Nullopt when none is complete by then; a deadline already past reads what has arrived.
  std::optional<Reply> read(Deadline deadline);

  /// The socket, for poll(); before polling, drain with `read(Clock::now())`.
  int fd() const;
  /// False once an I/O error or a protocol error broke it; it is then of no further use.
  bool healthy() const { return healthy_; }
  const RedisUrl& url() const { return url_; }

 private:
  struct Impl;
  RedisConnection(const RedisUrl& url, std::unique_ptr<Impl> impl);

  RedisUrl url_;
  std::unique_ptr<Impl> impl_;
  bool healthy_ = true;
};

}  // namespace metro::celery
