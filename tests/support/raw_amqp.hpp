#pragma once

// A bare AMQP 1.0 client and server on Proton's C API, for tests that need to send what no SDK
// sends (hand-built encodings, values nested 100,000 deep) or to play a Service Bus that
// misbehaves (ignores a put-token, never answers $management, delivers poison). Every wait has a
// deadline. Thread-safety: RawAmqpClient is for one thread; RawAmqpServer's members may be called
// from any thread while it runs its own.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../../src/amqp/message.hpp"
#include "../../src/common/thread_annotations.hpp"

struct pn_proactor_t;
struct pn_connection_t;
struct pn_link_t;
struct pn_event_t;
struct pn_delivery_t;

namespace metro::test {

/// How the peer settled a transfer.
struct Outcome {
  std::uint64_t state = 0;  ///< PN_ACCEPTED, PN_REJECTED, … (0: not settled in time)
  std::string condition;    ///< For rejected: the error condition.
  std::string description;
};

class RawAmqpClient {
 public:
  /// Connects (SASL ANONYMOUS) and waits for the peer's open. Throws std::runtime_error.
  RawAmqpClient(const std::string& host, std::uint16_t port,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~RawAmqpClient();
  RawAmqpClient(const RawAmqpClient&) = delete;
  RawAmqpClient& operator=(const RawAmqpClient&) = delete;

  /// Puts `token` for `audience` on $cbs; the reply's status code.
  int put_token(const std::string& audience, const std::string& token);
  /// Sends `bytes` as one message on a sender link to `address` (attached on first use) and
  /// waits for the outcome.
  Outcome send(const std::string& address, const std::string& bytes);
  /// Sends `bytes` as a request to `node` (e.g. `q/$management`) with `reply_to` set by the
  /// caller in the bytes; returns the reply, or nullopt when none came in time. The request's
  /// own outcome goes to `outcome` when given.
  std::optional<amqp::Message> request(const std::string& node, const std::string& reply_to,
                                       const std::string& bytes, Outcome* outcome = nullptr);
  /// Receives one message from `address` (peek-lock, settle mode second) and settles it as
  /// modified with `annotations` (an encoded map, taken as it is), waiting for the peer's answer.
  /// State 0 when no message or answer came in time.
  Outcome receive_and_modify(const std::string& address, const std::string& annotations);
  /// True while the connection is open (the peer has not closed it or dropped it).
  bool open();

 private:
  struct Link;
  Link& link(const std::string& address, bool sender, const std::string& name);
  void flush(Link& link);
  void run_until(const std::function<bool()>& done);
  void handle(pn_event_t* event);

  std::vector<std::function<void()>> pending_actions_;  // run in the connection's next wake
  pn_delivery_t* settling_ = nullptr;                   // receive_and_modify's delivery
  Outcome* settled_ = nullptr;
  bool* settled_done_ = nullptr;
  std::chrono::milliseconds timeout_;
  pn_proactor_t* proactor_ = nullptr;
  pn_connection_t* connection_ = nullptr;
  bool opened_ = false;
  bool closed_ = false;
  std::map<std::string, std::unique_ptr<Link>> links_;
  std::uint64_t tag_ = 0;
};

/// A minimal Service Bus stand-in: accepts every connection, session and link; answers
/// put-tokens (202) unless told to ignore some; hands $management requests to a handler; sends
/// queued raw messages to whoever receives from an address; records how they were settled.
class RawAmqpServer {
 public:
  /// Listens on 127.0.0.1, port 0.
  RawAmqpServer();
  ~RawAmqpServer();
  RawAmqpServer(const RawAmqpServer&) = delete;
  RawAmqpServer& operator=(const RawAmqpServer&) = delete;

  std::uint16_t port() const { return port_; }
  /// `Endpoint=sb://127.0.0.1:<port>;…;UseDevelopmentEmulator=true`.
  std::string connection_string() const;

  /// The next `n` put-token requests get no reply.
  void ignore_put_tokens(int n);
  /// Answers a $management request: the reply's application properties and body, or nullopt to
  /// give no reply at all.
  using ManagementHandler = std::function<std::optional<std::pair<amqp::Value, amqp::Value>>(
      const std::string& node, const amqp::Message& request)>;
  void on_management(ManagementHandler handler);
  /// Queues raw message bytes for the next receiver of `address`.
  void deliver(const std::string& address, std::string message_bytes);
  /// Settlements of delivered messages, in order.
  std::vector<Outcome> outcomes();
  /// How many put-token requests arrived.
  int put_tokens();

 private:
  void run();
  void handle(pn_event_t* event);
  void pump(pn_link_t* link);
  void on_request(pn_link_t* link, const amqp::Message& request);

  pn_proactor_t* proactor_ = nullptr;
  std::uint16_t port_ = 0;
  std::promise<std::uint16_t>* listening_ = nullptr;  // until the listener is open
  std::thread thread_;
  // Event thread only:
  bool stopping_ = false;
  std::uint64_t tag_ = 0;
  std::map<pn_link_t*, std::deque<std::string>> replies_;

  Mutex mutex_;
  bool stop_requested_ GUARDED_BY(mutex_) = false;
  int ignore_put_tokens_ GUARDED_BY(mutex_) = 0;
  int put_tokens_ GUARDED_BY(mutex_) = 0;
  ManagementHandler management_ GUARDED_BY(mutex_);
  std::map<std::string, std::deque<std::string>> to_deliver_ GUARDED_BY(mutex_);
  std::vector<Outcome> outcomes_ GUARDED_BY(mutex_);
  std::vector<pn_connection_t*> connections_;  // event thread only
};

}  // namespace metro::test
