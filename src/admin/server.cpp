// The admin HTTP server's transport: connections, limits and deadlines over Boost.Beast, every
// connection served by one I/O thread without blocking it. What a request means is api.cpp's.
//
// Why Beast and not cpp-httplib 0.11.4 (Debian 12's): httplib gives each connection a blocking
// thread from a small pool, and its read timeout restarts with every byte, so ten clients
// trickling a header (or 200 idle ones waiting out keep-alive) hold every thread and /healthz
// waits behind them; it has no limit on a body sent without Content-Length or chunked, reads a
// too-large body to its end to skip it, and answers a POST without Content-Length only after
// its read timeout, with a bare 400. Beast parses with header and body limits checked before
// the body is read, and Asio lets one thread wait on any number of sockets, each with its own
// deadline.

#include <array>
#include <future>
#include <map>
#include <optional>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include <metro/admin/server.hpp>

#include "api.hpp"
#include "target.hpp"

namespace metro::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

/// `/readyz` requests running or waiting for the readiness thread; more are answered 503.
constexpr std::size_t kMaxPendingProbes = 8;
/// After an answer that closes the connection, how long and how much metro still reads (and
/// drops), so that the client sees the answer rather than a reset.
constexpr milliseconds kLingerTime{2000};
constexpr std::size_t kLingerBytes = 1024 * 1024;
/// How long `stop` waits for the I/O thread to finish closing connections.
constexpr milliseconds kStopTimeout{5000};

std::string seconds_text(milliseconds d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::seconds>(d).count()) + " s";
}

}  // namespace

class Connection;

struct Server::Impl {
  Impl(dispatch::Service& service, config::AdminOptions o, Limits l)
      : options(std::move(o)),
        limits(l),
        api(service, options, limits),
        workers(limits.workers == 0 ? 1 : limits.workers) {}

  config::AdminOptions options;
  Limits limits;
  Api api;

  // Declared first among the I/O objects: destroyed last, after every socket and timer.
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  asio::thread_pool workers;
  asio::thread_pool probes{1};
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_retry{io};
  std::thread thread;
  std::optional<std::future<void>> thread_done;
  std::uint16_t port = 0;

  // The rest is the I/O thread's alone. `connections` owns each open connection until it closes.
  std::map<Connection*, std::shared_ptr<Connection>> connections;
  std::map<std::string, std::size_t> per_client;
  std::size_t pending_workers = 0;
  std::size_t pending_probes = 0;
  bool stopping = false;
  std::uint64_t evicted = 0;
  Clock::time_point evicted_logged{};

  void accept();
  void admit(tcp::socket socket);
  bool evict(const std::string* client);
  void forget(Connection* connection, const std::string& client);
  void close_all();
};

