// The Service Bus client: one Proton proactor thread owns the connection and every link; public
// calls post work to it and wait on futures with a timeout.

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include <metro/sb/client.hpp>
#include <metro/sb/sas.hpp>

#include "../amqp/message.hpp"
#include "../amqp/value_pn.hpp"

namespace metro::sb {
namespace {

using amqp::Value;

std::int64_t to_ms(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(t.time_since_epoch()).count();
}
Clock::time_point from_ms(std::int64_t ms) { return Clock::time_point(milliseconds(ms)); }

std::string text_of(const char* s) { return s == nullptr ? std::string() : std::string(s); }

Value to_value(const PropertyValue& v) { return amqp::from_simple(v); }
PropertyValue to_property(const Value& v) { return amqp::to_simple(v); }

Value property_map(const std::map<std::string, PropertyValue>& properties) {
  std::vector<std::pair<Value, Value>> entries;
  for (const auto& [k, v] : properties) entries.emplace_back(Value::string(k), to_value(v));
  return Value::map(std::move(entries));
}

std::string encode(const Message& m) {
  amqp::Message out;
  auto opt = [](const std::optional<std::string>& s) {
    return s ? Value::string(*s) : Value::null();
  };
  out.set_property(amqp::kMessageId, opt(m.message_id));
  out.set_property(amqp::kTo, opt(m.to));
  out.set_property(amqp::kSubject, opt(m.subject));
  out.set_property(amqp::kReplyTo, opt(m.reply_to));
  out.set_property(amqp::kCorrelationId, opt(m.correlation_id));
  out.set_property(amqp::kContentType,
                   m.content_type ? Value::symbol(*m.content_type) : Value::null());
  if (!m.application_properties.empty()) {
    out.application_properties = property_map(m.application_properties);
  }
  if (m.time_to_live) {
    out.set_header_field(amqp::kDurable, Value::boolean(true));
    out.set_header_field(amqp::kTtl,
                         Value::uint(static_cast<std::uint32_t>(m.time_to_live->count())));
  }
  if (m.scheduled_enqueue_time) {
    out.message_annotations = Value::map({{Value::symbol("x-opt-scheduled-enqueue-time"),
                                           Value::timestamp(to_ms(*m.scheduled_enqueue_time))}});
  }
  out.data_sections.push_back(m.body);
  return amqp::encode_message(out);
}

ReceivedMessage decode_received(const amqp::Message& m) {
  ReceivedMessage r;
  r.body = m.body_bytes();
  auto text = [&](amqp::PropertyField f) -> std::optional<std::string> {
    const auto& v = m.property(f);
    if (v.is_text() || v.type() == amqp::Type::kBinary) return v.as_bytes();
    if (v.type() == amqp::Type::kUuid) return amqp::to_string(v.as_uuid());
    if (v.is_integer()) return std::to_string(v.as_uint64());
    return std::nullopt;
  };
  r.message_id = text(amqp::kMessageId);
  r.subject = text(amqp::kSubject);
  r.correlation_id = text(amqp::kCorrelationId);
  r.content_type = text(amqp::kContentType);
  r.to = text(amqp::kTo);
  r.reply_to = text(amqp::kReplyTo);
  if (m.application_properties.type() == amqp::Type::kMap) {
    for (std::size_t i = 0; i < m.application_properties.map_size(); ++i) {
      const auto& key = m.application_properties.map_key(i);
      if (!key.is_text()) continue;
      r.application_properties[key.as_bytes()] = to_property(m.application_properties.map_value(i));
    }
  }
  if (auto it = r.application_properties.find("DeadLetterReason");
      it != r.application_properties.end() && std::holds_alternative<std::string>(it->second)) {
    r.dead_letter_reason = std::get<std::string>(it->second);
  }
  if (auto it = r.application_properties.find("DeadLetterErrorDescription");
      it != r.application_properties.end() && std::holds_alternative<std::string>(it->second)) {
    r.dead_letter_description = std::get<std::string>(it->second);
  }
  if (const auto& count = m.header_field(amqp::kDeliveryCount); count.is_integer()) {
    r.delivery_count = static_cast<std::uint32_t>(count.as_uint64());
  }
  if (const auto& ttl = m.header_field(amqp::kTtl); ttl.is_integer()) {
    r.time_to_live = milliseconds(ttl.as_int64());
  }
  const auto& ma = m.message_annotations;
  if (const auto* v = ma.find("x-opt-sequence-number"); v && v->is_integer())
    r.sequence_number = v->as_int64();
  if (const auto* v = ma.find("x-opt-enqueued-time"); v && v->type() == amqp::Type::kTimestamp) {
    r.enqueued_time = from_ms(v->as_timestamp());
  }
  if (const auto* v = ma.find("x-opt-locked-until"); v && v->type() == amqp::Type::kTimestamp) {
    r.locked_until = from_ms(v->as_timestamp());
  }
  if (const auto* v = ma.find("x-opt-message-state"); v && v->is_integer()) {
    r.state = static_cast<MessageState>(v->as_int64());
  }
  if (const auto* v = ma.find("x-opt-scheduled-enqueue-time");
      v && v->type() == amqp::Type::kTimestamp) {
    r.scheduled_enqueue_time = from_ms(v->as_timestamp());
  }
  if (const auto* v = m.delivery_annotations.find("x-opt-lock-token");
      v && v->type() == amqp::Type::kUuid) {
    r.lock_token = amqp::to_string(v->as_uuid());
  }
  return r;
}

/// A completion callback: null error on success.
using Done = std::function<void(std::exception_ptr)>;

std::exception_ptr error_for(const std::string& condition, const std::string& description,
                             int status = 0) {
  try {
    throw_for(condition, description, status);
  } catch (...) {
    return std::current_exception();
  }
}

std::exception_ptr connection_lost(const std::string& why) {
  return std::make_exception_ptr(ConnectionLostError("amqp:connection:forced", why, true));
}

}  // namespace

// ---- The engine -----------------------------------------------------------------------------

struct LinkEntry;

/// A received message's way back to its link: valid while the link (of that connection) lives.
struct DeliveryRef {
  std::weak_ptr<LinkEntry> link;
  pn_delivery_t* delivery = nullptr;
  std::uint64_t generation = 0;
  std::string entity;              // for $management settlement
  std::optional<amqp::Uuid> lock;  // set for messages fetched by sequence number
};

struct LinkEntry : std::enable_shared_from_this<LinkEntry> {
  enum class Kind { kSender, kReceiver, kManagement };
  Kind kind = Kind::kSender;
  std::string address;              // entity path (management: the entity)
  ReceiverOptions receiver;         // for receivers
  pn_link_t* link = nullptr;        // sender, receiver, or management request sender
  pn_link_t* reply_link = nullptr;  // management replies
  std::string reply_to;
  bool ready = false;
  std::uint64_t generation = 0;
  std::deque<std::function<void()>> when_ready;
  std::deque<std::pair<std::string, Done>> backlog;  // sends waiting for credit
  std::map<pn_delivery_t*, Done> in_flight;          // sends and settlements awaiting the peer
  std::deque<ReceivedMessage> buffer;                // receiver: messages not yet handed out
  std::set<pn_delivery_t*> unsettled;                // receiver: deliveries we may still settle
  struct Held {
    amqp::Uuid lock;
    Clock::time_point locked_until;
    Clock::time_point received;
    bool renewing = false;
  };
  std::map<pn_delivery_t*, Held> held;  // receiver: locks to renew automatically
  std::uint64_t tag = 0;
  std::exception_ptr attach_error;
  std::condition_variable arrived;  // receiver: buffer grew (waited on with Impl::mutex)
  /// receiver: a receive_async callback waiting for messages (guarded by Impl::mutex).
  struct Waiter {
    std::size_t max = 0;
    Clock::time_point deadline;
    std::function<void(std::vector<ReceivedMessage>)> callback;
  };
  std::optional<Waiter> waiter;

