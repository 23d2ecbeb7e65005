// RESP over a socket of our own (plain or TLS), with hiredis's formatter and reader.

#include "redis_connection.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/thread_annotations.hpp"

namespace metro::celery {
namespace {

struct ReaderDeleter {
  void operator()(redisReader* reader) const { redisReaderFree(reader); }
};
struct ReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
struct SslDeleter {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
struct AddrInfoDeleter {
  void operator()(addrinfo* info) const { freeaddrinfo(info); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

/// A file descriptor with an owner.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

int remaining_ms(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return 0;
  return left.count() > 60'000 ? 60'000 : static_cast<int>(left.count());
}

/// Waits for `events` on `fd` until `deadline`; false when the deadline passed first.
bool wait_for(int fd, short events, Deadline deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int timeout = remaining_ms(deadline);
    int n = ::poll(&p, 1, timeout);
    if (n > 0) return true;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return true;  // Let the next read or write report the error.
    if (Clock::now() >= deadline) return false;
  }
}

std::string ssl_error_text() {
  std::string out;
  while (auto code = ERR_get_error()) {
    std::array<char, 256> buffer{};
    ERR_error_string_n(code, buffer.data(), buffer.size());
    if (!out.empty()) out += "; ";
    out += buffer.data();
  }
  return out.empty() ? "unknown TLS error" : out;
}

/// Resolves `host`: at once for an address; for a name, on a helper thread so that the lookup
/// is bounded by `deadline` too (getaddrinfo itself cannot be given one).
AddrInfoPtr resolve(const std::string& host, std::uint16_t port, Deadline deadline,
                    const std::string& where) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  auto service = std::to_string(port);
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &found) == 0) return AddrInfoPtr(found);

