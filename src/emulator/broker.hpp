#pragma once

// The emulator's state and Service Bus semantics, without any networking: entities, sequence
// numbers, locks, deferral, dead-lettering, scheduling, TTL, rules. The AMQP server drives it.
// Thread-safety: none; the server calls it from its one event thread.

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <metro/emulator/emulator.hpp>

#include "../amqp/message.hpp"
#include "filter.hpp"
#include "journal.hpp"

namespace metro::emulator {

/// Milliseconds since the Unix epoch.
using TimeMs = std::int64_t;
TimeMs now_ms();

enum class MessageState { kActive = 0, kDeferred = 1, kScheduled = 2 };

struct StoredMessage {
  std::int64_t sequence_number = 0;
  amqp::Message message;  ///< Bare message as received; header and annotations as sent.
  bool application_properties_modified = false;
  TimeMs enqueued = 0;
  std::optional<TimeMs> expires;
  TimeMs scheduled_for = 0;
  std::uint32_t delivery_count = 0;
  MessageState state = MessageState::kActive;
  std::optional<amqp::Uuid> lock;
  TimeMs locked_until = 0;
  std::uint64_t lock_owner = 0;  ///< The link that holds the lock; 0 for $management locks.
};

/// Lock tokens are random: their first bytes are hash enough.
struct UuidHash {
  std::size_t operator()(const amqp::Uuid& u) const {
    std::size_t h;
    std::memcpy(&h, u.data(), sizeof(h));
    return h;
  }
};

struct Rule {
  std::string name;
  std::shared_ptr<const Filter> filter;
  TimeMs created = 0;
};

class Entity {
 public:
  enum class Kind { kQueue, kTopic, kSubscription, kDeadLetterQueue };

  Entity(std::string path, Kind kind, EntityOptions options)
      : path_(std::move(path)), kind_(kind), options_(options) {}

  const std::string& path() const { return path_; }
  Kind kind() const { return kind_; }
  const EntityOptions& options() const { return options_; }
  bool receivable() const { return kind_ != Kind::kTopic; }

 private:
  friend class Broker;
  std::string path_;
  Kind kind_;
  EntityOptions options_;
  Entity* dead_letter_queue_ = nullptr;
  Entity* topic_ = nullptr;
  std::vector<Entity*> subscriptions_;
  std::vector<Rule> rules_;
  std::int64_t next_sequence_ = 1;
  std::map<std::int64_t, StoredMessage> messages_;
  std::set<std::int64_t> available_;
  std::set<std::pair<TimeMs, std::int64_t>> lock_expiries_;
  std::set<std::pair<TimeMs, std::int64_t>> schedule_;
  std::set<std::pair<TimeMs, std::int64_t>> expiries_;  // Active messages with a TTL.
  std::unordered_map<amqp::Uuid, std::int64_t, UuidHash> locks_;
  std::map<std::string, TimeMs> recent_message_ids_;
};

/// A message ready to go out: its encoding, and the lock it holds, if any.
struct Outgoing {
  std::string bytes;
  std::int64_t sequence_number = 0;
  std::optional<amqp::Uuid> lock;
  TimeMs locked_until = 0;
};

/// A failure a client sees as an AMQP error condition.
struct Failure {
  std::string condition;  ///< e.g. `com.microsoft:message-lock-lost`
  std::string description;
  int status = 400;  ///< For $management replies.
};

class Broker {
 public:
  /// `journaled`: whether changes are kept for `flush` (without a journal nothing is kept, so a
  /// settled message leaves nothing behind).
  explicit Broker(const BusConfig& config, bool journaled = false);

  /// Finds an entity by path (`queue`, `topic`, `topic/Subscriptions/sub`, with an optional
  /// `/$DeadLetterQueue`), case-insensitively. Nullptr when unknown.
  Entity* find(std::string_view path);
  const Entity* find(std::string_view path) const;
  std::vector<const Entity*> entities() const;

  /// Accepts messages sent to a queue or topic. A topic fans out to every subscription with a
  /// matching rule; each copy keeps the topic's sequence number. Returns the sequence numbers.
  std::vector<std::int64_t> send(Entity& target, std::vector<amqp::Message> messages, TimeMs now);
  std::vector<std::int64_t> schedule(Entity& target, std::vector<amqp::Message> messages,
                                     TimeMs now);
  void cancel_scheduled(Entity& target, const std::vector<std::int64_t>& sequence_numbers);

  /// Takes the oldest available message. Peek-lock locks it for `owner`; receive-and-delete
  /// removes it. Nullopt when none is available.
  std::optional<Outgoing> acquire(Entity& entity, bool peek_lock, std::uint64_t owner, TimeMs now);