  /// Takes up to `max` buffered messages. Call with Impl::mutex held.
  std::vector<ReceivedMessage> take(std::size_t max) {
    std::vector<ReceivedMessage> out;
    while (!buffer.empty() && out.size() < max) {
      out.push_back(std::move(buffer.front()));
      buffer.pop_front();
    }
    return out;
  }
};

struct Client::Impl : std::enable_shared_from_this<Client::Impl> {
  ConnectionString cs;
  ClientOptions options;
  pn_proactor_t* proactor = nullptr;
  pn_ssl_domain_t* ssl_domain = nullptr;
  std::thread thread;

  std::mutex mutex;  // guards: connection (for waking), tasks, state, buffers of receivers
  pn_connection_t* connection = nullptr;
  std::deque<std::function<void()>> tasks;
  ConnectionState state = ConnectionState::kConnecting;
  bool closing = false;

  // Event-thread state.
  std::uint64_t generation = 0;
  bool open = false;
  milliseconds backoff{0};
  std::list<std::shared_ptr<LinkEntry>> links;
  pn_link_t* cbs_sender = nullptr;
  pn_link_t* cbs_receiver = nullptr;
  std::string cbs_reply_to;
  std::map<std::string, Clock::time_point> tokens;  // audience -> expiry
  std::map<std::string, std::vector<Done>> tokens_pending;
  std::map<std::string, std::function<void(const amqp::Message&)>> requests;  // by message-id
  std::deque<std::string> cbs_backlog;

  explicit Impl(ConnectionString c, ClientOptions o) : cs(std::move(c)), options(std::move(o)) {}

  void start() {
    proactor = pn_proactor();
    if (cs.use_tls) {
      ssl_domain = pn_ssl_domain(PN_SSL_MODE_CLIENT);
      auto ca = options.ca_file.empty() ? std::string("/etc/ssl/certs/ca-certificates.crt")
                                        : options.ca_file;
      if (pn_ssl_domain_set_trusted_ca_db(ssl_domain, ca.c_str()) != 0) {
        throw InvalidArgument("cannot load the CA file " + ca);
      }
      pn_ssl_domain_set_peer_authentication(ssl_domain, PN_SSL_VERIFY_PEER_NAME, nullptr);
    }
    connect();
    thread = std::thread([this] { run(); });
  }

  void set_state(ConnectionState s, const std::string& why) {
    {
      std::lock_guard lock(mutex);
      state = s;
    }
    if (options.on_state_change) options.on_state_change(s, why);
  }

  void connect() {
    auto* c = pn_connection();
    pn_connection_set_hostname(c, cs.host.c_str());
    pn_connection_set_container(c, ("metro-" + amqp::to_string(amqp::random_uuid())).c_str());
    auto* t = pn_transport();
    pn_transport_set_idle_timeout(t, 60000);
    auto* sasl = pn_sasl(t);
    pn_sasl_allowed_mechs(sasl, "ANONYMOUS");
    if (!cs.shared_access_key_name.empty())
      pn_connection_set_user(c, cs.shared_access_key_name.c_str());
    if (ssl_domain != nullptr) {
      auto* ssl = pn_ssl(t);
      pn_ssl_init(ssl, ssl_domain, nullptr);
      pn_ssl_set_peer_hostname(ssl, cs.host.c_str());
    }
    {
      std::lock_guard lock(mutex);
      connection = c;
    }
    ++generation;
    open = false;
    char addr[PN_MAX_ADDR];
    pn_proactor_addr(addr, sizeof(addr), cs.host.c_str(), std::to_string(cs.port).c_str());
    pn_proactor_connect2(proactor, c, t, addr);
  }

  /// Runs `task` on the event thread.
  void post(std::function<void()> task) {
    std::lock_guard lock(mutex);
    tasks.push_back(std::move(task));
    if (connection != nullptr && open_for_wake) {
      pn_connection_wake(connection);
    } else {
      pn_proactor_interrupt(proactor);
    }
  }
  bool open_for_wake = false;  // guarded by mutex: the connection can be woken

  void run_tasks() {
    std::deque<std::function<void()>> batch;
    {
      std::lock_guard lock(mutex);
      batch.swap(tasks);
    }
    for (auto& t : batch) t();
  }

  void run() {
    bool done = false;
    while (!done) {
      auto* events = pn_proactor_wait(proactor);
      while (auto* e = pn_event_batch_next(events)) {
        if (!handle(e)) done = true;
      }
      pn_proactor_done(proactor, events);
    }
  }

  bool handle(pn_event_t* e) {
    switch (pn_event_type(e)) {
      case PN_CONNECTION_INIT: {
        pn_connection_open(pn_event_connection(e));
        auto* session = pn_session(pn_event_connection(e));
        pn_session_open(session);
        // The CBS pair, on its own session.
        cbs_reply_to = "cbs-" + amqp::to_string(amqp::random_uuid());
        cbs_sender = pn_sender(session, ("$cbs-sender-" + cbs_reply_to).c_str());
        pn_terminus_set_address(pn_link_target(cbs_sender), "$cbs");
        pn_terminus_set_address(pn_link_source(cbs_sender), cbs_reply_to.c_str());
        pn_link_open(cbs_sender);
        cbs_receiver = pn_receiver(session, cbs_reply_to.c_str());
        pn_terminus_set_address(pn_link_source(cbs_receiver), "$cbs");
        pn_terminus_set_address(pn_link_target(cbs_receiver), cbs_reply_to.c_str());
        pn_link_open(cbs_receiver);
        pn_link_flow(cbs_receiver, 100);
        break;
      }
      case PN_CONNECTION_REMOTE_OPEN: {
        open = true;
        backoff = milliseconds(0);
        {
          std::lock_guard lock(mutex);
          open_for_wake = true;
        }
        set_state(ConnectionState::kConnected, "connected to " + cs.host);
        pn_proactor_set_timeout(proactor, kTickMs);
        for (auto& l : links) attach(l);
        run_tasks();
        break;
      }
      case PN_CONNECTION_WAKE:
        run_tasks();
        break;
      case PN_PROACTOR_INTERRUPT:
        if (is_closing()) {
          std::lock_guard lock(mutex);
          if (connection != nullptr && open_for_wake) {
            pn_connection_wake(connection);  // close from the connection's own batch
          } else {
            return false;
          }
        } else if (open) {
          std::lock_guard lock(mutex);
          if (connection != nullptr && open_for_wake) pn_connection_wake(connection);
        }
        break;
      case PN_CONNECTION_REMOTE_CLOSE:
        pn_connection_close(pn_event_connection(e));
        break;
      case PN_TRANSPORT_CLOSED: {
        auto* t = pn_event_transport(e);
        auto* cond = pn_transport_condition(t);
        std::string why = pn_condition_is_set(cond)
                              ? text_of(pn_condition_get_name(cond)) + ": " +
                                    text_of(pn_condition_get_description(cond))
                              : "the connection closed";
        lost(why);
        if (is_closing()) return false;
        break;
      }
      case PN_PROACTOR_TIMEOUT:
        if (is_closing()) break;
        expire_waiters();
        if (open) {
          // A timeout arrives outside the connection's batch: do the work in the connection's
          // own turn, where what it writes goes out.
          post([this] {
            refresh_tokens();
            renew_held_locks();
          });
          pn_proactor_set_timeout(proactor, kTickMs);
        } else {
          connect();
        }
        break;
      case PN_LINK_REMOTE_OPEN:
        on_link_open(pn_event_link(e));
        break;
      case PN_LINK_REMOTE_CLOSE:
        on_link_close(pn_event_link(e));
        break;
      case PN_LINK_FLOW:
        on_flow(pn_event_link(e));
        break;
      case PN_DELIVERY:
        on_delivery(pn_event_delivery(e));
        break;
      default:
        break;
    }
    return true;
  }

  bool is_closing() {
    std::lock_guard lock(mutex);
    return closing;
  }

