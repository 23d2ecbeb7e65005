#include "fault_proxy.hpp"

#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <list>
#include <stdexcept>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../src/common/thread_annotations.hpp"

namespace metro::test {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr std::size_t kChunk = 16 * 1024;
constexpr std::size_t kBufferLimit = 1024 * 1024;  // per direction: stop reading beyond it

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/// Closes with a reset rather than a FIN, as a cut cable looks from either end.
void reset_close(int fd) {
  if (fd < 0) return;
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

struct Chunk {
  std::string bytes;
  std::size_t sent = 0;
  SteadyClock::time_point due;
};

/// One direction of one connection: bytes read from `from`, waiting to be written to `to`.
struct Flow {
  std::deque<Chunk> queue;
  std::size_t queued = 0;
  bool eof = false;   // `from` has no more to give
  bool shut = false;  // and `to` has been told (shutdown for writing)
};

struct Connection {
  int client = -1;
  int upstream = -1;
  bool upstream_ready = false;  // the non-blocking connect finished
  Flow up;                      // client -> upstream
  Flow down;                    // upstream -> client
  bool dead = false;
};

}  // namespace

struct FaultProxy::Impl {
  enum class Mode { kForward, kStall, kSlow };

  Impl(std::string host, std::uint16_t target_port) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (getaddrinfo(host.c_str(), std::to_string(target_port).c_str(), &hints, &found) != 0 ||
        found == nullptr) {
      throw std::runtime_error("fault proxy: cannot resolve " + host);
    }
    std::memcpy(&target, found->ai_addr, sizeof(target));
    freeaddrinfo(found);

    listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    local.sin_port = 0;
    if (bind(listener, reinterpret_cast<sockaddr*>(&local), sizeof(local)) != 0 ||
        listen(listener, 64) != 0) {
      close(listener);
      throw std::runtime_error(std::string("fault proxy: cannot listen: ") + strerror(errno));
    }
    socklen_t length = sizeof(local);
    getsockname(listener, reinterpret_cast<sockaddr*>(&local), &length);
    port = ntohs(local.sin_port);
    set_nonblocking(listener);
    if (pipe(wake) != 0) throw std::runtime_error("fault proxy: no pipe");
    set_nonblocking(wake[0]);
    thread = std::thread([this] { run(); });
  }

  ~Impl() {
    command([this] { stopping = true; });
    thread.join();
    for (auto& c : connections) {
      reset_close(c.client);
      reset_close(c.upstream);
    }
    close(listener);
    close(wake[0]);
    close(wake[1]);
  }

  /// Runs `change` on the proxy's thread and waits until it has.
  void command(std::function<void()> change) {
    std::promise<void> done;
    auto applied = done.get_future();
    {
      MutexLock lock(mutex);
      commands.push_back([&] {
        change();
        done.set_value();
      });
    }
    char byte = 1;
    (void)!write(wake[1], &byte, 1);
    applied.wait();
  }

  // ---- The proxy's thread ----

  void run() {
    while (!stopping) {
      std::vector<pollfd> fds;
      std::vector<std::pair<Connection*, bool>> owners;  // (connection, is client side)
      fds.push_back({wake[0], POLLIN, 0});
      fds.push_back({listener, POLLIN, 0});
      auto now = SteadyClock::now();
      int timeout = -1;
      auto consider = [&](const Flow& flow) {
        if (flow.queue.empty()) return;
        auto due = flow.queue.front().due;
        int ms =
            due <= now
                ? 0
                : static_cast<int>(
                      std::chrono::duration_cast<std::chrono::milliseconds>(due - now).count()) +
                      1;
        if (timeout < 0 || ms < timeout) timeout = ms;
      };
      if (mode != Mode::kStall) {
        for (auto& c : connections) {
          short client_events = 0;
          short upstream_events = 0;
          if (!c.upstream_ready) {
            upstream_events |= POLLOUT;
          } else {
            if (!c.up.eof && c.up.queued < kBufferLimit) client_events |= POLLIN;
            if (!c.down.eof && c.down.queued < kBufferLimit) upstream_events |= POLLIN;
            if (due(c.up, now)) upstream_events |= POLLOUT;
            if (due(c.down, now)) client_events |= POLLOUT;
            consider(c.up);
            consider(c.down);
          }
          fds.push_back({c.client, client_events, 0});
          owners.emplace_back(&c, true);
          fds.push_back({c.upstream, upstream_events, 0});
          owners.emplace_back(&c, false);
        }
      }
      if (poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) break;
      if (fds[0].revents & POLLIN) {
        char buffer[64];
        while (read(wake[0], buffer, sizeof(buffer)) > 0) {
        }
        std::deque<std::function<void()>> batch;
        {
          MutexLock lock(mutex);
          batch.swap(commands);
        }
        for (auto& c : batch) c();
        if (stopping) break;
        continue;  // the set of connections or the mode may have changed
      }
      if (fds[1].revents & POLLIN) accept_all();
      now = SteadyClock::now();
      for (std::size_t i = 2; i < fds.size(); ++i) {
        auto [c, client_side] = owners[i - 2];
        if (c->dead || fds[i].revents == 0) continue;
        handle(*c, client_side, fds[i].revents, now);
      }
      connections.remove_if([](const Connection& c) {
        if (!c.dead) return false;
        reset_close(c.client);
        reset_close(c.upstream);
        return true;
      });
    }
  }

