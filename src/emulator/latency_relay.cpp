#include "latency_relay.hpp"

#include <array>
#include <deque>
#include <thread>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp uses std::exchange
#include <vector>

#include <boost/asio.hpp>
#include <spdlog/spdlog.h>

#include <metro/error.hpp>

namespace metro::emulator {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;

constexpr std::size_t kChunk = 64 * 1024;
// What the emulator sent and the client has not been handed yet; past it, reading from the
// emulator waits (so a client that does not read cannot grow the relay without bound).
constexpr std::size_t kMaxHeld = 8 * 1024 * 1024;

// One client connection and its connection to the emulator. Every member runs on the relay's
// thread; the handlers in flight keep it alive. Each direction ends on its own: an end of stream
// from one side reaches the other (after what is held) as a half-close, as Proton closes a
// connection (its Close frame, then shutdown of its sending side, then it waits for the peer's).
// An error on either side resets both.
class Link : public std::enable_shared_from_this<Link> {
 public:
  Link(tcp::socket client, const tcp::endpoint& target, std::chrono::milliseconds delay)
      : client_(std::move(client)),
        upstream_(client_.get_executor()),
        timer_(client_.get_executor()),
        target_(target),
        delay_(delay) {}

  void start() {
    upstream_.async_connect(target_, [self = shared_from_this()](const ErrorCode& error) {
      if (error) {
        spdlog::warn("emulator latency relay: cannot reach the emulator: {}", error.message());
        return self->reset();
      }
      ErrorCode ignored;
      self->upstream_.set_option(tcp::no_delay(true), ignored);
      self->client_.set_option(tcp::no_delay(true), ignored);
      self->forward_up();
      self->read_down();
    });
  }

 private:
  struct Chunk {
    Clock::time_point due;
    std::vector<char> bytes;
  };

  // Client to emulator: at once.
  void forward_up() {
    client_.async_read_some(asio::buffer(up_),
                            [self = shared_from_this()](const ErrorCode& error, std::size_t n) {
                              if (error == asio::error::eof) {
                                ErrorCode ignored;
                                self->upstream_.shutdown(tcp::socket::shutdown_send, ignored);
                                self->up_done_ = true;
                                return self->close_if_done();
                              }
                              if (error) return self->reset();
                              asio::async_write(self->upstream_, asio::buffer(self->up_.data(), n),
                                                [self](const ErrorCode& failed, std::size_t) {
                                                  if (failed) return self->reset();
                                                  self->forward_up();
                                                });
                            });
  }

  // Emulator to client: each chunk `delay_` after the emulator wrote it.
  void read_down() {
    if (held_ >= kMaxHeld) {
      paused_ = true;
      return;
    }
    upstream_.async_read_some(asio::buffer(down_), [self = shared_from_this()](
                                                       const ErrorCode& error, std::size_t n) {
      if (error == asio::error::eof) {
        self->upstream_ended_ = true;  // what is held still goes out, then the half-close
        if (!self->writing_) self->write_next();
        return;
      }
      if (error) return self->reset();
      self->held_ += n;
      self->held_chunks_.push_back({Clock::now() + self->delay_,
                                    std::vector<char>(self->down_.data(), self->down_.data() + n)});
      if (!self->writing_) self->write_next();
      self->read_down();
    });
  }

  void write_next() {
    if (closed_) return;
    if (held_chunks_.empty()) {
      writing_ = false;
      if (upstream_ended_ && !down_done_) {
        ErrorCode ignored;
        client_.shutdown(tcp::socket::shutdown_send, ignored);
        down_done_ = true;
        close_if_done();
      }
      return;
    }
    writing_ = true;
    timer_.expires_at(held_chunks_.front().due);
    timer_.async_wait([self = shared_from_this()](const ErrorCode& error) {
      if (error || self->closed_) return;
      asio::async_write(self->client_, asio::buffer(self->held_chunks_.front().bytes),
                        [self](const ErrorCode& failed, std::size_t) {
                          if (failed) return self->reset();
                          self->held_ -= self->held_chunks_.front().bytes.size();
                          self->held_chunks_.pop_front();
                          if (self->paused_ && self->held_ < kMaxHeld) {
                            self->paused_ = false;
                            self->read_down();
                          }
                          self->write_next();
                        });
    });
  }

  void close_if_done() {
    if (up_done_ && down_done_) close(false);
  }

