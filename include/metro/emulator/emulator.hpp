#pragma once

/// A local Azure Service Bus: an AMQP 1.0 server that behaves like Service Bus for queues, topics,
/// subscriptions with rules, dead-letter queues, locks, deferral, scheduling, `$cbs` and
/// `$management`, so that metro and the official Azure SDKs run against it unchanged.
///
/// Thread-safety: an `Emulator` runs its own event thread; every public member function may be
/// called from any thread (the hooks run on the event thread and wait for it).

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <metro/error.hpp>
#include <metro/settings.hpp>

namespace metro::emulator {

using std::chrono::milliseconds;

/// A simple value of an application property, as filters compare them.
using Scalar = std::variant<std::monostate, bool, std::int64_t, double, std::string>;

/// Per-entity settings, with Service Bus's defaults.
struct EntityOptions {
  milliseconds lock_duration{std::chrono::seconds(60)};
  int max_delivery_count = 10;
  std::optional<milliseconds> default_ttl;  ///< None: messages never expire.
  bool dead_lettering_on_expiration = false;
  bool requires_duplicate_detection = false;
  milliseconds duplicate_detection_window{std::chrono::minutes(10)};
};

/// A correlation filter: every field that is set must equal the message's.
struct CorrelationFilter {
  std::optional<std::string> correlation_id, message_id, to, reply_to, label, session_id,
      reply_to_session_id, content_type;
  std::map<std::string, Scalar> properties;
};

/// A subscription rule. With neither filter set it is the true filter.
struct RuleOptions {
  std::string name = "$Default";
  std::optional<std::string> sql;  ///< A SQL filter expression (see README for the subset).
  std::optional<CorrelationFilter> correlation;
};

struct SubscriptionOptions {
  std::string name;
  EntityOptions options;
  std::vector<RuleOptions> rules;  ///< Empty: the `$Default` true filter.
};

struct TopicOptions {
  std::string name;
  EntityOptions options;
  std::vector<SubscriptionOptions> subscriptions;
};

struct QueueOptions {
  std::string name;
  EntityOptions options;
};

struct SasKey {
  std::string name;
  std::string key;
};

/// The namespace the emulator hosts.
struct BusConfig {
  std::vector<SasKey> keys{{"RootManageSharedAccessKey", "SAS_KEY_VALUE"}};
  std::vector<QueueOptions> queues;
  std::vector<TopicOptions> topics;
};

/// Reads `bus.toml`. Throws `metro::ConfigError` with every problem found.
BusConfig load_bus_config(const std::filesystem::path& path);

struct EmulatorOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 5672;               ///< Plain AMQP; 0 picks a free port.
  std::optional<std::uint16_t> tls_port;   ///< AMQP over TLS; 0 picks a free port.
  std::filesystem::path certificate_file;  ///< PEM; empty: a self-signed one is generated.
  std::filesystem::path private_key_file;
  std::filesystem::path data_dir;  ///< Empty: state lives in memory only.
  /// Each chunk the emulator sends reaches its client this much later (a relay on the public
  /// ports), so every request/reply costs a round trip as with a real namespace. 0: none.
  milliseconds latency{0};
  BusConfig bus;
};

/// Counts of one entity's messages by state.
struct EntityCounts {
  std::size_t active = 0;  ///< Available or locked, not deferred.
  std::size_t locked = 0;  ///< Of the above, currently locked.
  std::size_t deferred = 0;
  std::size_t scheduled = 0;
  std::size_t dead_lettered = 0;  ///< In the entity's dead-letter queue.
  std::size_t total() const { return active + deferred + scheduled; }
};

/// Sizes of one entity's internal tables: each is empty again once every message the entity held
/// is settled (the sequence-number counter is all a settled message leaves behind).
struct EntityTables {
  std::size_t messages = 0;
  std::size_t available = 0;
  std::size_t locks = 0;
  std::size_t lock_expiries = 0;
  std::size_t schedule = 0;
  std::size_t expiries = 0;
  std::size_t message_ids = 0;      ///< Duplicate detection's recent ids (kept for its window).
  std::size_t pending_changes = 0;  ///< Changes not yet written to the journal.
  std::size_t unsettled_deliveries = 0;  ///< Deliveries out under a lock, awaiting settlement.
};

class Emulator {
 public:
  explicit Emulator(EmulatorOptions options);
  ~Emulator();
  Emulator(const Emulator&) = delete;
  Emulator& operator=(const Emulator&) = delete;

  /// Binds the listeners and starts the event thread. Throws `metro::Error` when a port cannot
  /// be bound or the certificate cannot be loaded.
  void start();
  /// Closes every connection (cleanly: what is owed goes out before the close frame; a client
  /// that does not answer within 2 s is dropped) and stops. Idempotent.
  void stop();

  std::uint16_t port() const;
  std::optional<std::uint16_t> tls_port() const;
  /// The PEM certificate TLS clients should trust (generated when none was given).
  std::filesystem::path certificate_file() const;
  /// `Endpoint=sb://localhost:<port>;…;UseDevelopmentEmulator=true` for the plain port.
  std::string connection_string() const;

  /// Test hook: every lock held on `entity` (a queue, `topic/Subscriptions/sub`) expires now.
  void expire_locks(std::string_view entity);
  /// Test hook: drops every client connection at once, as a network failure would (no close
  /// frame), and returns when they are gone (with a latency, clients learn of it that much later).
  void drop_connections();
  /// Test hook: the entity's message counts. Throws `metro::InvalidArgument` for an unknown one.
  EntityCounts counts(std::string_view entity) const;
  /// Test hook: the sizes of the entity's internal tables and its deliveries awaiting
  /// settlement. Throws `metro::InvalidArgument` for an unknown entity.
  EntityTables tables(std::string_view entity) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace metro::emulator