/// One client connection: reads a request (head, then body) within its deadlines, has it
/// answered (at once, or on a worker thread with a deadline), writes the answer, and reads the
/// next one or closes. Lives on the I/O thread; worker threads reach it only through `post`.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  enum class Phase { kHead, kBody, kBusy, kWrite, kLinger, kClosed };

  Connection(Server::Impl& server, tcp::socket socket, std::string client)
      : server_(server),
        limits_(server.limits),
        socket_(std::move(socket)),
        timer_(server.io),
        client_(std::move(client)),
        buffer_(server.limits.max_header_bytes + 64 * 1024) {}

  void start() { read_head(); }

  const std::string& client() const { return client_; }
  Phase phase() const { return phase_; }
  Clock::time_point since() const { return since_; }

  /// Closes the socket and cancels what waits on it. Idempotent.
  void close() {
    if (phase_ == Phase::kClosed) return;
    auto keep = shared_from_this();  // Forgetting it below may drop the registry's reference.
    phase_ = Phase::kClosed;
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    timer_.cancel();
    server_.forget(this, client_);
  }

 private:
  // ---- deadlines -----------------------------------------------------------------------------

  /// Starts the deadline of the present phase. A later `arm` supersedes it.
  void arm(milliseconds after) {
    timed_out_ = false;
    auto generation = ++deadline_generation_;
    timer_.expires_after(after);
    timer_.async_wait([weak = weak_from_this(), generation](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || generation != self->deadline_generation_) return;
      self->on_deadline();
    });
  }

  void on_deadline() {
    switch (phase_) {
      case Phase::kHead:
      case Phase::kBody: {
        timed_out_ = true;
        beast::error_code ignored;
        socket_.cancel(ignored);  // The read ends with operation_aborted; see on_read_error.
        break;
      }
      case Phase::kBusy:
        respond(server_.api.timed_out(*request_), keep_alive_);
        break;
      case Phase::kWrite:
      case Phase::kLinger:
        close();
        break;
      case Phase::kClosed:
        break;
    }
  }

  // ---- reading -------------------------------------------------------------------------------

  void read_head() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(limits_.max_header_bytes));
    parser_->body_limit(limits_.max_body_bytes);
    request_.reset();
    phase_ = Phase::kHead;
    since_ = Clock::now();
    arm(limits_.header_timeout);
    http::async_read_header(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_head(ec); });
  }

  void on_head(beast::error_code ec) {
    if (phase_ == Phase::kClosed) return;
    if (ec) return on_read_error(ec);
    const auto& head = parser_->get();
    auto request = std::make_shared<Request>();
    request->method = std::string(head.method_string());
    request->target = std::string(head.target());
    for (const auto& field : head) {
      request->headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    head_only_ = head.method() == http::verb::head;
    version_ = head.version();
    keep_alive_ = head.keep_alive();
    request_ = request;
    const bool body_pending = !parser_->is_done();
    if (request->target.size() > limits_.max_target_bytes) {
      return respond(error_response(414, "the request target is longer than " +
                                             std::to_string(limits_.max_target_bytes) + " bytes"),
                     false);
    }
    if (auto early = server_.api.check_head(*request)) {
      // The body, if one was announced, is not read: the connection closes after the answer.
      return respond(std::move(*early), keep_alive_ && !body_pending);
    }
    if (!body_pending) return dispatch();
    phase_ = Phase::kBody;
    since_ = Clock::now();
    arm(limits_.body_timeout);
    if (iequals(request->header("Expect"), "100-continue")) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                        [self = shared_from_this()](beast::error_code e, std::size_t) {
                          if (e) return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    http::async_read(socket_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) {
                       if (self->phase_ == Phase::kClosed) return;
                       if (ec) return self->on_read_error(ec);
                       self->request_->body = std::move(self->parser_->get().body());
                       self->dispatch();
                     });
  }

  void on_read_error(beast::error_code ec) {
    const bool nothing_yet = phase_ == Phase::kHead && !parser_->got_some() && buffer_.size() == 0;
    if (ec == asio::error::operation_aborted && timed_out_) {
      if (nothing_yet) return close();  // An idle connection: close without a word.
      return respond(
          error_response(408, "the request did not arrive within " +
                                  seconds_text(phase_ == Phase::kHead ? limits_.header_timeout
                                                                      : limits_.body_timeout)),
          false);
    }
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      auto received =
          std::string_view(static_cast<const char*>(buffer_.data().data()), buffer_.size());
      if (received.find('\n') == std::string_view::npos) {
        return respond(error_response(414, "the request line is longer than " +
                                               std::to_string(limits_.max_header_bytes) + " bytes"),
                       false);
      }
      return respond(error_response(431, "the request line and headers are longer than " +
                                             std::to_string(limits_.max_header_bytes) + " bytes"),
                     false);
    }
    if (ec == http::error::body_limit) {
      return respond(error_response(413, "the request body is larger than " +
                                             std::to_string(limits_.max_body_bytes) + " bytes"),
                     false);
    }
    if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
        ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted || ec == asio::error::broken_pipe) {
      return close();
    }
    // What is left is a message that is not HTTP/1.x: bad request line, header or body framing.
    respond(error_response(400, "malformed HTTP request: " + ec.message()), false);
  }

  // ---- answering -----------------------------------------------------------------------------

  void dispatch() {
    auto& api = server_.api;
    auto lane = api.lane(*request_);
    if (lane == Lane::kInline) return respond(api.handle(*request_), keep_alive_);
    const bool probe = lane == Lane::kProbe;
    auto& pending = probe ? server_.pending_probes : server_.pending_workers;
    if (pending >= (probe ? kMaxPendingProbes : limits_.max_pending)) {
      auto busy = error_response(503, "the admin API is busy; try again shortly");
      busy.headers.emplace_back("Retry-After", "1");
      return respond(std::move(busy), keep_alive_);
    }
    ++pending;
    phase_ = Phase::kBusy;
    arm(probe ? limits_.probe_deadline : limits_.request_deadline);
    auto generation = ++request_generation_;
    auto& pool = probe ? server_.probes : server_.workers;
    asio::post(
        pool, [weak = weak_from_this(), &server = server_, request = request_, generation, probe] {
          Response response;
          try {
            response = server.api.handle(*request);
          } catch (const std::exception& e) {
            response = error_response(500, e.what());
          }
          asio::post(server.io, [weak, &server, response = std::move(response), generation,
                                 probe]() mutable {
            --(probe ? server.pending_probes : server.pending_workers);
            auto self = weak.lock();
            if (!self || self->phase_ != Phase::kBusy || generation != self->request_generation_) {
              return;  // Answered already (deadline), or the connection is gone.
            }
            self->respond(std::move(response), self->keep_alive_);
          });
        });
  }

  void respond(Response r, bool keep_alive) {
    if (phase_ == Phase::kClosed) return;
    auto res = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(r.status), version_ == 10 ? 10 : 11);
    res->set(http::field::content_type, r.content_type);
    for (const auto& [name, value] : r.headers) res->set(name, value);
    res->keep_alive(keep_alive);
    if (head_only_) {
      res->content_length(r.body.size());
    } else {
      res->body() = std::move(r.body);
      res->prepare_payload();
    }
    phase_ = Phase::kWrite;
    arm(limits_.write_timeout);
    // Head and body leave in one write (and TCP_NODELAY is set), so that a kept-alive
    // connection does not wait for the client's delayed acknowledgement between them.
    http::async_write(
        socket_, *res,
        [self = shared_from_this(), res, keep_alive](beast::error_code ec, std::size_t) {
          if (self->phase_ == Phase::kClosed) return;
          if (ec) return self->close();
          if (!keep_alive) return self->linger();
          self->read_head();
        });
  }

  /// Closes after an answer: stops sending, then reads and drops what the client still sends
  /// for a while, so that closing with unread data does not reset the answer away.
  void linger() {
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    phase_ = Phase::kLinger;
    since_ = Clock::time_point{};  // First to go when room is needed.
    lingered_ = 0;
    scratch_ = std::make_unique<std::array<char, 4096>>();
    arm(kLingerTime);
    drain();
  }

  void drain() {
    socket_.async_read_some(asio::buffer(*scratch_),
                            [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                              if (self->phase_ != Phase::kLinger) return;
                              self->lingered_ += n;
                              if (ec || self->lingered_ > kLingerBytes) return self->close();
                              self->drain();
                            });
  }

  Server::Impl& server_;
  const Limits& limits_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  std::string client_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<Request> request_;
  std::unique_ptr<std::array<char, 4096>> scratch_;  // Only while lingering.
  Phase phase_ = Phase::kHead;
  Clock::time_point since_ = Clock::now();
  std::uint64_t deadline_generation_ = 0;
  std::uint64_t request_generation_ = 0;
  std::size_t lingered_ = 0;
  unsigned version_ = 11;
  bool head_only_ = false;
  bool keep_alive_ = false;
  bool timed_out_ = false;
};

