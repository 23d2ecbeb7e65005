#include "latency_relay.hpp"

#include <array>
#include <deque>
#include <thread>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp uses std::exchange
#include <vector>

#include <boost/asio.hpp>

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
// thread; the handlers in flight keep it alive.
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
      if (error) return self->close();
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
    client_.async_read_some(
        asio::buffer(up_), [self = shared_from_this()](const ErrorCode& error, std::size_t n) {
          if (error) return self->close();  // the client hung up: nothing it is owed matters now
          asio::async_write(self->upstream_, asio::buffer(self->up_.data(), n),
                            [self](const ErrorCode& failed, std::size_t) {
                              if (failed) return self->close();
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
      if (error) {
        self->upstream_done_ = true;  // what is held still goes out, then the client is closed
        return self->finish_if_done();
      }
      self->held_ += n;
      self->held_chunks_.push_back({Clock::now() + self->delay_,
                                    std::vector<char>(self->down_.data(), self->down_.data() + n)});
      if (!self->writing_) self->write_next();
      self->read_down();
    });
  }

  void write_next() {
    if (closed_ || held_chunks_.empty()) {
      writing_ = false;
      return finish_if_done();
    }
    writing_ = true;
    timer_.expires_at(held_chunks_.front().due);
    timer_.async_wait([self = shared_from_this()](const ErrorCode& error) {
      if (error || self->closed_) return;
      asio::async_write(self->client_, asio::buffer(self->held_chunks_.front().bytes),
                        [self](const ErrorCode& failed, std::size_t) {
                          if (failed) return self->close();
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

  void finish_if_done() {
    if (upstream_done_ && held_chunks_.empty() && !writing_) close();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    ErrorCode ignored;
    timer_.cancel();
    client_.shutdown(tcp::socket::shutdown_both, ignored);
    client_.close(ignored);
    upstream_.close(ignored);
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
  bool upstream_done_ = false;
  bool closed_ = false;
};

}  // namespace

struct LatencyRelay::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  tcp::endpoint target;
  std::chrono::milliseconds delay{0};
  std::thread thread;

  void accept() {
    acceptor.async_accept([this](const ErrorCode& error, tcp::socket client) {
      if (error == asio::error::operation_aborted) return;
      if (!error) std::make_shared<Link>(std::move(client), target, delay)->start();
      accept();
    });
  }
};

LatencyRelay::LatencyRelay(const std::string& host, std::uint16_t port, std::uint16_t target_port,
                           std::chrono::milliseconds delay)
    : impl_(std::make_unique<Impl>()) {
  impl_->delay = delay;
  impl_->target = tcp::endpoint(asio::ip::make_address("127.0.0.1"), target_port);
  try {
    tcp::resolver resolver(impl_->io);
    auto found = resolver.resolve(host, std::to_string(port), tcp::resolver::passive);
    auto endpoint = found.begin()->endpoint();
    impl_->acceptor.open(endpoint.protocol());
    impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
    impl_->acceptor.bind(endpoint);
    impl_->acceptor.listen(64);
  } catch (const boost::system::system_error& e) {
    throw Error("the emulator cannot listen on " + host + ":" + std::to_string(port) + ": " +
                e.code().message());
  }
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

LatencyRelay::~LatencyRelay() {
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::uint16_t LatencyRelay::port() const { return impl_->acceptor.local_endpoint().port(); }

}  // namespace metro::emulator