  // The connection is gone: fail what was under way, forget links, and reconnect after a backoff.
  void lost(const std::string& why) {
    {
      std::lock_guard lock(mutex);
      connection = nullptr;
      open_for_wake = false;
    }
    open = false;
    auto error = connection_lost(why);
    for (auto& l : links) {
      l->ready = false;
      l->link = nullptr;
      l->reply_link = nullptr;
      for (auto& [d, done] : l->in_flight) done(error);
      l->in_flight.clear();
      l->unsettled.clear();
      l->held.clear();
    }
    for (auto& [id, callback] : requests) {
      amqp::Message failure;
      failure.application_properties =
          Value::map({{Value::string("statusCode"), Value::int_(-1)},
                      {Value::string("statusDescription"), Value::string(why)}});
      callback(failure);
    }
    requests.clear();
    for (auto& [audience, waiting] : tokens_pending) {
      for (auto& done : waiting) done(error);
    }
    tokens_pending.clear();
    tokens.clear();
    cbs_backlog.clear();
    cbs_sender = cbs_receiver = nullptr;
    if (is_closing()) {
      set_state(ConnectionState::kClosed, "closed");
      return;
    }
    set_state(ConnectionState::kDisconnected, why);
    // Exponential backoff with jitter.
    backoff = backoff.count() == 0 ? options.reconnect_initial_backoff
                                   : std::min(backoff * 2, options.reconnect_max_backoff);
    static thread_local std::mt19937 random{std::random_device{}()};
    auto jitter = std::uniform_int_distribution<long>(0, backoff.count() / 2)(random);
    pn_proactor_set_timeout(proactor, static_cast<pn_millis_t>(backoff.count() + jitter));
  }

  static constexpr pn_millis_t kTickMs = 1000;

  /// A token is put again once a quarter of its life is left (15 minutes of an hour, as the JS
  /// SDK does), so links never meet an expired one.
  bool due(Clock::time_point expiry) const {
    return expiry - Clock::now() <
           std::chrono::duration_cast<Clock::duration>(options.token_lifetime) / 4;
  }

  void refresh_tokens() {
    if (!cs.has_key()) return;  // A given signature cannot be renewed here.
    std::vector<std::string> stale;
    for (const auto& [audience, expiry] : tokens) {
      if (due(expiry) && tokens_pending.count(audience) == 0) stale.push_back(audience);
    }
    for (const auto& audience : stale) {
      put_token(audience, [audience](std::exception_ptr error) {
        (void)error;  // The next attach or refresh tries again; open links keep working.
      });
    }
  }

  /// Answers receive_async callbacks whose time is up with no messages.
  void expire_waiters() {
    auto now = Clock::now();
    std::vector<LinkEntry::Waiter> due;
    {
      std::lock_guard lock(mutex);
      for (auto& l : links) {
        if (l->waiter && l->waiter->deadline <= now) {
          due.push_back(std::move(*l->waiter));
          l->waiter.reset();
        }
      }
    }
    for (auto& w : due) w.callback({});
  }

  /// Renews locks of held messages that run short (auto_renew_lock_for).
  void renew_held_locks() {
    auto now = Clock::now();
    std::vector<std::shared_ptr<LinkEntry>> receivers;
    for (auto& l : links) {
      if (l->kind == LinkEntry::Kind::kReceiver && !l->held.empty()) receivers.push_back(l);
    }
    for (auto& entry : receivers) {
      for (auto& [d, h] : entry->held) {
        if (h.renewing || now - h.received > entry->receiver.auto_renew_lock_for) continue;
        auto left = h.locked_until - now;
        if (left > std::chrono::seconds(10) && left > (h.locked_until - h.received) / 2) continue;
        h.renewing = true;
        auto* delivery = d;
        std::weak_ptr<LinkEntry> weak = entry;
        auto body = Value::map({{Value::string("lock-tokens"),
                                 Value::array(amqp::Type::kUuid, {Value::uuid(h.lock)})}});
        management(
            management_entry(entry->address), "com.microsoft:renew-lock", body,
            [weak, delivery](int status, const std::string&, const std::string&,
                             const Value& reply) {
              auto e = weak.lock();
              if (!e) return;
              auto it = e->held.find(delivery);
              if (it == e->held.end()) return;
              it->second.renewing = false;
              const auto* expirations = reply.find("expirations");
              if (status == 200 && expirations && !expirations->items().empty()) {
                it->second.locked_until = from_ms(expirations->items().front().as_timestamp());
              } else {
                e->held.erase(it);  // Lost: settling will say so.
              }
            },
            [weak, delivery](std::exception_ptr) {
              if (auto e = weak.lock()) e->held.erase(delivery);
            });
      }
    }
  }

  // ---- CBS -----------------------------------------------------------------------------------

  void authorize(const std::string& path, Done done) {
    auto audience = cs.audience(path);
    if (auto it = tokens.find(audience);
        it != tokens.end() && it->second > Clock::now() + std::chrono::minutes(5)) {
      return done(nullptr);
    }
    put_token(audience, std::move(done));
  }

  void put_token(const std::string& audience, Done done) {
    auto& waiting = tokens_pending[audience];
    waiting.push_back(std::move(done));
    if (waiting.size() > 1) return;
    auto expiry = Clock::now() + options.token_lifetime;
    std::string token = cs.has_key() ? make_sas_token(audience, cs.shared_access_key_name,
                                                      cs.shared_access_key, expiry)
                                     : cs.shared_access_signature;
    auto id = amqp::to_string(amqp::random_uuid());
    std::vector<Value> properties(amqp::kPropertyFieldCount);
    properties[amqp::kMessageId] = Value::string(id);
    properties[amqp::kTo] = Value::string("$cbs");
    properties[amqp::kReplyTo] = Value::string(cbs_reply_to);
    auto app =
        Value::map({{Value::string("operation"), Value::string("put-token")},
                    {Value::string("type"), Value::string("servicebus.windows.net:sastoken")},
                    {Value::string("name"), Value::string(audience)},
                    {Value::string("expiration"), Value::timestamp(to_ms(expiry))}});
    requests[id] = [this, audience, expiry](const amqp::Message& reply) {
      const auto* code = reply.application_properties.find("status-code");
      const auto* description = reply.application_properties.find("status-description");
      int status = code != nullptr && code->is_integer() ? static_cast<int>(code->as_int64()) : -1;
      std::string text =
          description != nullptr && description->is_text() ? description->as_bytes() : "";
      std::exception_ptr error;
      if (status >= 200 && status < 300) {
        tokens[audience] = cs.has_key() ? expiry : Clock::time_point::max();
      } else if (status == -1) {
        error = connection_lost(text);
      } else {
        error = error_for(status == 401 ? "amqp:unauthorized-access" : "", text, status);
      }
      auto callbacks = std::move(tokens_pending[audience]);
      tokens_pending.erase(audience);
      for (auto& d : callbacks) d(error);
    };
    cbs_backlog.push_back(amqp::encode_value_message(properties, app, Value::string(token)));
    flush_cbs();
  }

  void flush_cbs() {
    while (cbs_sender != nullptr && !cbs_backlog.empty() && pn_link_credit(cbs_sender) > 0) {
      send_bytes(cbs_sender, cbs_backlog.front(), ++cbs_tag);
      cbs_backlog.pop_front();
    }
  }
  std::uint64_t cbs_tag = 0;

  static pn_delivery_t* send_bytes(pn_link_t* link, const std::string& bytes, std::uint64_t tag) {
    auto* d = pn_delivery(link, pn_dtag(reinterpret_cast<const char*>(&tag), sizeof(tag)));
    pn_link_send(link, bytes.data(), bytes.size());
    pn_link_advance(link);
    return d;
  }

  // ---- Links ---------------------------------------------------------------------------------