// ---- the server --------------------------------------------------------------------------------

void Server::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (stopping || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of file descriptors, most likely: try again shortly instead of spinning.
      spdlog::warn("admin API: cannot accept a connection: {}", ec.message());
      accept_retry.expires_after(milliseconds(100));
      accept_retry.async_wait([this](beast::error_code e) {
        if (!e && !stopping) accept();
      });
      return;
    }
    admit(std::move(socket));
    accept();
  });
}

void Server::Impl::admit(tcp::socket socket) {
  beast::error_code ec;
  auto remote = socket.remote_endpoint(ec);
  if (ec) return;
  socket.set_option(tcp::no_delay(true), ec);
  auto client = remote.address().to_string();
  bool room = per_client[client] < limits.max_connections_per_client || evict(&client);
  room = room && (connections.size() < limits.max_connections || evict(nullptr));
  if (!room) {
    // Every connection is busy with a request: refuse this one with a word, without waiting.
    static constexpr std::string_view kBusy =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Content-Length: 71\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        R"({"error":"the admin API has no room for another connection","status":503})";
    socket.non_blocking(true, ec);
    socket.write_some(asio::buffer(kBusy.data(), kBusy.size()), ec);
    if (per_client[client] == 0) per_client.erase(client);
    return;
  }
  auto connection = std::make_shared<Connection>(*this, std::move(socket), client);
  connections.emplace(connection.get(), connection);
  ++per_client[client];
  connection->start();
}