  static bool due(const Flow& flow, SteadyClock::time_point now) {
    return !flow.queue.empty() && flow.queue.front().due <= now;
  }

  void accept_all() {
    while (true) {
      int fd = accept(listener, nullptr, nullptr);
      if (fd < 0) return;
      set_nonblocking(fd);
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      Connection c;
      c.client = fd;
      c.upstream = socket(AF_INET, SOCK_STREAM, 0);
      set_nonblocking(c.upstream);
      setsockopt(c.upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      int rc = connect(c.upstream, reinterpret_cast<const sockaddr*>(&target), sizeof(target));
      if (rc != 0 && errno != EINPROGRESS) {
        reset_close(c.client);
        close(c.upstream);
        continue;
      }
      c.upstream_ready = rc == 0;
      connections.push_back(std::move(c));
      MutexLock lock(mutex);
      ++accepted_count;
    }
  }

  void handle(Connection& c, bool client_side, short revents, SteadyClock::time_point now) {
    int fd = client_side ? c.client : c.upstream;
    if (!client_side && !c.upstream_ready) {
      int error = 0;
      socklen_t length = sizeof(error);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
      if (error != 0) {
        c.dead = true;  // the target is not there: the client sees a reset
        return;
      }
      c.upstream_ready = true;
      return;
    }
    Flow& in = client_side ? c.up : c.down;   // read from fd
    Flow& out = client_side ? c.down : c.up;  // written to fd
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
      char buffer[kChunk];
      auto n = read(fd, buffer, sizeof(buffer));
      if (n > 0) {
        auto delay = mode == Mode::kSlow ? delay_ : std::chrono::milliseconds(0);
        in.queue.push_back({std::string(buffer, static_cast<std::size_t>(n)), 0, now + delay});
        in.queued += static_cast<std::size_t>(n);
      } else if (n == 0) {
        in.eof = true;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        c.dead = true;  // reset: pass it on
        return;
      }
    }
    if ((revents & POLLOUT) && due(out, now)) {
      auto& chunk = out.queue.front();
      // send, not write: a peer that reset must not raise SIGPIPE in the test process.
      auto n =
          send(fd, chunk.bytes.data() + chunk.sent, chunk.bytes.size() - chunk.sent, MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        c.dead = true;
        return;
      }
      if (n > 0) {
        chunk.sent += static_cast<std::size_t>(n);
        out.queued -= static_cast<std::size_t>(n);
        if (chunk.sent == chunk.bytes.size()) out.queue.pop_front();
      }
    }
    // A side that finished, with everything it sent passed on: finish the other side too.
    for (auto* flow : {&c.up, &c.down}) {
      int to = flow == &c.up ? c.upstream : c.client;
      if (flow->eof && flow->queue.empty() && !flow->shut) {
        shutdown(to, SHUT_WR);
        flow->shut = true;
      }
    }
    if (c.up.shut && c.down.shut) c.dead = true;
  }

  sockaddr_in target{};
  int listener = -1;
  int wake[2] = {-1, -1};
  std::uint16_t port = 0;
  std::thread thread;

  // The proxy's thread only:
  std::list<Connection> connections;
  Mode mode = Mode::kForward;
  std::chrono::milliseconds delay_{0};
  bool stopping = false;

  mutable Mutex mutex;
  std::deque<std::function<void()>> commands GUARDED_BY(mutex);
  std::size_t accepted_count GUARDED_BY(mutex) = 0;
};

FaultProxy::FaultProxy(std::string target_host, std::uint16_t target_port)
    : impl_(std::make_unique<Impl>(std::move(target_host), target_port)) {}

FaultProxy::~FaultProxy() = default;

std::uint16_t FaultProxy::port() const { return impl_->port; }

void FaultProxy::cut() {
  impl_->command([this] {
    for (auto& c : impl_->connections) {
      reset_close(c.client);
      reset_close(c.upstream);
    }
    impl_->connections.clear();
  });
}

void FaultProxy::stall() {
  impl_->command([this] { impl_->mode = Impl::Mode::kStall; });
}

void FaultProxy::resume() {
  impl_->command([this] {
    impl_->mode = Impl::Mode::kForward;
    // What waited goes now.
    auto now = SteadyClock::now();
    for (auto& c : impl_->connections) {
      for (auto* flow : {&c.up, &c.down}) {
        for (auto& chunk : flow->queue) chunk.due = std::min(chunk.due, now);
      }
    }
  });
}

void FaultProxy::slow(std::chrono::milliseconds delay) {
  impl_->command([this, delay] {
    impl_->mode = Impl::Mode::kSlow;
    impl_->delay_ = delay;
  });
}

std::size_t FaultProxy::open_connections() const {
  std::size_t count = 0;
  impl_->command([&] { count = impl_->connections.size(); });
  return count;
}

std::size_t FaultProxy::accepted() const {
  MutexLock lock(impl_->mutex);
  return impl_->accepted_count;
}

}  // namespace metro::test