  void attach(const std::shared_ptr<LinkEntry>& entry) {
    if (!open) return;
    auto generation_now = generation;
    std::weak_ptr<LinkEntry> weak = entry;
    auto path = entry->kind == LinkEntry::Kind::kManagement ? entry->address + "/$management"
                                                            : entry->address;
    authorize(path, [this, weak, generation_now](std::exception_ptr error) {
      auto live = weak.lock();
      if (!live || generation_now != generation || !open) return;
      if (error) return attach_failed(*live, error);
      open_links(*live);
    });
  }

  void open_links(LinkEntry& entry) {
    auto* session = pn_session(current_connection());
    pn_session_open(session);
    auto name = entry.address + "-" + amqp::to_string(amqp::random_uuid());
    entry.generation = generation;
    switch (entry.kind) {
      case LinkEntry::Kind::kSender:
        entry.link = pn_sender(session, name.c_str());
        pn_terminus_set_address(pn_link_target(entry.link), entry.address.c_str());
        pn_terminus_set_address(pn_link_source(entry.link), name.c_str());
        pn_link_set_snd_settle_mode(entry.link, PN_SND_UNSETTLED);
        break;
      case LinkEntry::Kind::kReceiver:
        entry.link = pn_receiver(session, name.c_str());
        pn_terminus_set_address(pn_link_source(entry.link), entry.address.c_str());
        pn_terminus_set_address(pn_link_target(entry.link), name.c_str());
        if (entry.receiver.mode == ReceiveMode::kPeekLock) {
          pn_link_set_snd_settle_mode(entry.link, PN_SND_UNSETTLED);
          pn_link_set_rcv_settle_mode(entry.link, PN_RCV_SECOND);
        } else {
          pn_link_set_snd_settle_mode(entry.link, PN_SND_SETTLED);
          pn_link_set_rcv_settle_mode(entry.link, PN_RCV_FIRST);
        }
        break;
      case LinkEntry::Kind::kManagement: {
        auto node = entry.address + "/$management";
        entry.reply_to = amqp::to_string(amqp::random_uuid());
        entry.link = pn_sender(session, (name + "-requests").c_str());
        pn_terminus_set_address(pn_link_target(entry.link), node.c_str());
        pn_terminus_set_address(pn_link_source(entry.link), entry.reply_to.c_str());
        entry.reply_link = pn_receiver(session, entry.reply_to.c_str());
        pn_terminus_set_address(pn_link_source(entry.reply_link), node.c_str());
        pn_terminus_set_address(pn_link_target(entry.reply_link), entry.reply_to.c_str());
        pn_link_open(entry.reply_link);
        pn_link_flow(entry.reply_link, 100);
        break;
      }
    }
    pn_link_set_context(entry.link, &entry);
    if (entry.reply_link != nullptr) pn_link_set_context(entry.reply_link, &entry);
    pn_link_open(entry.link);
  }

  pn_connection_t* current_connection() {
    std::lock_guard lock(mutex);
    return connection;
  }

  void attach_failed(LinkEntry& entry, std::exception_ptr error) {
    entry.attach_error = error;
    auto waiting = std::move(entry.when_ready);
    entry.when_ready.clear();
    for (auto& w : waiting) w();
  }

  /// The entry a link belongs to, from the link's context (entries live as long as the client,
  /// so the pointer stays valid); null for the CBS links.
  static std::shared_ptr<LinkEntry> entry_of(pn_link_t* link) {
    auto* entry = static_cast<LinkEntry*>(pn_link_get_context(link));
    return entry != nullptr ? entry->shared_from_this() : nullptr;
  }

  void on_link_open(pn_link_t* link) {
    if (link == cbs_sender) return flush_cbs();
    auto entry = entry_of(link);
    if (!entry) return;
    bool has_terminus = pn_link_is_sender(link)
                            ? pn_terminus_get_address(pn_link_remote_target(link)) != nullptr
                            : pn_terminus_get_address(pn_link_remote_source(link)) != nullptr;
    if (!has_terminus) return;  // Refused; the detach with the error follows.
    if (entry->kind == LinkEntry::Kind::kManagement &&
        (pn_link_state(entry->link) & PN_REMOTE_ACTIVE) == 0) {
      return;
    }
    if (entry->kind == LinkEntry::Kind::kManagement && entry->reply_link != nullptr &&
        (pn_link_state(entry->reply_link) & PN_REMOTE_ACTIVE) == 0) {
      return;
    }
    entry->ready = true;
    entry->attach_error = nullptr;
    if (entry->kind == LinkEntry::Kind::kReceiver && entry->receiver.prefetch > 0) {
      pn_link_flow(entry->link, static_cast<int>(entry->receiver.prefetch));
    }
    auto waiting = std::move(entry->when_ready);
    entry->when_ready.clear();
    for (auto& w : waiting) w();
    on_flow(entry->link);
  }

  void on_link_close(pn_link_t* link) {
    auto* cond = pn_link_remote_condition(link);
    std::string name = text_of(pn_condition_get_name(cond));
    std::string description = text_of(pn_condition_get_description(cond));
    pn_link_close(link);
    if (link == cbs_sender || link == cbs_receiver) return;
    auto entry = entry_of(link);
    if (!entry) return;
    auto error = name.empty() ? connection_lost("the link was closed by the service")
                              : error_for(name, description);
    for (auto& [d, done] : entry->in_flight) done(error);
    entry->in_flight.clear();
    entry->unsettled.clear();
    entry->held.clear();
    entry->ready = false;
    entry->link = nullptr;
    entry->reply_link = nullptr;
    attach_failed(*entry, error);
  }

  void on_flow(pn_link_t* link) {
    if (link == cbs_sender) return flush_cbs();
    auto entry = entry_of(link);
    if (!entry || !pn_link_is_sender(link)) return;
    while (!entry->backlog.empty() && pn_link_credit(link) > 0) {
      auto [bytes, done] = std::move(entry->backlog.front());
      entry->backlog.pop_front();
      auto* d = send_bytes(link, bytes, ++entry->tag);
      entry->in_flight[d] = std::move(done);
    }
  }