  struct Lookup {
    Mutex mutex;
    CondVar done_changed;
    bool done GUARDED_BY(mutex) = false;
    int status GUARDED_BY(mutex) = 0;
    AddrInfoPtr result GUARDED_BY(mutex);
  };
  auto lookup = std::make_shared<Lookup>();
  std::thread([lookup, host, service] {
    addrinfo name_hints{};
    name_hints.ai_socktype = SOCK_STREAM;
    name_hints.ai_flags = AI_NUMERICSERV;
    addrinfo* out = nullptr;
    int status = ::getaddrinfo(host.c_str(), service.c_str(), &name_hints, &out);
    MutexLock lock(lookup->mutex);
    lookup->done = true;
    lookup->status = status;
    lookup->result.reset(out);
    lookup->done_changed.notify_all();
  }).detach();
  MutexLock lock(lookup->mutex);
  while (!lookup->done) {
    if (lookup->done_changed.wait_until(lock, deadline) == std::cv_status::timeout) break;
  }
  if (!lookup->done) {
    throw RedisError("Redis at " + where + ": looking up '" + host + "' took too long", true);
  }
  if (lookup->status != 0) {
    throw RedisError(
        "Redis at " + where + ": cannot resolve '" + host + "': " + ::gai_strerror(lookup->status),
        lookup->status == EAI_AGAIN);
  }
  return std::move(lookup->result);
}

Reply copy_reply(const redisReply& in) {
  Reply out;
  switch (in.type) {
    case REDIS_REPLY_STRING:
      out.type = Reply::Type::kString;
      out.text.assign(in.str, in.len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = Reply::Type::kStatus;
      out.text.assign(in.str, in.len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = Reply::Type::kError;
      out.text.assign(in.str, in.len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = Reply::Type::kInteger;
      out.integer = in.integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = Reply::Type::kArray;
      out.elements.reserve(in.elements);
      // hiredis's reader nests at most 9 levels deep, so this recursion is bounded.
      for (std::size_t i = 0; i < in.elements; ++i)
        out.elements.push_back(copy_reply(*in.element[i]));
      break;
    default:
      out.type = Reply::Type::kNil;
      break;
  }
  return out;
}

std::string format_command(const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lengths;
  argv.reserve(args.size());
  lengths.reserve(args.size());
  for (const auto& a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  char* raw = nullptr;
  int length =
      redisFormatCommandArgv(&raw, static_cast<int>(args.size()), argv.data(), lengths.data());
  std::unique_ptr<char, void (*)(char*)> owner(raw, redisFreeCommand);
  if (length < 0 || raw == nullptr) throw RedisError("cannot format a Redis command", false);
  return std::string(raw, static_cast<std::size_t>(length));
}

}  // namespace

struct RedisConnection::Impl {
  std::string where;  // host:port/db, for messages
  Socket socket;
  std::unique_ptr<SSL_CTX, SslCtxDeleter> ssl_ctx;
  std::unique_ptr<SSL, SslDeleter> ssl;
  std::unique_ptr<redisReader, ReaderDeleter> reader{redisReaderCreate()};
  std::size_t max_reply_bytes = kMaxReplyBytes;
  std::size_t unparsed = 0;  // bytes fed since the last complete reply

  [[noreturn]] void fail(const std::string& why, bool transient) const {
    throw RedisError("Redis at " + where + ": " + why, transient);
  }

  void connect_tcp(const RedisUrl& url, Deadline deadline) {
    auto addresses = resolve(url.host, url.port, deadline, where);
    std::string last_error = "no address";
    for (auto* a = addresses.get(); a != nullptr; a = a->ai_next) {
      Socket s(
          ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
      if (s.get() < 0) {
        last_error = std::strerror(errno);
        continue;
      }
      int rc = ::connect(s.get(), a->ai_addr, a->ai_addrlen);
      if (rc != 0 && errno != EINPROGRESS) {
        last_error = std::strerror(errno);
        continue;
      }
      if (rc != 0) {
        if (!wait_for(s.get(), POLLOUT, deadline)) fail("connecting took too long", true);
        int error = 0;
        socklen_t length = sizeof(error);
        ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &error, &length);
        if (error != 0) {
          last_error = std::strerror(error);
          continue;
        }
      }
      int one = 1;
      ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      ::setsockopt(s.get(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
      socket = std::move(s);
      return;
    }
    fail("cannot connect: " + last_error, true);
  }

  void connect_tls(const RedisUrl& url, Deadline deadline) {
    ssl_ctx.reset(SSL_CTX_new(TLS_client_method()));
    if (!ssl_ctx) fail("cannot set up TLS: " + ssl_error_text(), false);
    SSL_CTX_set_min_proto_version(ssl_ctx.get(), TLS1_2_VERSION);
    if (url.verify != TlsVerify::kNone) {
      SSL_CTX_set_verify(ssl_ctx.get(), SSL_VERIFY_PEER, nullptr);
      int loaded = url.ca_file.empty()
                       ? SSL_CTX_set_default_verify_paths(ssl_ctx.get())
                       : SSL_CTX_load_verify_locations(ssl_ctx.get(), url.ca_file.c_str(), nullptr);
      if (loaded != 1) fail("cannot load the CA certificates: " + ssl_error_text(), false);
    }
    if (!url.cert_file.empty()) {
      if (SSL_CTX_use_certificate_chain_file(ssl_ctx.get(), url.cert_file.c_str()) != 1 ||
          SSL_CTX_use_PrivateKey_file(ssl_ctx.get(), url.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
        fail("cannot load the client certificate: " + ssl_error_text(), false);
      }
    }
    ssl.reset(SSL_new(ssl_ctx.get()));
    if (!ssl) fail("cannot set up TLS: " + ssl_error_text(), false);
    SSL_set_fd(ssl.get(), socket.get());
    in6_addr address6{};
    in_addr address4{};
    bool is_address = ::inet_pton(AF_INET, url.host.c_str(), &address4) == 1 ||
                      ::inet_pton(AF_INET6, url.host.c_str(), &address6) == 1;
    if (!is_address) {
      // SSL_set_tlsext_host_name is a macro with a C cast; this is what it expands to.
      SSL_ctrl(ssl.get(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               const_cast<char*>(url.host.c_str()));
    }
    if (url.verify != TlsVerify::kNone && url.check_hostname) {
      auto* param = SSL_get0_param(ssl.get());
      int ok = is_address ? X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str())
                          : X509_VERIFY_PARAM_set1_host(param, url.host.c_str(), 0);
      if (ok != 1) fail("cannot set the host name to verify", false);
    }
    while (true) {
      ERR_clear_error();
      int rc = SSL_connect(ssl.get());
      if (rc == 1) return;
      int error = SSL_get_error(ssl.get(), rc);
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        if (!wait_for(socket.get(), error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
          fail("the TLS handshake took too long", true);
        }
        continue;
      }
      long verify = SSL_get_verify_result(ssl.get());
      if (verify != X509_V_OK) {
        fail(std::string("the server's certificate was not accepted: ") +
                 X509_verify_cert_error_string(verify),
             false);
      }
      fail("the TLS handshake failed: " + ssl_error_text(), true);
    }
  }

  void write_all(std::string_view data, Deadline deadline) {
    while (!data.empty()) {
      ssize_t n = 0;
      short wait_events = POLLOUT;
      if (ssl) {
        ERR_clear_error();
        int rc = SSL_write(ssl.get(), data.data(),
                           static_cast<int>(std::min<std::size_t>(data.size(), 1 << 30)));
        if (rc > 0) {
          n = rc;
        } else {
          int error = SSL_get_error(ssl.get(), rc);
          if (error == SSL_ERROR_WANT_READ) {
            wait_events = POLLIN;
          } else if (error != SSL_ERROR_WANT_WRITE) {
            fail("TLS write failed: " + ssl_error_text(), true);
          }
        }
      } else {
        n = ::send(socket.get(), data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          fail(std::string("write failed: ") + std::strerror(errno), true);
        }
      }
      if (n > 0) {
        data.remove_prefix(static_cast<std::size_t>(n));
        continue;
      }
      if (!wait_for(socket.get(), wait_events, deadline)) fail("a write took too long", true);
    }
  }

  /// Reads what the socket has; 0 when it would block. Throws on EOF or errors.
  std::size_t read_some(char* buffer, std::size_t size, short& wait_events) {
    wait_events = POLLIN;
    if (ssl) {
      ERR_clear_error();
      int rc = SSL_read(ssl.get(), buffer, static_cast<int>(size));
      if (rc > 0) return static_cast<std::size_t>(rc);
      int error = SSL_get_error(ssl.get(), rc);
      if (error == SSL_ERROR_WANT_READ) return 0;
      if (error == SSL_ERROR_WANT_WRITE) {
        wait_events = POLLOUT;
        return 0;
      }
      if (error == SSL_ERROR_ZERO_RETURN) fail("the server closed the connection", true);
      fail("TLS read failed: " + ssl_error_text(), true);
    }
    while (true) {
      ssize_t n = ::recv(socket.get(), buffer, size, 0);
      if (n > 0) return static_cast<std::size_t>(n);
      if (n == 0) fail("the server closed the connection", true);
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      fail(std::string("read failed: ") + std::strerror(errno), true);
    }
  }

  std::optional<Reply> next_buffered() {
    void* raw = nullptr;
    if (redisReaderGetReply(reader.get(), &raw) != REDIS_OK) {
      fail(std::string("the server does not answer as Redis does (protocol error: ") +
               reader->errstr + ")",
           false);
    }
    if (raw == nullptr) return std::nullopt;
    std::unique_ptr<redisReply, ReplyDeleter> reply(static_cast<redisReply*>(raw));
    unparsed = 0;
    return copy_reply(*reply);
  }

  std::optional<Reply> read(Deadline deadline) {
    std::array<char, 16384> buffer{};
    while (true) {
      if (auto reply = next_buffered()) return reply;
      short wait_events = POLLIN;
      std::size_t n = read_some(buffer.data(), buffer.size(), wait_events);
      if (n > 0) {
        unparsed += n;
        if (unparsed > max_reply_bytes) {
          throw RedisReplyTooLarge("Redis at " + where + ": a reply is larger than " +
                                   std::to_string(max_reply_bytes) + " bytes");
        }
        if (redisReaderFeed(reader.get(), buffer.data(), n) != REDIS_OK) {
          fail(std::string("the server does not answer as Redis does (protocol error: ") +
                   reader->errstr + ")",
               false);
        }
        continue;
      }
      if (Clock::now() >= deadline) return std::nullopt;
      if (!wait_for(socket.get(), wait_events, deadline)) return std::nullopt;
    }
  }
};

RedisConnection::RedisConnection(const RedisUrl& url, std::unique_ptr<Impl> impl)
    : url_(url), impl_(std::move(impl)) {}

RedisConnection::~RedisConnection() = default;

std::unique_ptr<RedisConnection> RedisConnection::connect(const RedisUrl& url, Deadline deadline,
                                                          std::size_t max_reply_bytes) {
  auto impl = std::make_unique<Impl>();
  impl->where = url.endpoint();
  impl->max_reply_bytes = max_reply_bytes;
  if (!impl->reader) throw RedisError("cannot allocate a Redis reply reader", false);
  impl->connect_tcp(url, deadline);
  if (url.tls) impl->connect_tls(url, deadline);
  std::unique_ptr<RedisConnection> connection(new RedisConnection(url, std::move(impl)));

  // AUTH and SELECT in one round trip; a PING when neither is needed, so that a server that wants
  // a password says so now rather than on the first real command.
  std::vector<std::vector<std::string>> setup;
  if (url.password) {
    if (url.username.empty()) {
      setup.push_back({"AUTH", *url.password});
    } else {
      setup.push_back({"AUTH", url.username, *url.password});
    }
  }
  if (url.db != 0) setup.push_back({"SELECT", std::to_string(url.db)});
  if (setup.empty()) setup.push_back({"PING"});
  auto replies = connection->pipeline(setup, deadline);
  const auto& where = connection->impl_->where;
  for (std::size_t i = 0; i < replies.size(); ++i) {
    if (!replies[i].is_error()) continue;
    const auto& text = replies[i].text;
    if (url.password && i == 0) {
      throw RedisAuthError("Redis at " + where + " refused the URL's credentials: " + text);
    }
    if (text.rfind("NOAUTH", 0) == 0) {
      throw RedisAuthError(
          "Redis at " + where +
          " wants a password and the URL has none (redis://:password@host…): " + text);
    }
    throw RedisError("Redis at " + where + " refused " + setup[i][0] + ": " + text, false);
  }
  return connection;
}

Reply RedisConnection::command(const std::vector<std::string>& args, Deadline deadline) {
  return pipeline({args}, deadline).front();
}

std::vector<Reply> RedisConnection::pipeline(const std::vector<std::vector<std::string>>& commands,
                                             Deadline deadline) {
  std::string out;
  for (const auto& c : commands) out += format_command(c);
  try {
    impl_->write_all(out, deadline);
    std::vector<Reply> replies;
    replies.reserve(commands.size());
    while (replies.size() < commands.size()) {
      auto reply = impl_->read(deadline);
      if (!reply) impl_->fail("no reply in time", true);
      replies.push_back(std::move(*reply));
    }
    return replies;
  } catch (...) {
    healthy_ = false;
    throw;
  }
}

void RedisConnection::write(const std::vector<std::string>& args, Deadline deadline) {
  try {
    impl_->write_all(format_command(args), deadline);
  } catch (...) {
    healthy_ = false;
    throw;
  }
}

std::optional<Reply> RedisConnection::read(Deadline deadline) {
  try {
    return impl_->read(deadline);
  } catch (...) {
    healthy_ = false;
    throw;
  }
}

int RedisConnection::fd() const { return impl_->socket.get(); }

}  // namespace metro::celery