  std::optional<Failure> complete(Entity& entity, const amqp::Uuid& lock, TimeMs now);
  std::optional<Failure> abandon(Entity& entity, const amqp::Uuid& lock,
                                 const amqp::Value& properties_to_modify, TimeMs now);
  std::optional<Failure> defer(Entity& entity, const amqp::Uuid& lock,
                               const amqp::Value& properties_to_modify, TimeMs now);
  std::optional<Failure> dead_letter(Entity& entity, const amqp::Uuid& lock,
                                     const std::string& reason, const std::string& description,
                                     const amqp::Value& properties_to_modify, TimeMs now);
  /// Unlocks without counting a delivery (AMQP released).
  std::optional<Failure> release(Entity& entity, const amqp::Uuid& lock, TimeMs now);
  /// The link `owner` went away: its locks are abandoned.
  void drop_owner(std::uint64_t owner, TimeMs now);

  std::vector<Outgoing> peek(const Entity& entity, std::int64_t from_sequence, std::size_t count,
                             TimeMs now) const;
  /// Locks (or, with peek_lock false, removes) deferred messages by sequence number.
  std::vector<Outgoing> receive_deferred(Entity& entity, const std::vector<std::int64_t>& numbers,
                                         bool peek_lock, TimeMs now, std::optional<Failure>& error);
  /// New lock expiry per token.
  std::vector<TimeMs> renew_locks(Entity& entity, const std::vector<amqp::Uuid>& locks, TimeMs now,
                                  std::optional<Failure>& error);

  std::optional<Failure> add_rule(Entity& subscription, const std::string& name,
                                  std::shared_ptr<const Filter> filter, TimeMs now);
  std::optional<Failure> remove_rule(Entity& subscription, const std::string& name);
  const std::vector<Rule>& rules(const Entity& subscription) const { return subscription.rules_; }

  /// Expires locks and activates scheduled messages. True when a message became available.
  bool tick(TimeMs now);
  /// Expires every lock of `entity` now.
  void expire_locks(Entity& entity, TimeMs now);
  EntityCounts counts(const Entity& entity) const;

  /// Test hook: the sizes of the entity's internal tables.
  EntityTables tables(const Entity& entity) const;

  /// Loads what a journal holds (messages lose their locks, as after a broker restart).
  void restore(Journal& journal, TimeMs now);
  /// Whether anything changed since the last flush.
  bool changed() const { return !dirty_.empty() || !dirty_sequences_.empty(); }
  /// Writes every change since the last flush, in one transaction. Throws `metro::Error` when
  /// the journal refuses; the journal is then as it was, and so is this broker after `reload`.
  void flush(Journal& journal);
  /// Forgets every message and lock and loads the journal again: after a failed flush, the state
  /// that was acknowledged and nothing else. Rules and sequence counters are kept.
  void reload(Journal& journal, TimeMs now);

 private:
  void dirty(Entity& entity, std::int64_t sequence) {
    if (journaled_) dirty_.insert({&entity, sequence});
  }
  void dirty_sequence(Entity& entity) {
    if (journaled_) dirty_sequences_.insert(&entity);
  }
  void expire(Entity& entity, std::int64_t sequence);
  Entity& add_entity(std::string path, Entity::Kind kind, const EntityOptions& options);
  void enqueue(Entity& entity, amqp::Message message, std::int64_t sequence, TimeMs now,
               std::optional<TimeMs> scheduled_for);
  StoredMessage* locked_message(Entity& entity, const amqp::Uuid& lock, TimeMs now);
  void unlock(Entity& entity, StoredMessage& m);
  void make_available(Entity& entity, StoredMessage& m);
  void remove(Entity& entity, std::int64_t sequence);
  void move_to_dead_letter(Entity& entity, std::int64_t sequence, const std::string& reason,
                           const std::string& description);
  /// Abandon's effect: count a delivery, dead-letter past the maximum, else make it available.
  void count_delivery(Entity& entity, StoredMessage& m);
  void expire_locks_due(Entity& entity, TimeMs now);
  Outgoing encode(const StoredMessage& m, bool with_lock) const;

  std::map<std::string, std::unique_ptr<Entity>> entities_;  // by lower-case path
  std::set<std::pair<Entity*, std::int64_t>> dirty_;
  std::set<Entity*> dirty_sequences_;
  bool journaled_ = false;       // whether changes are kept for a journal
  std::size_t stored_peak_ = 0;  // messages held at most since the heap was last trimmed
};

/// Lower-cases and strips an address to an entity path: drops `scheme://authority`, a leading
/// `/`, and percent-escapes.
std::string normalize_address(std::string_view address);

}  // namespace metro::emulator