  // A failure on one side: the other side sees a reset too, as it would without the relay.
  void reset() { close(true); }

  void close(bool abort) {
    if (closed_) return;
    closed_ = true;
    ErrorCode ignored;
    timer_.cancel();
    for (auto* socket : {&client_, &upstream_}) {
      if (abort && socket->is_open())
        socket->set_option(asio::socket_base::linger(true, 0), ignored);
      socket->close(ignored);
    }
  }

  tcp::socket client_;
  tcp::socket upstream_;
  asio::steady_timer timer_;
  tcp::endpoint target_;
  std::chrono::milliseconds delay_;
  std::array<char, kChunk> up_{};
  std::array<char, kChunk> down_{};
  std::deque<Chunk> held_chunks_;
  std::size_t held_ = 0;
  bool paused_ = false;
  bool writing_ = false;
  bool upstream_ended_ = false;  // the emulator's end of stream was read
  bool up_done_ = false;         // the client's end of stream was passed on
  bool down_done_ = false;       // the emulator's end of stream was passed on
  bool closed_ = false;
};

}  // namespace

struct LatencyRelay::Impl {
  asio::io_context io;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;  // one per address the host names
  tcp::endpoint target;
  std::chrono::milliseconds delay{0};
  std::uint16_t port = 0;
  std::thread thread;

  void accept(tcp::acceptor& acceptor) {
    acceptor.async_accept([this, &acceptor](const ErrorCode& error, tcp::socket client) {
      if (error == asio::error::operation_aborted) return;
      if (!error) {
        std::make_shared<Link>(std::move(client), target, delay)->start();
        return accept(acceptor);
      }
      // Out of descriptors or memory: the connection waits in the backlog; try again shortly
      // rather than spin.
      spdlog::warn("emulator latency relay: cannot accept a connection: {}", error.message());
      auto pause = std::make_shared<asio::steady_timer>(io, std::chrono::milliseconds(100));
      pause->async_wait([this, &acceptor, pause](const ErrorCode& e) {
        if (!e) accept(acceptor);
      });
    });
  }

  void run() {
    while (true) {
      try {
        io.run();
        return;
      } catch (const std::exception& e) {
        // A handler failed (out of memory): its connection is dropped, the relay goes on.
        spdlog::error("emulator latency relay: {}", e.what());
      }
    }
  }
};

LatencyRelay::LatencyRelay(const std::string& host, std::uint16_t port, std::uint16_t target_port,
                           std::chrono::milliseconds delay)
    : impl_(std::make_unique<Impl>()) {
  impl_->delay = delay;
  impl_->target = tcp::endpoint(asio::ip::make_address("127.0.0.1"), target_port);
  // Every address the host names, as the emulator itself listens (`localhost`: 127.0.0.1 and
  // ::1); one that cannot be bound is an error unless another one could.
  std::string failure;
  try {
    tcp::resolver resolver(impl_->io);
    for (const auto& entry : resolver.resolve(host, std::to_string(port), tcp::resolver::passive)) {
      auto endpoint = entry.endpoint();
      if (impl_->port != 0) endpoint.port(impl_->port);  // port 0: every address gets the same
      try {
        auto acceptor = std::make_unique<tcp::acceptor>(impl_->io);
        acceptor->open(endpoint.protocol());
        acceptor->set_option(tcp::acceptor::reuse_address(true));
        if (endpoint.protocol() == tcp::v6()) acceptor->set_option(asio::ip::v6_only(true));
        acceptor->bind(endpoint);
        acceptor->listen(64);
        impl_->port = acceptor->local_endpoint().port();
        impl_->acceptors.push_back(std::move(acceptor));
      } catch (const boost::system::system_error& e) {
        if (failure.empty()) failure = e.code().message();
      }
    }
  } catch (const boost::system::system_error& e) {
    failure = e.code().message();
  }
  if (impl_->acceptors.empty()) {
    throw Error("the emulator cannot listen on " + host + ":" + std::to_string(port) + ": " +
                (failure.empty() ? std::string("the host names no address") : failure));
  }
  for (auto& acceptor : impl_->acceptors) impl_->accept(*acceptor);
  impl_->thread = std::thread([this] { impl_->run(); });
}

LatencyRelay::~LatencyRelay() {
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::uint16_t LatencyRelay::port() const { return impl_->port; }

}  // namespace metro::emulator
