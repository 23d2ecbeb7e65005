// The latency relay with plain sockets on loopback: what goes through, how late, and how each
// direction ends.
#include "../../../src/emulator/latency_relay.hpp"

#include <chrono>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <metro/error.hpp>

namespace metro::emulator {
namespace {

using namespace std::chrono_literals;

// A socket descriptor closed with the object.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A listening socket on a free loopback port (the emulator's part).
struct Listener {
  Fd fd{::socket(AF_INET, SOCK_STREAM, 0)};
  std::uint16_t port = 0;
  Listener() {
    auto a = loopback(0);
    EXPECT_EQ(::bind(fd.fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd.fd, 4), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd.fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  int accept() const { return ::accept(fd.fd, nullptr, nullptr); }
};

int connect_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval t{10, 0};  // every read below has a deadline
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
  auto a = loopback(port);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

void send_all(int fd, const std::string& text) {
  ASSERT_EQ(::send(fd, text.data(), text.size(), MSG_NOSIGNAL), static_cast<ssize_t>(text.size()));
}

// Everything until the end of stream (or an error, or the 10 s receive deadline).
std::string read_to_end(int fd) {
  timeval t{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
  std::string out;
  char buf[4096];
  while (true) {
    auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

TEST(LatencyRelay, ARequestAndItsReplyTakeTheLatencyAndTheClientsHalfCloseIsKept) {
  Listener emulator;
  LatencyRelay relay("127.0.0.1", 0, emulator.port, 100ms);
  ASSERT_NE(relay.port(), 0);
  Fd client(connect_to(relay.port()));
  Fd server(emulator.accept());
  ASSERT_GE(server.fd, 0);
  auto before = std::chrono::steady_clock::now();
  send_all(client.fd, "close");
  ::shutdown(client.fd, SHUT_WR);  // as Proton does after its Close frame
  EXPECT_EQ(read_to_end(server.fd), "close");
  send_all(server.fd, "close-ok");  // the answer still reaches the client
  ::shutdown(server.fd, SHUT_WR);
  EXPECT_EQ(read_to_end(client.fd), "close-ok");
  EXPECT_GE(std::chrono::steady_clock::now() - before, 100ms);
}

TEST(LatencyRelay, TheEmulatorsHalfCloseComesAfterWhatItSentAndTheAnswerGoesBack) {
  Listener emulator;
  LatencyRelay relay("127.0.0.1", 0, emulator.port, 50ms);
  Fd client(connect_to(relay.port()));
  Fd server(emulator.accept());
  std::string big(1 << 20, 'x');  // more than one chunk, held in order
  send_all(server.fd, big + "close");
  ::shutdown(server.fd, SHUT_WR);
  EXPECT_EQ(read_to_end(client.fd), big + "close");
  send_all(client.fd, "close-ok");
  ::shutdown(client.fd, SHUT_WR);
  EXPECT_EQ(read_to_end(server.fd), "close-ok");
}

TEST(LatencyRelay, AnUnreachableEmulatorClosesTheClient) {
  std::uint16_t gone = 0;
  {
    Listener closed;
    gone = closed.port;
  }
  LatencyRelay relay("127.0.0.1", 0, gone, 10ms);
  Fd client(connect_to(relay.port()));
  EXPECT_EQ(read_to_end(client.fd), "");
}

TEST(LatencyRelay, APortInUseIsAClearError) {
  Listener taken;
  try {
    LatencyRelay relay("127.0.0.1", taken.port, taken.port, 10ms);
    FAIL() << "listened on a port in use";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(taken.port)), std::string::npos);
  }
}

}  // namespace
}  // namespace metro::emulator