  void on_delivery(pn_delivery_t* d) {
    auto* link = pn_delivery_link(d);
    if (pn_link_is_sender(link)) {
      if (!pn_delivery_updated(d)) return;
      if (link == cbs_sender) {
        pn_delivery_settle(d);
        return;
      }
      auto entry = entry_of(link);
      if (!entry) return pn_delivery_settle(d);
      auto it = entry->in_flight.find(d);
      if (it == entry->in_flight.end()) return pn_delivery_settle(d);
      auto outcome = pn_delivery_remote_state(d);
      if (outcome == 0 && !pn_delivery_settled(d)) return;
      std::exception_ptr error;
      if (outcome == PN_REJECTED) {
        auto* cond = pn_disposition_condition(pn_delivery_remote(d));
        error = error_for(text_of(pn_condition_get_name(cond)),
                          text_of(pn_condition_get_description(cond)));
      } else if (outcome != PN_ACCEPTED && entry->kind == LinkEntry::Kind::kSender) {
        error = error_for("", "the service did not accept the message (outcome " +
                                  std::string(pn_disposition_type_name(outcome)) + ")");
      }
      auto done = std::move(it->second);
      entry->in_flight.erase(it);
      pn_delivery_settle(d);
      done(error);
      return;
    }
    // Receiver side: a message or request reply arrives, or the peer settles our disposition.
    auto entry = entry_of(link);
    if (pn_delivery_readable(d) && !pn_delivery_partial(d)) {
      std::string bytes;
      bytes.resize(pn_delivery_pending(d));
      auto n = pn_link_recv(link, bytes.data(), bytes.size());
      bytes.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
      pn_link_advance(link);
      amqp::Message message;
      try {
        message = amqp::parse_message(bytes);
      } catch (const Error&) {
        pn_delivery_update(d, PN_REJECTED);
        pn_delivery_settle(d);
        return;
      }
      if (link == cbs_receiver || (entry && link == entry->reply_link)) {
        pn_delivery_update(d, PN_ACCEPTED);
        pn_delivery_settle(d);
        if (link == cbs_receiver) pn_link_flow(link, 100 - pn_link_credit(link));
        if (entry && link == entry->reply_link) pn_link_flow(link, 100 - pn_link_credit(link));
        const auto& correlation = message.property(amqp::kCorrelationId);
        if (correlation.is_text()) {
          if (auto it = requests.find(correlation.as_bytes()); it != requests.end()) {
            auto callback = std::move(it->second);
            requests.erase(it);
            callback(message);
          }
        }
        return;
      }
      if (!entry) return pn_delivery_settle(d);
      auto received = decode_received(message);
      auto tag = pn_delivery_tag(d);
      if (entry->receiver.mode == ReceiveMode::kPeekLock) {
        if (received.lock_token.empty() && tag.size == 16) {
          amqp::Uuid raw;
          std::memcpy(raw.data(), tag.start, 16);
          received.lock_token = amqp::to_string(amqp::swap_guid_bytes(raw));
        }
        auto ref = std::make_shared<DeliveryRef>();
        ref->link = entry;
        ref->delivery = d;
        ref->generation = generation;
        ref->entity = entry->address;
        received.settlement = ref;
        entry->unsettled.insert(d);
        auto lock = amqp::uuid_from_string(received.lock_token);
        if (entry->receiver.auto_renew_lock_for.count() > 0 && lock && received.locked_until) {
          entry->held[d] = {*lock, *received.locked_until, Clock::now(), false};
        }
      } else {
        pn_delivery_settle(d);
      }
      std::optional<LinkEntry::Waiter> waiter;
      std::vector<ReceivedMessage> handed;
      {
        std::lock_guard lock(mutex);
        entry->buffer.push_back(std::move(received));
        if (entry->waiter) {
          waiter.swap(entry->waiter);
          handed = entry->take(waiter->max);
        }
      }
      entry->arrived.notify_all();
      if (entry->receiver.prefetch > 0) top_up(*entry);
      if (waiter) waiter->callback(std::move(handed));
      return;
    }
    if (entry && pn_delivery_updated(d) && pn_delivery_settled(d)) {
      // Our settlement came back (rcv-settle-mode second): success, or why not.
      auto it = entry->in_flight.find(d);
      if (it == entry->in_flight.end()) return;
      std::exception_ptr error;
      if (pn_delivery_remote_state(d) == PN_REJECTED) {
        // The service settles a dead-letter with the same outcome; only a condition of its own
        // (lock lost, …) is a failure.
        auto* cond = pn_disposition_condition(pn_delivery_remote(d));
        auto name = text_of(pn_condition_get_name(cond));
        if (!name.empty() && name != "com.microsoft:dead-letter") {
          error = error_for(name, text_of(pn_condition_get_description(cond)));
        }
      }
      auto done = std::move(it->second);
      entry->in_flight.erase(it);
      entry->unsettled.erase(d);
      entry->held.erase(d);
      pn_delivery_settle(d);
      done(error);
    }
  }

  /// Keeps a prefetching receiver's credit + buffer at its prefetch count.
  void top_up(LinkEntry& entry) {
    if (entry.link == nullptr || entry.receiver.prefetch == 0) return;
    std::size_t buffered;
    {
      std::lock_guard lock(mutex);
      buffered = entry.buffer.size();
    }
    auto want = static_cast<int>(entry.receiver.prefetch) - pn_link_credit(entry.link) -
                static_cast<int>(buffered);
    if (want > 0) pn_link_flow(entry.link, want);
  }

  // ---- Operations (event thread) --------------------------------------------------------------

  /// Runs `f` when `entry` is attached (or fails `done` with the attach error).
  void when_ready(const std::shared_ptr<LinkEntry>& entry, std::function<void()> f, Done done) {
    if (entry->ready) return f();
    if (entry->attach_error && entry->link == nullptr && open) {
      auto error = entry->attach_error;
      entry->attach_error = nullptr;
      return done(error);
    }
    std::weak_ptr<LinkEntry> weak = entry;
    entry->when_ready.push_back([weak, f = std::move(f), done] {
      auto e = weak.lock();
      if (!e) return;
      if (e->ready) return f();
      auto error = e->attach_error;
      e->attach_error = nullptr;
      done(error ? error : connection_lost("the link could not be attached"));
    });
  }

  void management(
      const std::shared_ptr<LinkEntry>& entry, const std::string& operation, Value body,
      std::function<void(int, const std::string&, const std::string&, const Value&)> reply,
      Done fail) {
    when_ready(
        entry,
        [this, entry, operation, body = std::move(body), reply, fail] {
          auto id = amqp::to_string(amqp::random_uuid());
          std::vector<Value> properties(amqp::kPropertyFieldCount);
          properties[amqp::kMessageId] = Value::string(id);
          properties[amqp::kReplyTo] = Value::string(entry->reply_to);
          auto app = Value::map({{Value::string("operation"), Value::string(operation)}});
          requests[id] = [reply](const amqp::Message& m) {
            const auto* code = m.application_properties.find("statusCode");
            const auto* text = m.application_properties.find("statusDescription");
            const auto* condition = m.application_properties.find("errorCondition");
            reply(code != nullptr && code->is_integer() ? static_cast<int>(code->as_int64()) : -1,
                  text != nullptr && text->is_text() ? text->as_bytes() : "",
                  condition != nullptr && condition->is_text() ? condition->as_bytes() : "",
                  m.value_body.value_or(Value::null()));
          };
          auto bytes = amqp::encode_value_message(properties, app, body);
          std::weak_ptr<LinkEntry> weak = entry;
          auto done = [this, id, weak](std::exception_ptr error) {
            if (!error) return;  // accepted; the reply follows
            if (auto it = requests.find(id); it != requests.end()) {
              auto callback = std::move(it->second);
              requests.erase(it);
              amqp::Message failure;
              failure.application_properties =
                  Value::map({{Value::string("statusCode"), Value::int_(-1)},
                              {Value::string("statusDescription"),
                               Value::string("the request was not accepted")}});
              callback(failure);
            }
          };
          entry->backlog.emplace_back(std::move(bytes), std::move(done));
          on_flow(entry->link);
        },
        fail);
  }

  std::shared_ptr<LinkEntry> management_entry(const std::string& entity) {
    for (auto& l : links) {
      if (l->kind == LinkEntry::Kind::kManagement && l->address == entity) return l;
    }
    auto entry = std::make_shared<LinkEntry>();
    entry->kind = LinkEntry::Kind::kManagement;
    entry->address = entity;
    links.push_back(entry);
    attach(entry);
    return entry;
  }

  // ---- Blocking helpers (caller threads) -------------------------------------------------------

  template <typename T>
  T wait(std::future<T>& future, const std::string& what) {
    if (future.wait_for(options.operation_timeout) != std::future_status::ready) {
      throw TimeoutError("com.microsoft:timeout",
                         what + " did not finish within " +
                             std::to_string(options.operation_timeout.count()) + " ms",
                         true);
    }
    return future.get();
  }