bool Server::Impl::evict(const std::string* client) {
  Connection* victim = nullptr;
  for (const auto& [raw, c] : connections) {
    if (client != nullptr && c->client() != *client) continue;
    auto phase = c->phase();
    bool waiting = phase == Connection::Phase::kHead || phase == Connection::Phase::kBody ||
                   phase == Connection::Phase::kLinger;
    if (waiting && (victim == nullptr || c->since() < victim->since())) victim = raw;
  }
  if (victim == nullptr) return false;
  auto c = connections[victim];
  c->close();
  ++evicted;
  if (Clock::now() - evicted_logged > std::chrono::seconds(10)) {
    evicted_logged = Clock::now();
    spdlog::warn(
        "admin API: {} waiting connection(s) closed so far to make room (at most {} in all, {} "
        "per client)",
        evicted, limits.max_connections, limits.max_connections_per_client);
  }
  return true;
}

void Server::Impl::forget(Connection* connection, const std::string& client) {
  connections.erase(connection);
  if (auto it = per_client.find(client); it != per_client.end() && --it->second == 0) {
    per_client.erase(it);
  }
}

void Server::Impl::close_all() {
  stopping = true;
  beast::error_code ignored;
  acceptor.close(ignored);
  accept_retry.cancel();
  std::vector<std::shared_ptr<Connection>> open;
  for (const auto& [raw, c] : connections) open.push_back(c);
  for (auto& c : open) c->close();
}

Server::Server(dispatch::Service& service, config::AdminOptions options, Limits limits)
    : impl_(std::make_unique<Impl>(service, std::move(options), limits)) {}

Server::~Server() { stop(); }

void Server::start() {
  const auto& listen = impl_->options.listen;
  auto colon = listen.rfind(':');
  auto host = listen.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  beast::error_code ec;
  tcp::endpoint endpoint;
  try {
    int port = std::stoi(listen.substr(colon + 1));
    if (port < 0 || port > 65535) throw std::out_of_range("port");
    tcp::resolver resolver(impl_->io);
    auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
    if (ec || results.empty()) throw Error(ec ? ec.message() : "no address");
    endpoint = *results.begin();
  } catch (const std::exception& e) {
    throw Error("the admin API cannot listen on " + listen + ": " + e.what());
  }
  auto& acceptor = impl_->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw Error("the admin API cannot listen on " + listen + ": " + ec.message());
  impl_->port = acceptor.local_endpoint().port();
  impl_->accept();
  std::promise<void> done;
  impl_->thread_done = done.get_future();
  impl_->thread = std::thread([impl = impl_.get(), done = std::move(done)]() mutable {
    impl->io.run();
    done.set_value();
  });
}

void Server::stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  auto& impl = *impl_;
  std::promise<void> closed;
  auto closed_future = closed.get_future();
  asio::post(impl.io, [&impl, &closed] {
    impl.close_all();
    closed.set_value();
  });
  if (closed_future.wait_for(kStopTimeout) != std::future_status::ready) {
    spdlog::warn("admin API: connections not closed within {} ms; stopping anyway",
                 kStopTimeout.count());
    impl.io.stop();
  }
  // Requests already running finish (each bounded by Service Bus's own timeouts); queued ones
  // are dropped.
  impl.workers.stop();
  impl.probes.stop();
  impl.workers.join();
  impl.probes.join();
  impl.work.reset();
  if (impl.thread_done->wait_for(kStopTimeout) != std::future_status::ready) impl.io.stop();
  impl.thread.join();
}

std::uint16_t Server::port() const { return impl_->port; }

}  // namespace metro::admin
