#pragma once

/// A Service Bus client over AMQP 1.0: senders, peek-lock and receive-and-delete receivers,
/// settlement on the link and by lock token, and the `$management` operations (receive and settle
/// deferred messages by sequence number, peek, renew locks, schedule). One connection carries
/// every link of a `Client`; it is authorised per entity with CBS and SAS tokens, refreshed before
/// they expire.
///
/// Thread-safety: `Client`, `Sender` and `Receiver` may be used from any number of threads at
/// once. Every blocking call has a timeout (`ClientOptions::operation_timeout`) and has a
/// `std::future` form for asynchronous use; a future completes with `TimeoutError` at the latest
/// after that timeout too. A sender or receiver may outlive its client: its calls then throw
/// `ClientClosedError`. No Proton type appears in this header.

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <metro/sb/connection_string.hpp>
#include <metro/sb/errors.hpp>

namespace metro::sb {

using Clock = std::chrono::system_clock;
using std::chrono::milliseconds;

/// A simple application-property value.
using PropertyValue = std::variant<std::monostate, bool, std::int64_t, double, std::string>;

/// A message to send.
struct Message {
  std::string body;  ///< Sent as one data section (bytes as they are).
  std::optional<std::string> subject;
  std::optional<std::string> message_id;
  std::optional<std::string> correlation_id;
  std::optional<std::string> content_type;
  std::optional<std::string> to;
  std::optional<std::string> reply_to;
  std::map<std::string, PropertyValue> application_properties;
  std::optional<milliseconds> time_to_live;
  std::optional<Clock::time_point> scheduled_enqueue_time;
};

enum class MessageState { kActive = 0, kDeferred = 1, kScheduled = 2 };

/// The kind of body section a received message had (AMQP 1.0, part 3.2).
enum class BodySection {
  kData,          ///< One or more data sections: `body` holds their bytes, joined.
  kAmqpValue,     ///< An amqp-value section: `body` holds it when it is a string or binary, else
                  ///< nothing.
  kAmqpSequence,  ///< amqp-sequence sections: `body` is empty.
  kNone,          ///< No body at all.
};

/// A message received from a queue or subscription (or fetched by sequence number, or peeked).
struct ReceivedMessage : Message {
  /// What the body was sent as: the SDKs send data sections, but another producer may send an
  /// AMQP value or sequence, which `body` can only partly show.
  BodySection body_section = BodySection::kData;
  std::int64_t sequence_number = 0;
  Clock::time_point enqueued_time;
  std::optional<Clock::time_point> locked_until;
  std::string lock_token;  ///< RFC-4122 text; empty in receive-and-delete mode and for peeks.
  std::uint32_t delivery_count = 0;
  MessageState state = MessageState::kActive;
  std::optional<std::string> dead_letter_reason;
  std::optional<std::string> dead_letter_description;

  /// Where to settle it: the receiving link, or (for deferred messages) `$management`.
  std::shared_ptr<void> settlement;
};

enum class ConnectionState { kConnecting, kConnected, kDisconnected, kClosed };

struct ClientOptions {
  /// How long every operation may take; also the deadline of each request on the wire.
  milliseconds operation_timeout{std::chrono::seconds(60)};
  std::string ca_file;  ///< PEM to trust for TLS; empty: the system's CA store.
  milliseconds reconnect_initial_backoff{100};
  milliseconds reconnect_max_backoff{std::chrono::seconds(30)};
  std::chrono::seconds token_lifetime{3600};
  /// A connection on which nothing arrives for this long is taken for dead: it is dropped (state
  /// `kDisconnected`, "no frame from the peer for 30 s") and made again. The AMQP open frame
  /// asks the peer for a frame at least every half of it. Also the longest a connection may
  /// take to open. A request that outlives `operation_timeout` with nothing heard from the peer
  /// since it was sent drops the connection the same way.
  milliseconds idle_timeout{std::chrono::seconds(30)};
  /// Called on the client's thread on every change of state, once per change, with the reason
  /// (e.g. why the connection was lost); must not block. The client also logs each change.
  std::function<void(ConnectionState, const std::string& why)> on_state_change;
};

enum class ReceiveMode { kPeekLock, kReceiveAndDelete };

/// How a batch of messages fetched by sequence number is settled.
enum class Disposition { kComplete, kAbandon, kDefer, kDeadLetter };

struct ReceiverOptions {
  ReceiveMode mode = ReceiveMode::kPeekLock;
  std::uint32_t prefetch = 0;  ///< Messages held ahead of receive(); 0: only what receive() asks.
  /// Renew the lock of every message received and not yet settled, for up to this long after it
  /// arrived (0: never). Renewal happens when less than half the lock's time, or 10 s, is left.
  milliseconds auto_renew_lock_for{0};
};

class Client;

/// Messages pushed to a callback on a thread of the subscription's own, until it is stopped or
/// destroyed. The callback may block and settle the message; an exception it throws is logged
/// and the message left to its lock (settle what it handled before throwing).
class Subscription {
 public:
  Subscription() = default;
  Subscription(Subscription&&) noexcept = default;
  /// Stops this subscription, then takes over `other`'s.
  Subscription& operator=(Subscription&& other) noexcept;
  ~Subscription() { stop(); }
  /// Stops delivering and waits for the callback under way to return. Called from the callback
  /// itself, it returns at once and the subscription ends when the callback returns.
  void stop();