  void close() {
    {
      std::lock_guard lock(mutex);
      if (closing) {
        if (thread.joinable() && std::this_thread::get_id() != thread.get_id()) thread.join();
        return;
      }
      closing = true;
      tasks.push_back([this] {
        for (auto& l : links) {
          if (l->link != nullptr) pn_link_close(l->link);
        }
        if (auto* c = current_connection()) pn_connection_close(c);
      });
    }
    pn_proactor_interrupt(proactor);
    if (thread.joinable()) thread.join();
    std::vector<LinkEntry::Waiter> waiting;
    {
      std::lock_guard lock(mutex);
      for (auto& l : links) {
        if (l->waiter) waiting.push_back(std::move(*l->waiter));
        l->waiter.reset();
      }
    }
    for (auto& w : waiting) w.callback({});  // Closed: nothing more will come.
    pn_proactor_free(proactor);
    proactor = nullptr;
    if (ssl_domain != nullptr) pn_ssl_domain_free(ssl_domain);
  }
};

// ---- Public API -------------------------------------------------------------------------------

struct Sender::Impl {
  std::shared_ptr<Client::Impl> client;
  std::shared_ptr<LinkEntry> entry;
  std::shared_ptr<LinkEntry> management;
};

struct Receiver::Impl {
  std::shared_ptr<Client::Impl> client;
  std::shared_ptr<LinkEntry> entry;
  std::shared_ptr<LinkEntry> management;
};

namespace {

template <typename T>
struct Shared {
  std::promise<T> promise;
  std::atomic<bool> done{false};
  void set(T value) {
    if (!done.exchange(true)) promise.set_value(std::move(value));
  }
  void fail(std::exception_ptr e) {
    if (!done.exchange(true)) promise.set_exception(e);
  }
};

template <>
struct Shared<void> {
  std::promise<void> promise;
  std::atomic<bool> done{false};
  void set() {
    if (!done.exchange(true)) promise.set_value();
  }
  void fail(std::exception_ptr e) {
    if (!done.exchange(true)) promise.set_exception(e);
  }
};

std::vector<ReceivedMessage> messages_of(const Value& body, bool with_locks) {
  std::vector<ReceivedMessage> out;
  const auto* list = body.find("messages");
  if (list == nullptr) return out;
  for (const auto& entry : list->items()) {
    const auto* bytes = entry.find("message");
    if (bytes == nullptr) continue;
    auto m = decode_received(amqp::parse_message(bytes->as_bytes()));
    if (const auto* lock = entry.find("lock-token");
        with_locks && lock && lock->type() == amqp::Type::kUuid) {
      m.lock_token = amqp::to_string(lock->as_uuid());
    }
    if (!with_locks) m.lock_token.clear();
    out.push_back(std::move(m));
  }
  return out;
}

Value sequence_array(const std::vector<std::int64_t>& numbers) {
  std::vector<Value> items;
  for (auto n : numbers) items.push_back(Value::long_(n));
  return Value::array(amqp::Type::kLong, std::move(items));
}

}  // namespace

Client::Client(std::string_view connection_string, ClientOptions options)
    : impl_(
          std::make_shared<Impl>(parse_connection_string(connection_string), std::move(options))) {
  impl_->start();
}

Client::~Client() { close(); }

void Client::close() {
  if (impl_) impl_->close();
}

ConnectionState Client::state() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->state;
}

namespace {

/// Registers a link with the client, attaches it and waits until it is ready (or refused).
std::shared_ptr<LinkEntry> attach_link(const std::shared_ptr<Client::Impl>& client,
                                       LinkEntry::Kind kind, const std::string& address,
                                       ReceiverOptions options) {
  auto entry = std::make_shared<LinkEntry>();
  entry->kind = kind;
  entry->address = address;
  entry->receiver = options;
  auto shared = std::make_shared<Shared<void>>();
  auto future = shared->promise.get_future();
  client->post([c = client.get(), entry, shared] {
    c->links.push_back(entry);
    c->attach(entry);
    c->when_ready(
        entry, [shared] { shared->set(); }, [shared](std::exception_ptr e) { shared->fail(e); });
  });
  client->wait(future, "attaching a link to " + address);
  return entry;
}

}  // namespace

Sender Client::create_sender(const std::string& entity) {
  auto impl = std::make_shared<Sender::Impl>();
  impl->client = impl_;
  impl->entry = attach_link(impl_, LinkEntry::Kind::kSender, entity, {});
  return Sender(std::move(impl));
}

Receiver Client::create_receiver(const std::string& entity_path, ReceiverOptions options) {
  auto impl = std::make_shared<Receiver::Impl>();
  impl->client = impl_;
  impl->entry = attach_link(impl_, LinkEntry::Kind::kReceiver, entity_path, options);
  return Receiver(std::move(impl));
}

const std::string& Sender::entity() const { return impl_->entry->address; }
const std::string& Receiver::entity_path() const { return impl_->entry->address; }

std::future<void> Sender::send_async(std::vector<Message> messages) {
  auto shared = std::make_shared<Shared<void>>();
  auto future = shared->promise.get_future();
  std::vector<std::string> encoded;
  for (const auto& m : messages) encoded.push_back(encode(m));
  impl_->client->post(
      [c = impl_->client.get(), entry = impl_->entry, encoded = std::move(encoded), shared] {
        auto remaining = std::make_shared<std::size_t>(encoded.size());
        if (encoded.empty()) return shared->set();
        c->when_ready(
            entry,
            [c, entry, encoded, shared, remaining] {
              for (const auto& bytes : encoded) {
                entry->backlog.emplace_back(bytes, [shared, remaining](std::exception_ptr e) {
                  if (e) return shared->fail(e);
                  if (--*remaining == 0) shared->set();
                });
              }
              c->on_flow(entry->link);
            },
            [shared](std::exception_ptr e) { shared->fail(e); });
      });
  return future;
}

void Sender::send(const Message& message) { send(std::vector<Message>{message}); }

void Sender::send(const std::vector<Message>& messages) {
  auto future = send_async(messages);
  impl_->client->wait(future, "sending to " + impl_->entry->address);
}

namespace {

/// Starts a $management operation; `done` gets the reply body, or the error of a failed status.
void start_management(Client::Impl& c, std::shared_ptr<LinkEntry>& entry, const std::string& entity,
                      const std::string& operation, Value body, bool none_ok,
                      std::function<void(std::exception_ptr, Value)> done) {
  c.post([&c, &entry, entity, operation, body = std::move(body), none_ok, done] {
    if (!entry) entry = c.management_entry(entity);
    c.management(
        entry, operation, body,
        [done, none_ok](int status, const std::string& text, const std::string& condition,
                        const Value& reply) {
          if (status == 200 || (none_ok && (status == 204 || status == 202))) {
            return done(nullptr, reply);
          }
          if (status == -1) return done(connection_lost(text), Value::null());
          done(error_for(condition, text, status), Value::null());
        },
        [done](std::exception_ptr e) { done(e, Value::null()); });
  });
}

std::future<Value> management_future(Client::Impl& c, std::shared_ptr<LinkEntry>& entry,
                                     const std::string& entity, const std::string& operation,
                                     Value body, bool none_ok = false) {
  auto shared = std::make_shared<Shared<Value>>();
  auto future = shared->promise.get_future();
  start_management(c, entry, entity, operation, std::move(body), none_ok,
                   [shared](std::exception_ptr e, Value reply) {
                     if (e) return shared->fail(e);
                     shared->set(std::move(reply));
                   });
  return future;
}

/// Runs a $management operation and waits for its reply; throws the error for a failed status.
Value run_management(Client::Impl& c, std::shared_ptr<LinkEntry>& entry, const std::string& entity,
                     const std::string& operation, Value body, bool none_ok = false) {
  auto future = management_future(c, entry, entity, operation, std::move(body), none_ok);
  return c.wait(future, operation + " on " + entity);
}

}  // namespace

std::vector<std::int64_t> Sender::schedule(const std::vector<Message>& messages,
                                           Clock::time_point at) {
  std::vector<Value> list;
  for (auto m : messages) {
    m.scheduled_enqueue_time = at;
    if (!m.message_id) m.message_id = amqp::to_string(amqp::random_uuid());
    list.push_back(Value::map({{Value::string("message"), Value::binary(encode(m))},
                               {Value::string("message-id"), Value::string(*m.message_id)}}));
  }
  auto reply = run_management(
      *impl_->client, impl_->management, impl_->entry->address, "com.microsoft:schedule-message",
      Value::map({{Value::string("messages"), Value::list(std::move(list))}}));
  std::vector<std::int64_t> numbers;
  if (const auto* n = reply.find("sequence-numbers")) {
    for (const auto& v : n->items()) numbers.push_back(v.as_int64());
  }
  return numbers;
}

