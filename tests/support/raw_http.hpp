#pragma once

// HTTP/1.1 over a plain socket, byte for byte, for tests that must send what ordinary clients
// would not (no Content-Length, a bad request line, a header trickled a byte at a time) and see
// exactly what comes back. Every read waits with a deadline.

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace metro::test {

struct RawResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  ///< Names in lower case.
  std::string body;
};

class RawConnection {
 public:
  /// Connects to 127.0.0.1:`port`; `ok()` says whether it worked.
  explicit RawConnection(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
    int one = 1;
    if (fd_ >= 0) ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  RawConnection(RawConnection&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)), pending_(std::move(other.pending_)) {}

  bool ok() const { return fd_ >= 0; }

  /// Sends all of `bytes`; false when the peer is gone.
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      auto n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  /// Reads one response (framed by Content-Length, else by the close) within `timeout`. The
  /// answer to a HEAD request has no body whatever its Content-Length says: `head_only` tells.
  std::optional<RawResponse> read_response(std::chrono::milliseconds timeout,
                                           bool head_only = false) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t head_end;
    while ((head_end = pending_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(deadline)) return std::nullopt;
    }
    RawResponse r;
    std::string_view head(pending_.data(), head_end);
    auto line_end = head.find("\r\n");
    auto status_line = head.substr(0, line_end);
    if (status_line.size() < 12 || status_line.substr(0, 5) != "HTTP/") return std::nullopt;
    r.status = std::atoi(std::string(status_line.substr(9, 3)).c_str());
    std::size_t at = line_end == std::string_view::npos ? head.size() : line_end + 2;
    while (at < head.size()) {
      auto end = head.find("\r\n", at);
      if (end == std::string_view::npos) end = head.size();
      auto line = head.substr(at, end - at);
      auto colon = line.find(':');
      if (colon != std::string_view::npos) {
        std::string name(line.substr(0, colon));
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        auto value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        r.headers[name] = std::string(value);
      }
      at = end + 2;
    }
    pending_.erase(0, head_end + 4);
    if (head_only || (r.status >= 100 && r.status < 200)) return r;  // No body.
    if (auto it = r.headers.find("content-length"); it != r.headers.end()) {
      auto length = std::stoull(it->second);
      while (pending_.size() < length) {
        if (!fill(deadline)) return std::nullopt;
      }
      r.body = pending_.substr(0, length);
      pending_.erase(0, length);
    } else {
      while (fill(deadline)) {
      }
      r.body = std::move(pending_);
      pending_.clear();
    }
    return r;
  }

  /// True when the peer closed the connection (or reset it) within `timeout`; what it sent
  /// before is kept for `read_response`.
  bool closed_within(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (!fill(deadline)) return !timed_out_;
    }
    return false;
  }

 private:
  /// Reads what is there before `deadline`; false at the end of the stream, an error or the
  /// deadline (`timed_out_` tells which).
  bool fill(std::chrono::steady_clock::time_point deadline) {
    timed_out_ = false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out_ = true;
      return false;
    }
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      timed_out_ = true;
      return false;
    }
    char buffer[16384];
    auto n = ::recv(fd_, buffer, sizeof(buffer), 0);
    if (n <= 0) return false;
    pending_.append(buffer, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  std::string pending_;
  bool timed_out_ = false;
};

/// Sends `request` on a new connection and reads one response.
inline std::optional<RawResponse> raw_request(
    int port, std::string_view request,
    std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  RawConnection c(port);
  if (!c.ok() || !c.send(request)) return std::nullopt;
  return c.read_response(timeout);
}

}  // namespace metro::test