 private:
  struct State;
  friend class Receiver;
  std::shared_ptr<State> state_;
};

/// A rule of a subscription, as `enumerate-rules` lists it.
struct RuleInfo {
  std::string name;
  std::optional<std::string> sql;  ///< SQL expression; `1=1` for the true filter.
  std::optional<std::string> correlation_id;
  std::optional<std::string> label;
  std::map<std::string, PropertyValue> properties;
};

class Sender {
 public:
  /// Sends one message; returns when the service accepted it.
  void send(const Message& message);
  /// Sends messages in one batch transfer where they fit.
  void send(const std::vector<Message>& messages);
  std::future<void> send_async(std::vector<Message> messages);
  /// Schedules messages; returns their sequence numbers.
  std::vector<std::int64_t> schedule(const std::vector<Message>& messages, Clock::time_point at);
  void cancel_scheduled(const std::vector<std::int64_t>& sequence_numbers);
  const std::string& entity() const;

 private:
  struct Impl;
  friend class Client;
  explicit Sender(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

class Receiver {
 public:
  /// Up to `max` messages; waits up to `timeout` for the first, returns early with what is there.
  std::vector<ReceivedMessage> receive(std::size_t max, milliseconds timeout);
  /// The same as a future, fulfilled on the client's thread (no thread waits meanwhile); any
  /// number may wait at once.
  std::future<std::vector<ReceivedMessage>> receive_async(std::size_t max, milliseconds timeout);
  /// Hands up to `max` messages to `callback`, once: as soon as any are there (at once when some
  /// are buffered), or an empty vector when `timeout` has passed (checked once a second) or the
  /// client closes. No thread waits meanwhile. The callback runs on the client's thread (or the
  /// caller's, when messages are already buffered) and must not block. One may wait at a time
  /// per receiver; a second call throws `InvalidArgument`.
  void receive_async(std::size_t max, milliseconds timeout,
                     std::function<void(std::vector<ReceivedMessage>)> callback);
  /// Drops the waiting callback of `receive_async` without calling it; true when one was waiting
  /// (false: it has been called or is being called).
  bool cancel_receive_async();

  void complete(const ReceivedMessage& message);
  void abandon(const ReceivedMessage& message,
               const std::map<std::string, PropertyValue>& properties_to_modify = {});
  void defer(const ReceivedMessage& message,
             const std::map<std::string, PropertyValue>& properties_to_modify = {});
  void dead_letter(const ReceivedMessage& message, const std::string& reason,
                   const std::string& description);
  std::future<void> complete_async(const ReceivedMessage& message);
  std::future<void> abandon_async(const ReceivedMessage& message);
  std::future<void> defer_async(const ReceivedMessage& message);
  std::future<void> dead_letter_async(const ReceivedMessage& message, const std::string& reason,
                                      const std::string& description);
  /// Moves the lock's expiry; returns the new one.
  Clock::time_point renew_lock(const ReceivedMessage& message);

  /// Fetches deferred messages by sequence number (peek-lock: they are locked for settlement).
  std::vector<ReceivedMessage> receive_deferred(const std::vector<std::int64_t>& sequence_numbers);
  /// Settles many messages fetched by sequence number in one `update-disposition` request.
  void settle_deferred(const std::vector<ReceivedMessage>& messages, Disposition disposition,
                       const std::string& reason = {}, const std::string& description = {});
  void complete_deferred(const std::vector<ReceivedMessage>& messages);
  /// Browses from a sequence number without locking; includes deferred and scheduled messages.
  std::vector<ReceivedMessage> peek(std::int64_t from_sequence_number, std::size_t count);

  /// Delivers messages to `handler` as they arrive (up to `batch` at a time).
  Subscription subscribe(std::function<void(ReceivedMessage&)> handler, std::size_t batch = 16);

  /// Rules of the subscription this receiver reads (`topic/Subscriptions/name`).
  void add_sql_rule(const std::string& name, const std::string& expression);
  void add_correlation_rule(const std::string& name, const RuleInfo& filter);
  void remove_rule(const std::string& name);
  std::vector<RuleInfo> rules();

  const std::string& entity_path() const;

 private:
  struct Impl;
  friend class Client;
  explicit Receiver(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

class Client {
 public:
  /// Parses the connection string and connects in the background. Throws `InvalidArgument`
  /// for a string that does not parse.
  explicit Client(std::string_view connection_string, ClientOptions options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  /// A sender to a queue or topic. Attaches now; throws NotFound / Unauthorized errors.
  Sender create_sender(const std::string& entity);
  /// A receiver on a queue, `topic/Subscriptions/name`, or either's `/$DeadLetterQueue`.
  Receiver create_receiver(const std::string& entity_path, ReceiverOptions options = {});
  ConnectionState state() const;
  /// Closes every link and the connection, and waits (a second or two at most for a silent
  /// peer) until they are. Idempotent; from any thread, the client's own included. Afterwards
  /// every call on this client and on its senders and receivers throws `ClientClosedError`.
  void close();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace metro::sb