void Sender::cancel_scheduled(const std::vector<std::int64_t>& sequence_numbers) {
  run_management(
      *impl_->client, impl_->management, impl_->entry->address,
      "com.microsoft:cancel-scheduled-message",
      Value::map({{Value::string("sequence-numbers"), sequence_array(sequence_numbers)}}));
}

std::future<std::vector<ReceivedMessage>> Receiver::receive_async(std::size_t max,
                                                                  milliseconds timeout) {
  return std::async(std::launch::async,
                    [impl = impl_, max, timeout] { return Receiver(impl).receive(max, timeout); });
}

namespace {

/// Grants credit for up to `max` messages on a receiver without prefetch (with prefetch the
/// credit is kept topped up anyway).
void grant(Client::Impl& c, const std::shared_ptr<LinkEntry>& entry, std::size_t max) {
  if (entry->receiver.prefetch != 0) return;
  c.post([&c, entry, max] {
    c.when_ready(
        entry,
        [&c, entry, max] {
          std::size_t buffered;
          {
            std::lock_guard lock(c.mutex);
            buffered = entry->buffer.size();
          }
          auto credit =
              static_cast<int>(max) - pn_link_credit(entry->link) - static_cast<int>(buffered);
          if (credit > 0) pn_link_flow(entry->link, credit);
        },
        [](std::exception_ptr) {});
  });
}

}  // namespace

std::vector<ReceivedMessage> Receiver::receive(std::size_t max, milliseconds timeout) {
  auto& c = *impl_->client;
  auto entry = impl_->entry;
  if (max == 0) return {};
  grant(c, entry, max);
  std::vector<ReceivedMessage> out;
  {
    std::unique_lock lock(c.mutex);
    entry->arrived.wait_for(lock, timeout, [&] { return !entry->buffer.empty(); });
    out = entry->take(max);
  }
  // Taking messages out of the buffer makes room for more: grant the credit.
  if (!out.empty() && entry->receiver.prefetch > 0) {
    c.post([&c, entry] { c.top_up(*entry); });
  }
  return out;
}

void Receiver::receive_async(std::size_t max, milliseconds timeout,
                             std::function<void(std::vector<ReceivedMessage>)> callback) {
  auto& c = *impl_->client;
  auto entry = impl_->entry;
  std::vector<ReceivedMessage> ready;
  bool waiting = false;
  {
    std::lock_guard lock(c.mutex);
    if (entry->waiter) {
      throw InvalidArgument("a receive_async callback is already waiting on " + entry->address);
    }
    ready = entry->take(max);
    if (ready.empty() && max > 0) {
      entry->waiter = LinkEntry::Waiter{max, Clock::now() + timeout, std::move(callback)};
      waiting = true;
    }
  }
  if (waiting) {
    grant(c, entry, max);
    return;
  }
  if (!ready.empty() && entry->receiver.prefetch > 0) {
    c.post([&c, entry] { c.top_up(*entry); });
  }
  callback(std::move(ready));
}

bool Receiver::cancel_receive_async() {
  auto& c = *impl_->client;
  std::lock_guard lock(c.mutex);
  bool pending = impl_->entry->waiter.has_value();
  impl_->entry->waiter.reset();
  return pending;
}

namespace {

Value disposition_request(const std::string& status, std::vector<Value> tokens,
                          const Value& annotations, const std::string& reason,
                          const std::string& description) {
  auto body = Value::map(
      {{Value::string("disposition-status"), Value::string(status)},
       {Value::string("lock-tokens"), Value::array(amqp::Type::kUuid, std::move(tokens))}});
  if (status == "suspended") {
    body.set(Value::string("deadletter-reason"), Value::string(reason));
    body.set(Value::string("deadletter-description"), Value::string(description));
  }
  if (annotations.type() == amqp::Type::kMap && annotations.map_size() > 0) {
    body.set(Value::string("properties-to-modify"), annotations);
  }
  return body;
}

std::string status_of(std::uint64_t outcome, bool undeliverable) {
  return outcome == PN_ACCEPTED   ? "completed"
         : outcome == PN_REJECTED ? "suspended"
         : undeliverable          ? "defered"
                                  : "abandoned";
}

std::future<void> settle_future(Receiver::Impl& r, const ReceivedMessage& message,
                                std::uint64_t outcome, const Value& annotations, bool undeliverable,
                                const std::string& reason, const std::string& description) {
  auto ref = std::static_pointer_cast<DeliveryRef>(message.settlement);
  if (!ref)
    throw InvalidArgument(
        "this message cannot be settled (received in receive-and-delete mode, or peeked)");
  auto& c = *r.client;
  auto shared = std::make_shared<Shared<void>>();
  auto future = shared->promise.get_future();
  if (ref->lock) {
    // Fetched by sequence number: settle over $management.
    start_management(
        c, r.management, r.entry->address, "com.microsoft:update-disposition",
        disposition_request(status_of(outcome, undeliverable), {Value::uuid(*ref->lock)},
                            annotations, reason, description),
        false, [shared](std::exception_ptr e, const Value&) {
          if (e) return shared->fail(e);
          shared->set();
        });
    return future;
  }
  c.post([&c, ref, outcome, annotations, undeliverable, reason, description, shared] {
    auto entry = ref->link.lock();
    if (!entry || ref->generation != c.generation || entry->link == nullptr ||
        entry->unsettled.count(ref->delivery) == 0) {
      return shared->fail(std::make_exception_ptr(LockLostError(
          "com.microsoft:message-lock-lost",
          "the link that received this message is gone (connection or link lost), so its lock is "
          "too; the message will be delivered again",
          false)));
    }
    auto* d = ref->delivery;
    auto* local = pn_delivery_local(d);
    if (outcome == PN_MODIFIED) {
      pn_disposition_set_failed(local, false);
      pn_disposition_set_undeliverable(local, undeliverable);
      if (annotations.type() == amqp::Type::kMap && annotations.map_size() > 0) {
        amqp::write_data(pn_disposition_annotations(local), annotations);
      }
    } else if (outcome == PN_REJECTED) {
      auto* cond = pn_disposition_condition(local);
      pn_condition_set_name(cond, "com.microsoft:dead-letter");
      pn_condition_set_description(cond, description.c_str());
      amqp::write_data(
          pn_condition_info(cond),
          Value::map({{Value::symbol("DeadLetterReason"), Value::string(reason)},
                      {Value::symbol("DeadLetterErrorDescription"), Value::string(description)}}));
    }
    pn_delivery_update(d, outcome);
    entry->in_flight[d] = [shared](std::exception_ptr e) {
      if (e) return shared->fail(e);
      shared->set();
    };
  });
  return future;
}

void settle(Receiver::Impl& r, const ReceivedMessage& message, std::uint64_t outcome,
            const Value& annotations, bool undeliverable, const std::string& reason,
            const std::string& description) {
  auto future = settle_future(r, message, outcome, annotations, undeliverable, reason, description);
  r.client->wait(future, "settling message " + std::to_string(message.sequence_number));
}

Value to_annotations(const std::map<std::string, PropertyValue>& properties) {
  return properties.empty() ? Value::null() : property_map(properties);
}

}  // namespace

void Receiver::complete(const ReceivedMessage& m) {
  settle(*impl_, m, PN_ACCEPTED, Value::null(), false, "", "");
}
void Receiver::abandon(const ReceivedMessage& m, const std::map<std::string, PropertyValue>& p) {
  settle(*impl_, m, PN_MODIFIED, to_annotations(p), false, "", "");
}
void Receiver::defer(const ReceivedMessage& m, const std::map<std::string, PropertyValue>& p) {
  settle(*impl_, m, PN_MODIFIED, to_annotations(p), true, "", "");
}
void Receiver::dead_letter(const ReceivedMessage& m, const std::string& reason,
                           const std::string& description) {
  settle(*impl_, m, PN_REJECTED, Value::null(), false, reason, description);
}

