// Service Bus semantics over the emulator's entities. Over 600 lines on purpose: it is one class
// whose operations (send, lock, settle, expire, schedule, dead-letter, restore) each keep the
// same invariants over an entity's indexes (available, locks, expiries, schedule, dirty rows);
// split across files, those invariants would be harder to see together.

#include "broker.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <span>

#include <malloc.h>

namespace metro::emulator {
namespace {

using amqp::Value;

constexpr std::string_view kDeadLetterSuffix = "/$deadletterqueue";
/// Messages held at once after which emptying the emulator returns its free memory to the system.
constexpr std::size_t kTrimAfter = 10000;

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

void merge_properties(StoredMessage& m, const Value& properties) {
  if (properties.type() != amqp::Type::kMap || properties.map_size() == 0) return;
  for (std::size_t i = 0; i < properties.map_size(); ++i) {
    const auto& key = properties.map_key(i);
    if (!key.is_text()) continue;
    m.message.application_properties.set(Value::string(key.as_bytes()), properties.map_value(i));
  }
  m.application_properties_modified = true;
}

}  // namespace

TimeMs now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string normalize_address(std::string_view address) {
  if (auto scheme = address.find("://"); scheme != std::string_view::npos) {
    address.remove_prefix(scheme + 3);
    auto slash = address.find('/');
    address = slash == std::string_view::npos ? std::string_view{} : address.substr(slash);
  }
  while (!address.empty() && address.front() == '/') address.remove_prefix(1);
  std::string out;
  for (std::size_t i = 0; i < address.size(); ++i) {
    if (address[i] == '%' && i + 2 < address.size() &&
        std::isxdigit(static_cast<unsigned char>(address[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(address[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(address.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += address[i];
    }
  }
  return lower(out);
}

Broker::Broker(const BusConfig& config, bool journaled) : journaled_(journaled) {
  for (const auto& q : config.queues) add_entity(q.name, Entity::Kind::kQueue, q.options);
  for (const auto& t : config.topics) {
    auto& topic = add_entity(t.name, Entity::Kind::kTopic, t.options);
    for (const auto& s : t.subscriptions) {
      auto& sub =
          add_entity(t.name + "/Subscriptions/" + s.name, Entity::Kind::kSubscription, s.options);
      sub.topic_ = &topic;
      topic.subscriptions_.push_back(&sub);
      if (s.rules.empty()) {
        sub.rules_.push_back({"$Default", true_filter(), now_ms()});
      }
      for (const auto& r : s.rules) sub.rules_.push_back({r.name, filter_for(r), now_ms()});
    }
  }
}

Entity& Broker::add_entity(std::string path, Entity::Kind kind, const EntityOptions& options) {
  auto key = lower(path);
  auto entity = std::make_unique<Entity>(path, kind, options);
  auto& ref = *entity;
  entities_[key] = std::move(entity);
  if (kind == Entity::Kind::kQueue || kind == Entity::Kind::kSubscription) {
    EntityOptions dlq_options = options;
    dlq_options.default_ttl.reset();  // Dead-letter queues do not expire messages.
    auto dlq = std::make_unique<Entity>(path + "/$DeadLetterQueue", Entity::Kind::kDeadLetterQueue,
                                        dlq_options);
    ref.dead_letter_queue_ = dlq.get();
    entities_[key + std::string(kDeadLetterSuffix)] = std::move(dlq);
  }
  return ref;
}

Entity* Broker::find(std::string_view path) {
  auto it = entities_.find(normalize_address(path));
  return it == entities_.end() ? nullptr : it->second.get();
}

const Entity* Broker::find(std::string_view path) const {
  auto it = entities_.find(normalize_address(path));
  return it == entities_.end() ? nullptr : it->second.get();
}

std::vector<const Entity*> Broker::entities() const {
  std::vector<const Entity*> out;
  for (const auto& [key, e] : entities_) out.push_back(e.get());
  return out;
}

void Broker::enqueue(Entity& entity, amqp::Message message, std::int64_t sequence, TimeMs now,
                     std::optional<TimeMs> scheduled_for) {
  StoredMessage m;
  m.sequence_number = sequence;
  m.message = std::move(message);
  m.message.delivery_annotations = Value::null();
  if (m.message.message_annotations.type() == amqp::Type::kMap) {
    // The service owns these annotations; a sender's are dropped.
    auto& ma = m.message.message_annotations;
    for (const char* key :
         {"x-opt-sequence-number", "x-opt-enqueued-time", "x-opt-locked-until",
          "x-opt-message-state", "x-opt-enqueue-sequence-number", "x-opt-deadletter-source"}) {
      ma.erase(key);
    }
  }
  m.enqueued = now;
  std::optional<TimeMs> ttl;
  if (const auto& t = m.message.header_field(amqp::kTtl); t.is_integer()) ttl = t.as_int64();
  if (entity.options_.default_ttl) {
    auto limit = entity.options_.default_ttl->count();
    ttl = ttl ? std::min(*ttl, limit) : limit;
  }
  if (ttl) m.expires = (scheduled_for ? *scheduled_for : now) + *ttl;
  if (m.expires) entity.expiries_.insert({*m.expires, sequence});
  if (scheduled_for && *scheduled_for > now) {
    m.state = MessageState::kScheduled;
    m.scheduled_for = *scheduled_for;
    entity.schedule_.insert({*scheduled_for, sequence});
    entity.messages_.emplace(sequence, std::move(m));
  } else {
    entity.messages_.emplace(sequence, std::move(m));
    entity.available_.insert(sequence);
  }
  dirty(entity, sequence);
}

std::vector<std::int64_t> Broker::send(Entity& target, std::vector<amqp::Message> messages,
                                       TimeMs now) {
  std::vector<std::int64_t> numbers;
  for (auto& message : messages) {
    auto sequence = target.next_sequence_++;
    dirty_sequence(target);
    numbers.push_back(sequence);
    if (message.property(amqp::kMessageId).is_null()) {
      // Service Bus gives every message an id; the SDKs rely on it (JS tracks locks by it).
      auto id = amqp::to_string(amqp::random_uuid());
      id.erase(std::remove(id.begin(), id.end(), '-'), id.end());
      message.set_property(amqp::kMessageId, Value::string(id));
      message.properties_raw = amqp::encode_properties(message);
    }
    if (target.options_.requires_duplicate_detection) {
      if (auto id = message.property_text(amqp::kMessageId)) {
        auto window = target.options_.duplicate_detection_window.count();
        std::erase_if(target.recent_message_ids_,
                      [&](const auto& entry) { return entry.second + window <= now; });
        if (!target.recent_message_ids_.emplace(*id, now).second) continue;  // Accepted, dropped.
      }
    }
    std::optional<TimeMs> scheduled_for;
    if (message.message_annotations.type() == amqp::Type::kMap) {
      if (const auto* at = message.message_annotations.find("x-opt-scheduled-enqueue-time");
          at != nullptr && at->type() == amqp::Type::kTimestamp) {
        scheduled_for = at->as_timestamp();
      }
    }
    if (target.kind_ == Entity::Kind::kTopic) {
      // Each matching subscription gets a copy; the last one takes the message itself.
      Entity* previous = nullptr;
      for (auto* sub : target.subscriptions_) {
        bool match = std::any_of(sub->rules_.begin(), sub->rules_.end(),
                                 [&](const Rule& r) { return r.filter->matches(message); });
        if (!match) continue;
        if (previous != nullptr) enqueue(*previous, message, sequence, now, scheduled_for);
        previous = sub;
      }
      if (previous != nullptr) enqueue(*previous, std::move(message), sequence, now, scheduled_for);
    } else {
      enqueue(target, std::move(message), sequence, now, scheduled_for);
    }
  }
  return numbers;
}

std::vector<std::int64_t> Broker::schedule(Entity& target, std::vector<amqp::Message> messages,
                                           TimeMs now) {
  return send(target, std::move(messages), now);
}

void Broker::cancel_scheduled(Entity& target, const std::vector<std::int64_t>& numbers) {
  auto cancel_in = [&](Entity& e) {
    for (auto n : numbers) {
      auto it = e.messages_.find(n);
      if (it != e.messages_.end() && it->second.state == MessageState::kScheduled) {
        e.schedule_.erase({it->second.scheduled_for, n});
        remove(e, n);
      }
    }
  };
  if (target.kind_ == Entity::Kind::kTopic) {
    for (auto* sub : target.subscriptions_) cancel_in(*sub);
  } else {
    cancel_in(target);
  }
}

Outgoing Broker::encode(const StoredMessage& m, bool with_lock) const {
  const auto& stored = m.message.header;
  std::vector<Value> long_header;
  std::array<Value, amqp::kHeaderFieldCount> short_header;
  std::span<Value> header(short_header);
  if (stored.size() > short_header.size()) {
    long_header = stored;
    header = long_header;
  } else {
    std::copy(stored.begin(), stored.end(), short_header.begin());
  }
  header[amqp::kDeliveryCount] = Value::uint(m.delivery_count);
  if (header[amqp::kDurable].is_null()) header[amqp::kDurable] = Value::boolean(true);
  std::array<amqp::Annotation, 1> lock_token{{{"x-opt-lock-token", Value::null()}}};
  std::span<const amqp::Annotation> delivery_annotations;
  if (with_lock && m.lock) {
    lock_token[0].value = Value::uuid(*m.lock);
    delivery_annotations = lock_token;
  }
  std::array<amqp::Annotation, 4> annotations{{
      {"x-opt-sequence-number", Value::long_(m.sequence_number)},
      {"x-opt-enqueued-time", Value::timestamp(m.enqueued)},
      {"x-opt-message-state", Value::int_(static_cast<std::int32_t>(m.state))},
      {"x-opt-locked-until", Value::timestamp(m.locked_until)},
  }};
  Outgoing o;
  o.bytes = amqp::encode_delivery(m.message, header, delivery_annotations,
                                  std::span(annotations).first(m.lock ? 4 : 3),
                                  m.application_properties_modified);
  o.sequence_number = m.sequence_number;
  if (with_lock) o.lock = m.lock;
  o.locked_until = m.locked_until;
  return o;
}

std::optional<Outgoing> Broker::acquire(Entity& entity, bool peek_lock, std::uint64_t owner,
                                        TimeMs now) {
  while (!entity.available_.empty()) {
    auto sequence = *entity.available_.begin();
    entity.available_.erase(entity.available_.begin());
    auto& m = entity.messages_.at(sequence);
    if (m.expires && *m.expires <= now) {
      expire(entity, sequence);
      continue;
    }
    if (!peek_lock) {
      auto out = encode(m, false);
      remove(entity, sequence);
      return out;
    }
    m.lock = amqp::random_uuid();
    m.locked_until = now + entity.options_.lock_duration.count();
    m.lock_owner = owner;
    entity.locks_[*m.lock] = sequence;
    entity.lock_expiries_.insert({m.locked_until, sequence});
    return encode(m, true);
  }
  return std::nullopt;
}

StoredMessage* Broker::locked_message(Entity& entity, const amqp::Uuid& lock, TimeMs now) {
  auto it = entity.locks_.find(lock);
  if (it == entity.locks_.end()) return nullptr;
  auto& m = entity.messages_.at(it->second);
  if (m.locked_until <= now) {
    // Expired but not yet swept: the lock is lost all the same.
    expire_locks_due(entity, now);
    return nullptr;
  }
  return &m;
}

void Broker::unlock(Entity& entity, StoredMessage& m) {
  if (!m.lock) return;
  entity.locks_.erase(*m.lock);
  entity.lock_expiries_.erase({m.locked_until, m.sequence_number});
  m.lock.reset();
  m.lock_owner = 0;
}

void Broker::make_available(Entity& entity, StoredMessage& m) {
  if (m.state == MessageState::kActive) entity.available_.insert(m.sequence_number);
}

void Broker::remove(Entity& entity, std::int64_t sequence) {
  auto it = entity.messages_.find(sequence);
  if (it == entity.messages_.end()) return;
  unlock(entity, it->second);
  entity.available_.erase(sequence);
  if (it->second.expires) entity.expiries_.erase({*it->second.expires, sequence});
  entity.messages_.erase(it);
  dirty(entity, sequence);
}

void Broker::move_to_dead_letter(Entity& entity, std::int64_t sequence, const std::string& reason,
                                 const std::string& description) {
  auto it = entity.messages_.find(sequence);
  if (it == entity.messages_.end()) return;
  unlock(entity, it->second);
  entity.available_.erase(sequence);
  if (it->second.expires) entity.expiries_.erase({*it->second.expires, sequence});
  auto m = std::move(it->second);
  entity.messages_.erase(it);
  dirty(entity, sequence);
  auto* dlq = entity.dead_letter_queue_;
  if (dlq == nullptr) return;
  m.message.application_properties.set(Value::string("DeadLetterReason"), Value::string(reason));
  m.message.application_properties.set(Value::string("DeadLetterErrorDescription"),
                                       Value::string(description));
  m.message.message_annotations.set(Value::symbol("x-opt-deadletter-source"),
                                    Value::string(entity.path_));
  m.application_properties_modified = true;
  m.state = MessageState::kActive;
  m.lock.reset();
  m.expires.reset();
  auto key = m.sequence_number;
  dlq->messages_.emplace(key, std::move(m));
  dlq->available_.insert(key);
  dirty(*dlq, key);
}

void Broker::count_delivery(Entity& entity, StoredMessage& m) {
  ++m.delivery_count;
  dirty(entity, m.sequence_number);
  if (entity.kind_ != Entity::Kind::kDeadLetterQueue &&
      static_cast<int>(m.delivery_count) >= entity.options_.max_delivery_count) {
    move_to_dead_letter(entity, m.sequence_number, "MaxDeliveryCountExceeded",
                        "Message could not be consumed after " +
                            std::to_string(entity.options_.max_delivery_count) +
                            " delivery attempts.");
    return;
  }
  make_available(entity, m);
}

namespace {
Failure lock_lost() {
  return {"com.microsoft:message-lock-lost",
          "The lock supplied is invalid. Either the lock expired, or the message has already been "
          "removed from the queue.",
          410};
}
}  // namespace

std::optional<Failure> Broker::complete(Entity& entity, const amqp::Uuid& lock, TimeMs now) {
  auto* m = locked_message(entity, lock, now);
  if (m == nullptr) return lock_lost();
  remove(entity, m->sequence_number);
  return std::nullopt;
}

std::optional<Failure> Broker::abandon(Entity& entity, const amqp::Uuid& lock,
                                       const Value& properties, TimeMs now) {
  auto* m = locked_message(entity, lock, now);
  if (m == nullptr) return lock_lost();
  unlock(entity, *m);
  merge_properties(*m, properties);
  dirty(entity, m->sequence_number);
  count_delivery(entity, *m);
  return std::nullopt;
}

std::optional<Failure> Broker::defer(Entity& entity, const amqp::Uuid& lock,
                                     const Value& properties, TimeMs now) {
  auto* m = locked_message(entity, lock, now);
  if (m == nullptr) return lock_lost();
  unlock(entity, *m);
  merge_properties(*m, properties);
  m->state = MessageState::kDeferred;
  entity.available_.erase(m->sequence_number);
  // Deferred messages do not expire.
  if (m->expires) entity.expiries_.erase({*m->expires, m->sequence_number});
  m->expires.reset();
  dirty(entity, m->sequence_number);
  return std::nullopt;
}

std::optional<Failure> Broker::dead_letter(Entity& entity, const amqp::Uuid& lock,
                                           const std::string& reason,
                                           const std::string& description, const Value& properties,
                                           TimeMs now) {
  if (entity.kind_ == Entity::Kind::kDeadLetterQueue) {
    return Failure{"com.microsoft:argument-error",
                   "A message in a dead-letter queue cannot be dead-lettered.", 400};
  }
  auto* m = locked_message(entity, lock, now);
  if (m == nullptr) return lock_lost();
  merge_properties(*m, properties);
  move_to_dead_letter(entity, m->sequence_number, reason, description);
  return std::nullopt;
}

std::optional<Failure> Broker::release(Entity& entity, const amqp::Uuid& lock, TimeMs now) {
  auto* m = locked_message(entity, lock, now);
  if (m == nullptr) return lock_lost();
  unlock(entity, *m);
  make_available(entity, *m);
  return std::nullopt;
}

void Broker::drop_owner(std::uint64_t owner, TimeMs now) {
  if (owner == 0) return;
  for (auto& [key, entity] : entities_) {
    std::vector<amqp::Uuid> held;
    for (const auto& [lock, sequence] : entity->locks_) {
      if (entity->messages_.at(sequence).lock_owner == owner) held.push_back(lock);
    }
    for (const auto& lock : held) abandon(*entity, lock, Value::null(), now);
  }
}

std::vector<Outgoing> Broker::peek(const Entity& entity, std::int64_t from, std::size_t count,
                                   TimeMs /*now*/) const {
  std::vector<Outgoing> out;
  for (auto it = entity.messages_.lower_bound(from);
       it != entity.messages_.end() && out.size() < count; ++it) {
    out.push_back(encode(it->second, false));
  }
  return out;
}

std::vector<Outgoing> Broker::receive_deferred(Entity& entity,
                                               const std::vector<std::int64_t>& numbers,
                                               bool peek_lock, TimeMs now,
                                               std::optional<Failure>& error) {
  expire_locks_due(entity, now);
  for (auto n : numbers) {
    auto it = entity.messages_.find(n);
    if (it == entity.messages_.end() || it->second.state != MessageState::kDeferred ||
        it->second.lock) {
      error = Failure{"com.microsoft:message-not-found",
                      "Failed to lock one or more specified messages. Either the message is "
                      "already locked or does not exist. Sequence number: " +
                          std::to_string(n),
                      404};
      return {};
    }
  }
  std::vector<Outgoing> out;
  for (auto n : numbers) {
    auto& m = entity.messages_.at(n);
    if (!peek_lock) {
      out.push_back(encode(m, false));
      remove(entity, n);
      continue;
    }
    m.lock = amqp::random_uuid();
    m.locked_until = now + entity.options_.lock_duration.count();
    m.lock_owner = 0;
    entity.locks_[*m.lock] = n;
    entity.lock_expiries_.insert({m.locked_until, n});
    out.push_back(encode(m, true));
  }
  return out;
}

std::vector<TimeMs> Broker::renew_locks(Entity& entity, const std::vector<amqp::Uuid>& locks,
                                        TimeMs now, std::optional<Failure>& error) {
  std::vector<StoredMessage*> found;
  for (const auto& lock : locks) {
    auto* m = locked_message(entity, lock, now);
    if (m == nullptr) {
      error = lock_lost();
      return {};
    }
    found.push_back(m);
  }
  std::vector<TimeMs> expirations;
  for (auto* m : found) {
    entity.lock_expiries_.erase({m->locked_until, m->sequence_number});
    m->locked_until = now + entity.options_.lock_duration.count();
    entity.lock_expiries_.insert({m->locked_until, m->sequence_number});
    expirations.push_back(m->locked_until);
  }
  return expirations;
}

std::optional<Failure> Broker::add_rule(Entity& subscription, const std::string& name,
                                        std::shared_ptr<const Filter> filter, TimeMs now) {
  for (const auto& r : subscription.rules_) {
    if (lower(r.name) == lower(name)) {
      return Failure{"com.microsoft:entity-already-exists",
                     "The rule '" + name + "' already exists on " + subscription.path_ + ".", 409};
    }
  }
  subscription.rules_.push_back({name, std::move(filter), now});
  return std::nullopt;
}

std::optional<Failure> Broker::remove_rule(Entity& subscription, const std::string& name) {
  auto it = std::find_if(subscription.rules_.begin(), subscription.rules_.end(),
                         [&](const Rule& r) { return lower(r.name) == lower(name); });
  if (it == subscription.rules_.end()) {
    return Failure{"amqp:not-found",
                   "The rule '" + name + "' does not exist on " + subscription.path_ + ".", 404};
  }
  subscription.rules_.erase(it);
  return std::nullopt;
}

void Broker::expire_locks_due(Entity& entity, TimeMs now) {
  while (!entity.lock_expiries_.empty() && entity.lock_expiries_.begin()->first <= now) {
    auto sequence = entity.lock_expiries_.begin()->second;
    auto& m = entity.messages_.at(sequence);
    unlock(entity, m);
    count_delivery(entity, m);
  }
}

bool Broker::tick(TimeMs now) {
  bool available = false;
  std::size_t stored = 0;
  for (auto& [key, e] : entities_) {
    auto& entity = *e;
    stored += entity.messages_.size();
    auto before = entity.available_.size();
    expire_locks_due(entity, now);
    while (!entity.schedule_.empty() && entity.schedule_.begin()->first <= now) {
      auto sequence = entity.schedule_.begin()->second;
      entity.schedule_.erase(entity.schedule_.begin());
      auto& m = entity.messages_.at(sequence);
      m.state = MessageState::kActive;
      entity.available_.insert(sequence);
      dirty(entity, sequence);
    }
    while (!entity.expiries_.empty() && entity.expiries_.begin()->first <= now) {
      auto sequence = entity.expiries_.begin()->second;
      auto& m = entity.messages_.at(sequence);
      if (m.lock || m.state == MessageState::kScheduled) {
        // A locked message is not taken away mid-lock; check again when the lock ends.
        entity.expiries_.erase(entity.expiries_.begin());
        entity.expiries_.insert({std::max(m.locked_until, m.scheduled_for) + 1, sequence});
        if (m.expires) m.expires = std::max(m.locked_until, m.scheduled_for) + 1;
        continue;
      }
      expire(entity, sequence);
    }
    if (entity.available_.size() > before) available = true;
  }
  // A drained backlog leaves its memory in glibc's free lists, scattered among what is still in
  // use: hand it back once the emulator is empty again after holding many messages.
  stored_peak_ = std::max(stored_peak_, stored);
  if (stored == 0 && stored_peak_ >= kTrimAfter) {
    malloc_trim(0);
    stored_peak_ = 0;
  }
  return available;
}

void Broker::expire(Entity& entity, std::int64_t sequence) {
  if (entity.options_.dead_lettering_on_expiration && entity.dead_letter_queue_ != nullptr) {
    move_to_dead_letter(entity, sequence, "TTLExpiredException",
                        "The message expired and was dead lettered.");
  } else {
    remove(entity, sequence);
  }
}

void Broker::restore(Journal& journal, TimeMs now) {
  journal.load(
      [&](const JournalRow& row) {
        auto* entity = find(row.entity);
        if (entity == nullptr) return;  // The entity is no longer configured.
        StoredMessage m;
        m.sequence_number = row.sequence_number;
        m.message = amqp::parse_message(row.bytes);
        m.enqueued = row.enqueued;
        if (row.expires != 0) m.expires = row.expires;
        m.scheduled_for = row.scheduled_for;
        m.delivery_count = static_cast<std::uint32_t>(row.delivery_count);
        m.state = static_cast<MessageState>(row.state);
        auto sequence = m.sequence_number;
        if (m.expires) entity->expiries_.insert({*m.expires, sequence});
        if (m.state == MessageState::kScheduled) {
          entity->schedule_.insert({m.scheduled_for, sequence});
        } else if (m.state == MessageState::kActive) {
          entity->available_.insert(sequence);
        }
        entity->messages_[sequence] = std::move(m);
        if (entity->topic_ != nullptr) {
          entity->topic_->next_sequence_ = std::max(entity->topic_->next_sequence_, sequence + 1);
        }
        entity->next_sequence_ = std::max(entity->next_sequence_, sequence + 1);
      },
      [&](const std::string& path, std::int64_t next) {
        if (auto* entity = find(path))
          entity->next_sequence_ = std::max(entity->next_sequence_, next);
      });
  dirty_.clear();
  tick(now);
}

void Broker::reload(Journal& journal, TimeMs now) {
  for (auto& [key, entity] : entities_) {
    entity->messages_.clear();
    entity->available_.clear();
    entity->lock_expiries_.clear();
    entity->schedule_.clear();
    entity->expiries_.clear();
    entity->locks_.clear();
    // Ids of sends that were refused must not make their retries look like duplicates.
    entity->recent_message_ids_.clear();
  }
  dirty_sequences_.clear();
  restore(journal, now);
}

void Broker::flush(Journal& journal) {
  if (dirty_.empty() && dirty_sequences_.empty()) return;
  Journal::Transaction transaction(journal);
  for (auto* entity : dirty_sequences_) {
    journal.set_next_sequence(entity->path_, entity->next_sequence_);
  }
  for (const auto& [entity, sequence] : dirty_) {
    auto it = entity->messages_.find(sequence);
    if (it == entity->messages_.end()) {
      journal.erase(entity->path_, sequence);
      continue;
    }
    const auto& m = it->second;
    JournalRow row;
    row.entity = entity->path_;
    row.sequence_number = sequence;
    row.bytes = amqp::encode_message(m.message, false, m.application_properties_modified);
    row.enqueued = m.enqueued;
    row.expires = m.expires.value_or(0);
    row.scheduled_for = m.scheduled_for;
    row.delivery_count = m.delivery_count;
    row.state = static_cast<int>(m.state);
    journal.put(row);
  }
  transaction.commit();
  dirty_.clear();
  dirty_sequences_.clear();
}

void Broker::expire_locks(Entity& entity, TimeMs now) {
  std::vector<std::int64_t> locked;
  for (const auto& [until, sequence] : entity.lock_expiries_) locked.push_back(sequence);
  for (auto sequence : locked) {
    auto& m = entity.messages_.at(sequence);
    unlock(entity, m);
    count_delivery(entity, m);
  }
  (void)now;
}

EntityTables Broker::tables(const Entity& entity) const {
  EntityTables t;
  t.messages = entity.messages_.size();
  t.available = entity.available_.size();
  t.locks = entity.locks_.size();
  t.lock_expiries = entity.lock_expiries_.size();
  t.schedule = entity.schedule_.size();
  t.expiries = entity.expiries_.size();
  t.message_ids = entity.recent_message_ids_.size();
  for (const auto& [e, sequence] : dirty_) t.pending_changes += e == &entity ? 1 : 0;
  return t;
}

EntityCounts Broker::counts(const Entity& entity) const {
  EntityCounts c;
  for (const auto& [sequence, m] : entity.messages_) {
    switch (m.state) {
      case MessageState::kActive:
        ++c.active;
        if (m.lock) ++c.locked;
        break;
      case MessageState::kDeferred:
        ++c.deferred;
        if (m.lock) ++c.locked;
        break;
      case MessageState::kScheduled:
        ++c.scheduled;
        break;
    }
  }
  if (entity.dead_letter_queue_ != nullptr) {
    c.dead_lettered = entity.dead_letter_queue_->messages_.size();
  }
  return c;
}

}  // namespace metro::emulator