std::future<void> Receiver::complete_async(const ReceivedMessage& m) {
  return settle_future(*impl_, m, PN_ACCEPTED, Value::null(), false, "", "");
}
std::future<void> Receiver::abandon_async(const ReceivedMessage& m) {
  return settle_future(*impl_, m, PN_MODIFIED, Value::null(), false, "", "");
}
std::future<void> Receiver::defer_async(const ReceivedMessage& m) {
  return settle_future(*impl_, m, PN_MODIFIED, Value::null(), true, "", "");
}
std::future<void> Receiver::dead_letter_async(const ReceivedMessage& m, const std::string& reason,
                                              const std::string& description) {
  return settle_future(*impl_, m, PN_REJECTED, Value::null(), false, reason, description);
}

void Receiver::settle_deferred(const std::vector<ReceivedMessage>& messages,
                               Disposition disposition, const std::string& reason,
                               const std::string& description) {
  std::vector<Value> tokens;
  for (const auto& m : messages) {
    auto token = amqp::uuid_from_string(m.lock_token);
    if (!token)
      throw InvalidArgument("message " + std::to_string(m.sequence_number) + " holds no lock");
    tokens.push_back(Value::uuid(*token));
  }
  if (tokens.empty()) return;
  static const char* kStatus[] = {"completed", "abandoned", "defered", "suspended"};
  run_management(*impl_->client, impl_->management, impl_->entry->address,
                 "com.microsoft:update-disposition",
                 disposition_request(kStatus[static_cast<int>(disposition)], std::move(tokens),
                                     Value::null(), reason, description));
}

Clock::time_point Receiver::renew_lock(const ReceivedMessage& m) {
  auto token = amqp::uuid_from_string(m.lock_token);
  if (!token) throw InvalidArgument("this message holds no lock");
  auto reply = run_management(
      *impl_->client, impl_->management, impl_->entry->address, "com.microsoft:renew-lock",
      Value::map({{Value::string("lock-tokens"),
                   Value::array(amqp::Type::kUuid, {Value::uuid(*token)})}}));
  const auto* expirations = reply.find("expirations");
  if (expirations == nullptr || expirations->items().empty()) {
    throw ServiceBusError("", "renew-lock returned no expiry", false);
  }
  return from_ms(expirations->items().front().as_timestamp());
}

std::vector<ReceivedMessage> Receiver::receive_deferred(const std::vector<std::int64_t>& numbers) {
  bool peek_lock = impl_->entry->receiver.mode == ReceiveMode::kPeekLock;
  auto reply = run_management(
      *impl_->client, impl_->management, impl_->entry->address,
      "com.microsoft:receive-by-sequence-number",
      Value::map({{Value::string("sequence-numbers"), sequence_array(numbers)},
                  {Value::string("receiver-settle-mode"), Value::uint(peek_lock ? 1 : 0)}}));
  auto messages = messages_of(reply, peek_lock);
  for (auto& m : messages) {
    if (m.lock_token.empty()) continue;
    auto ref = std::make_shared<DeliveryRef>();
    ref->entity = impl_->entry->address;
    ref->lock = amqp::uuid_from_string(m.lock_token);
    m.settlement = ref;
  }
  return messages;
}

void Receiver::complete_deferred(const std::vector<ReceivedMessage>& messages) {
  settle_deferred(messages, Disposition::kComplete);
}

std::vector<ReceivedMessage> Receiver::peek(std::int64_t from, std::size_t count) {
  auto reply = run_management(
      *impl_->client, impl_->management, impl_->entry->address, "com.microsoft:peek-message",
      Value::map({{Value::string("from-sequence-number"), Value::long_(from)},
                  {Value::string("message-count"), Value::int_(static_cast<std::int32_t>(count))}}),
      true);
  return messages_of(reply, false);
}

}  // namespace metro::sb

namespace metro::sb {

struct Subscription::State {
  std::atomic<bool> stopping{false};
  std::thread thread;
};

void Subscription::stop() {
  if (!state_) return;
  state_->stopping = true;
  if (state_->thread.joinable() && state_->thread.get_id() != std::this_thread::get_id()) {
    state_->thread.join();
  }
  state_.reset();
}

Subscription Receiver::subscribe(std::function<void(ReceivedMessage&)> handler, std::size_t batch) {
  Subscription subscription;
  subscription.state_ = std::make_shared<Subscription::State>();
  subscription.state_->thread = std::thread(
      [impl = impl_, state = subscription.state_.get(), handler = std::move(handler), batch] {
        Receiver receiver(impl);
        while (!state->stopping) {
          std::vector<ReceivedMessage> got;
          try {
            got = receiver.receive(batch, std::chrono::milliseconds(200));
          } catch (const Error&) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));  // reconnecting
            continue;
          }
          for (auto& m : got) handler(m);
        }
      });
  return subscription;
}

void Receiver::add_sql_rule(const std::string& name, const std::string& expression) {
  auto description =
      Value::map({{Value::string("sql-filter"),
                   Value::map({{Value::string("expression"), Value::string(expression)}})}});
  run_management(*impl_->client, impl_->management, impl_->entry->address, "com.microsoft:add-rule",
                 Value::map({{Value::string("rule-name"), Value::string(name)},
                             {Value::string("rule-description"), description}}));
}

void Receiver::add_correlation_rule(const std::string& name, const RuleInfo& filter) {
  auto opt = [](const std::optional<std::string>& v) {
    return v ? Value::string(*v) : Value::null();
  };
  auto correlation = Value::map({{Value::string("correlation-id"), opt(filter.correlation_id)},
                                 {Value::string("label"), opt(filter.label)},
                                 {Value::string("properties"), property_map(filter.properties)}});
  run_management(*impl_->client, impl_->management, impl_->entry->address, "com.microsoft:add-rule",
                 Value::map({{Value::string("rule-name"), Value::string(name)},
                             {Value::string("rule-description"),
                              Value::map({{Value::string("correlation-filter"), correlation}})}}));
}

void Receiver::remove_rule(const std::string& name) {
  run_management(*impl_->client, impl_->management, impl_->entry->address,
                 "com.microsoft:remove-rule",
                 Value::map({{Value::string("rule-name"), Value::string(name)}}));
}

std::vector<RuleInfo> Receiver::rules() {
  auto reply = run_management(*impl_->client, impl_->management, impl_->entry->address,
                              "com.microsoft:enumerate-rules",
                              Value::map({{Value::string("top"), Value::int_(1 << 30)},
                                          {Value::string("skip"), Value::int_(0)}}),
                              true);
  std::vector<RuleInfo> out;
  const auto* rules = reply.find("rules");
  if (rules == nullptr) return out;
  for (const auto& entry : rules->items()) {
    const auto* d = entry.find("rule-description");
    if (d == nullptr || d->type() != amqp::Type::kDescribed) continue;
    const auto& fields = d->described_value().items();
    RuleInfo info;
    if (fields.size() > 2 && fields[2].is_text()) info.name = fields[2].as_bytes();
    if (!fields.empty() && fields[0].type() == amqp::Type::kDescribed) {
      auto code = fields[0].descriptor().as_uint64();
      const auto& f = fields[0].described_value().items();
      if (code == 0x0000001370000009ULL) {  // correlation filter
        if (f.size() > 0 && f[0].is_text()) info.correlation_id = f[0].as_bytes();
        if (f.size() > 4 && f[4].is_text()) info.label = f[4].as_bytes();
        if (f.size() > 8 && f[8].type() == amqp::Type::kMap) {
          for (std::size_t i = 0; i < f[8].map_size(); ++i) {
            if (f[8].map_key(i).is_text()) {
              info.properties[f[8].map_key(i).as_bytes()] = to_property(f[8].map_value(i));
            }
          }
        }
      } else if (!f.empty() && f[0].is_text()) {
        info.sql = f[0].as_bytes();
      }
    }
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace metro::sb
