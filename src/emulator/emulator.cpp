// The emulator's AMQP server: one Proton proactor thread drives every connection and the broker.

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/listener.h>
#include <proton/netaddr.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <spdlog/spdlog.h>

#include <metro/emulator/emulator.hpp>
#include <metro/sb/sas.hpp>

#include "../amqp/message.hpp"
#include "../amqp/value_pn.hpp"
#include "broker.hpp"
#include "journal.hpp"
#include "management.hpp"
#include "tls.hpp"

namespace metro::emulator {
namespace {

using amqp::Value;

constexpr int kCreditWindow = 500;
constexpr std::uint64_t kMaxMessageSize = 1024 * 1024;
constexpr pn_millis_t kTickMs = 50;

std::string text_of(const char* s) { return s == nullptr ? std::string() : std::string(s); }

bool ends_with_ci(const std::string& s, std::string_view suffix) {
  if (s.size() < suffix.size()) return false;
  for (std::size_t i = 0; i < suffix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[s.size() - suffix.size() + i])) !=
        std::tolower(static_cast<unsigned char>(suffix[i]))) {
      return false;
    }
  }
  return true;
}

enum class LinkKind {
  kCbsIn,          // client -> $cbs (requests)
  kCbsOut,         // $cbs -> client (replies)
  kManagementIn,   // client -> <entity>/$management
  kManagementOut,  // <entity>/$management -> client
  kEntityIn,       // client sends to a queue or topic
  kEntityOut,      // client receives from a queue, subscription or dead-letter queue
  kRefused,
};

struct LinkState {
  LinkKind kind = LinkKind::kRefused;
  std::uint64_t id = 0;
  Entity* entity = nullptr;
  bool peek_lock = true;
  std::string target;               // for outgoing reply links: the client's address (reply-to)
  std::string buffer;               // partial incoming transfer
  std::deque<std::string> pending;  // replies waiting for credit
  std::uint64_t tag = 0;
};

struct DeliveryState {
  Entity* entity;
  amqp::Uuid lock;
};

struct ConnectionState {
  std::uint64_t id = 0;
  std::map<std::string, TimeMs> audiences;  // normalised path -> token expiry
  bool drop = false;
};

class Server {
 public:
  Server(EmulatorOptions options) : options_(std::move(options)), broker_(options_.bus) {}
  ~Server() { stop(); }

  void start();
  void stop();
  std::uint16_t port() const { return port_; }
  std::optional<std::uint16_t> tls_port() const { return tls_port_; }
  std::filesystem::path certificate_file() const { return certificate_; }

  /// Runs `task` on the event thread and waits for it.
  template <typename F>
  auto call(F&& task) -> decltype(task()) {
    using R = decltype(task());
    std::packaged_task<R()> packaged(std::forward<F>(task));
    auto future = packaged.get_future();
    {
      std::lock_guard lock(mutex_);
      if (!running_) throw Error("the emulator is not running");
      tasks_.emplace_back([&packaged] { packaged(); });
    }
    pn_proactor_interrupt(proactor_);
    return future.get();
  }

  Broker& broker() { return broker_; }
  /// Marks every connection to be dropped; returns how many.
  std::size_t drop_all_connections();
  std::size_t dropping() const { return dropping_; }

 private:
  void run();
  bool handle(pn_event_t* event);
  void on_accept(pn_listener_t* listener);
  void on_link_open(pn_link_t* link);
  void on_delivery(pn_delivery_t* delivery);
  void on_incoming(pn_link_t* link, LinkState& state, pn_delivery_t* delivery);
  void on_settlement(pn_link_t* link, pn_delivery_t* delivery);
  void on_link_closed(pn_link_t* link);
  void on_cbs_request(pn_link_t* link, const amqp::Message& request);
  void on_management_request(pn_link_t* link, LinkState& state, const amqp::Message& request);
  void reply(pn_link_t* request_link, const amqp::Message& request, Value app_properties,
             Value body);
  void send_pending(pn_link_t* link, LinkState& state);
  void pump(pn_link_t* link, LinkState& state);
  void pump_connection(pn_connection_t* connection);
  void wake_receivers();
  void refuse(pn_link_t* link, const char* condition, const std::string& description);
  bool authorized(pn_connection_t* connection, const std::string& path);
  void release_link(pn_link_t* link);
  void run_tasks();

  LinkState* state_of(pn_link_t* link) {
    return static_cast<LinkState*>(pn_link_get_context(link));
  }
  ConnectionState* state_of(pn_connection_t* c) {
    return static_cast<ConnectionState*>(pn_connection_get_context(c));
  }

  EmulatorOptions options_;
  Broker broker_;
  std::unique_ptr<Journal> journal_;
  pn_proactor_t* proactor_ = nullptr;
  pn_ssl_domain_t* ssl_domain_ = nullptr;
  pn_listener_t* plain_listener_ = nullptr;
  pn_listener_t* tls_listener_ = nullptr;
  std::uint16_t port_ = 0;
  std::optional<std::uint16_t> tls_port_;
  std::filesystem::path certificate_;
  std::thread thread_;
  std::mutex mutex_;
  std::deque<std::function<void()>> tasks_;
  bool running_ = false;
  std::atomic<bool> stopping_{false};  // read by the event thread without the mutex
  std::uint64_t next_id_ = 1;
  std::set<pn_connection_t*> connections_;
  std::size_t dropping_ = 0;  // connections marked to drop whose transport has not closed yet
  int listeners_pending_ = 0;
  std::promise<void> listening_;
  std::string listen_error_;
};

std::uint16_t bound_port(pn_listener_t* listener) {
  char port[PN_MAX_ADDR];
  pn_netaddr_host_port(pn_listener_addr(listener), nullptr, 0, port, sizeof(port));
  return static_cast<std::uint16_t>(std::stoi(port));
}

void Server::start() {
  if (!options_.data_dir.empty()) {
    journal_ = std::make_unique<Journal>(options_.data_dir);
    broker_.restore(*journal_, now_ms());
  }
  proactor_ = pn_proactor();
  if (options_.tls_port) {
    certificate_ = options_.certificate_file;
    auto key = options_.private_key_file;
    if (certificate_.empty()) {
      auto dir = options_.data_dir.empty()
                     ? std::filesystem::temp_directory_path() / "metro-emulator"
                     : options_.data_dir;
      auto generated = generate_self_signed_certificate(dir);
      certificate_ = generated.certificate;
      key = generated.private_key;
    }
    ssl_domain_ = pn_ssl_domain(PN_SSL_MODE_SERVER);
    if (pn_ssl_domain_set_credentials(ssl_domain_, certificate_.c_str(), key.c_str(), nullptr) !=
        0) {
      throw Error("cannot load the TLS certificate " + certificate_.string() + " and key " +
                  key.string());
    }
  }
  auto listen = [&](std::uint16_t port, bool tls) {
    char addr[PN_MAX_ADDR];
    pn_proactor_addr(addr, sizeof(addr), options_.host.c_str(), std::to_string(port).c_str());
    auto* listener = pn_listener();
    pn_listener_set_context(listener, tls ? this : nullptr);
    pn_proactor_listen(proactor_, listener, addr, 64);
    ++listeners_pending_;
    return listener;
  };
  plain_listener_ = listen(options_.port, false);
  if (options_.tls_port) tls_listener_ = listen(*options_.tls_port, true);
  {
    std::lock_guard lock(mutex_);
    running_ = true;
  }
  auto listening = listening_.get_future();
  thread_ = std::thread([this] { run(); });
  listening.wait();
  if (!listen_error_.empty()) {
    stop();
    throw Error(listen_error_);
  }
  pn_proactor_set_timeout(proactor_, kTickMs);
}

void Server::stop() {
  {
    std::lock_guard lock(mutex_);
    if (!running_) {
      if (thread_.joinable()) thread_.join();
      return;
    }
    running_ = false;
    stopping_ = true;
  }
  pn_proactor_interrupt(proactor_);
  if (thread_.joinable()) thread_.join();
  pn_proactor_free(proactor_);
  proactor_ = nullptr;
  if (ssl_domain_ != nullptr) pn_ssl_domain_free(ssl_domain_);
  ssl_domain_ = nullptr;
}

void Server::run() {
  bool done = false;
  while (!done) {
    auto* batch = pn_proactor_wait(proactor_);
    while (auto* event = pn_event_batch_next(batch)) {
      if (!handle(event)) done = true;
    }
    // Store the batch's changes before its acknowledgements go out.
    if (journal_) {
      try {
        broker_.flush(*journal_);
      } catch (const Error& e) {
        spdlog::critical("emulator: {}", e.what());
      }
    }
    pn_proactor_done(proactor_, batch);
  }
}

void Server::run_tasks() {
  std::deque<std::function<void()>> tasks;
  {
    std::lock_guard lock(mutex_);
    tasks.swap(tasks_);
  }
  for (auto& t : tasks) t();
}

bool Server::handle(pn_event_t* event) {
  switch (pn_event_type(event)) {
    case PN_LISTENER_OPEN: {
      auto* listener = pn_event_listener(event);
      auto port = bound_port(listener);
      if (listener == plain_listener_) {
        port_ = port;
      } else {
        tls_port_ = port;
      }
      if (--listeners_pending_ == 0) listening_.set_value();
      break;
    }
    case PN_LISTENER_CLOSE: {
      auto* condition = pn_listener_condition(pn_event_listener(event));
      if (pn_condition_is_set(condition) && listeners_pending_ > 0) {
        listen_error_ = std::string("cannot listen on ") + options_.host + ": " +
                        text_of(pn_condition_get_description(condition));
        listeners_pending_ = 0;
        listening_.set_value();
      }
      break;
    }
    case PN_LISTENER_ACCEPT:
      on_accept(pn_event_listener(event));
      break;
    case PN_CONNECTION_INIT: {
      auto* c = pn_event_connection(event);
      auto* state = new ConnectionState;
      state->id = next_id_++;
      pn_connection_set_context(c, state);
      pn_connection_set_container(c, "metro-emulator");
      connections_.insert(c);
      break;
    }
    case PN_CONNECTION_REMOTE_OPEN: {
      auto* c = pn_event_connection(event);
      pn_connection_set_hostname(c, pn_connection_remote_hostname(c));
      pn_connection_open(c);
      break;
    }
    case PN_CONNECTION_REMOTE_CLOSE: {
      auto* c = pn_event_connection(event);
      pn_connection_close(c);
      break;
    }
    case PN_CONNECTION_WAKE: {
      auto* c = pn_event_connection(event);
      auto* state = state_of(c);
      if (state != nullptr && state->drop) {
        auto* t = pn_connection_transport(c);
        pn_transport_close_tail(t);
        pn_transport_close_head(t);
        break;
      }
      pump_connection(c);
      break;
    }
    case PN_TRANSPORT_CLOSED: {
      // The proactor frees the connection after this batch: forget it and its links now.
      auto* c = pn_event_connection(event);
      if (c == nullptr) break;
      for (auto* l = pn_link_head(c, 0); l != nullptr; l = pn_link_next(l, 0)) {
        release_link(l);
        delete state_of(l);
        pn_link_set_context(l, nullptr);
      }
      connections_.erase(c);
      if (state_of(c)->drop) --dropping_;
      delete state_of(c);
      pn_connection_set_context(c, nullptr);
      wake_receivers();
      break;
    }
    case PN_SESSION_REMOTE_OPEN:
      pn_session_open(pn_event_session(event));
      break;
    case PN_SESSION_REMOTE_CLOSE:
      pn_session_close(pn_event_session(event));
      break;
    case PN_LINK_REMOTE_OPEN:
      on_link_open(pn_event_link(event));
      break;
    case PN_LINK_REMOTE_CLOSE: {
      auto* link = pn_event_link(event);
      release_link(link);
      pn_link_close(link);
      wake_receivers();
      break;
    }
    case PN_LINK_FINAL: {
      auto* link = pn_event_link(event);
      delete state_of(link);
      pn_link_set_context(link, nullptr);
      break;
    }
    case PN_LINK_FLOW: {
      auto* link = pn_event_link(event);
      if (auto* state = state_of(link); state != nullptr && pn_link_is_sender(link)) {
        if (state->kind == LinkKind::kEntityOut) {
          pump(link, *state);
        } else {
          send_pending(link, *state);
        }
      }
      break;
    }
    case PN_DELIVERY:
      on_delivery(pn_event_delivery(event));
      break;
    case PN_PROACTOR_TIMEOUT: {
      if (broker_.tick(now_ms())) wake_receivers();
      if (!stopping_) pn_proactor_set_timeout(proactor_, kTickMs);
      break;
    }
    case PN_PROACTOR_INTERRUPT: {
      run_tasks();
      wake_receivers();
      bool stopping;
      {
        std::lock_guard lock(mutex_);
        stopping = stopping_;
      }
      if (stopping) {
        pn_proactor_cancel_timeout(proactor_);
        pn_proactor_disconnect(proactor_, nullptr);
      }
      break;
    }
    case PN_PROACTOR_INACTIVE:
      return !stopping_;
    default:
      break;
  }
  return true;
}

void Server::on_accept(pn_listener_t* listener) {
  auto* transport = pn_transport();
  pn_transport_set_server(transport);
  auto* sasl = pn_sasl(transport);
  install_sasl(transport);
  pn_sasl_allowed_mechs(sasl, "ANONYMOUS PLAIN MSSBCBS");
  pn_transport_require_auth(transport, false);
  if (pn_listener_get_context(listener) != nullptr && ssl_domain_ != nullptr) {
    pn_ssl_init(pn_ssl(transport), ssl_domain_, nullptr);
  }
  pn_transport_set_idle_timeout(transport, 120000);
  pn_listener_accept2(listener, nullptr, transport);
}

void Server::refuse(pn_link_t* link, const char* condition, const std::string& description) {
  auto* state = new LinkState;
  state->kind = LinkKind::kRefused;
  pn_link_set_context(link, state);
  // Service Bus answers with a null terminus, then detaches with the error.
  pn_link_open(link);
  pn_condition_set_name(pn_link_condition(link), condition);
  pn_condition_set_description(pn_link_condition(link), description.c_str());
  pn_link_close(link);
  spdlog::debug("emulator: refused link {}: {}", text_of(pn_link_name(link)), description);
}

bool Server::authorized(pn_connection_t* connection, const std::string& path) {
  auto* state = state_of(connection);
  if (state == nullptr) return false;
  auto now = now_ms();
  for (const auto& [audience, expiry] : state->audiences) {
    if (expiry <= now) continue;
    if (audience.empty() || audience == path ||
        (path.size() > audience.size() && path.compare(0, audience.size(), audience) == 0 &&
         path[audience.size()] == '/')) {
      return true;
    }
  }
  return false;
}

void Server::on_link_open(pn_link_t* link) {
  bool client_sends = pn_link_is_receiver(link);
  auto* remote = client_sends ? pn_link_remote_target(link) : pn_link_remote_source(link);
  std::string address = text_of(pn_terminus_get_address(remote));
  auto path = normalize_address(address);
  auto* connection = pn_session_connection(pn_link_session(link));

  auto state = std::make_unique<LinkState>();
  state->id = next_id_++;
  if (path == "$cbs") {
    state->kind = client_sends ? LinkKind::kCbsIn : LinkKind::kCbsOut;
  } else if (ends_with_ci(path, "/$management")) {
    auto entity_path = path.substr(0, path.size() - std::string_view("/$management").size());
    auto* entity = broker_.find(entity_path);
    if (entity == nullptr) {
      return refuse(link, "amqp:not-found",
                    "The messaging entity '" + entity_path + "' could not be found.");
    }
    if (!authorized(connection, path)) {
      return refuse(link, "amqp:unauthorized-access",
                    "Unauthorized access to '" + path +
                        "': put a valid SAS token for it on $cbs before attaching.");
    }
    state->kind = client_sends ? LinkKind::kManagementIn : LinkKind::kManagementOut;
    state->entity = entity;
  } else {
    auto* entity = broker_.find(path);
    if (entity == nullptr) {
      return refuse(link, "amqp:not-found",
                    "The messaging entity '" + address + "' could not be found.");
    }
    if (!authorized(connection, path)) {
      return refuse(link, "amqp:unauthorized-access",
                    "Unauthorized access to '" + address +
                        "': put a valid SAS token for it on $cbs before attaching.");
    }
    if (client_sends && entity->kind() != Entity::Kind::kQueue &&
        entity->kind() != Entity::Kind::kTopic) {
      return refuse(link, "amqp:not-allowed",
                    "'" + address + "' cannot be sent to; send to its topic or queue.");
    }
    if (!client_sends && !entity->receivable()) {
      return refuse(link, "amqp:not-allowed",
                    "'" + address +
                        "' is a topic; receive from one of its subscriptions "
                        "(<topic>/Subscriptions/<name>).");
    }
    state->kind = client_sends ? LinkKind::kEntityIn : LinkKind::kEntityOut;
    state->entity = entity;
    if (!client_sends) {
      state->peek_lock = pn_link_remote_snd_settle_mode(link) != PN_SND_SETTLED;
    }
  }
  if (!client_sends) {
    state->target = text_of(pn_terminus_get_address(pn_link_remote_target(link)));
  }
  // Echo the client's termini verbatim (Python compares the echoed source with its own).
  pn_terminus_copy(pn_link_source(link), pn_link_remote_source(link));
  pn_terminus_copy(pn_link_target(link), pn_link_remote_target(link));
  pn_link_set_snd_settle_mode(link, pn_link_remote_snd_settle_mode(link));
  pn_link_set_rcv_settle_mode(link, pn_link_remote_rcv_settle_mode(link));
  pn_link_set_max_message_size(link, kMaxMessageSize);
  auto* raw = state.release();
  pn_link_set_context(link, raw);
  pn_link_open(link);
  if (client_sends) pn_link_flow(link, kCreditWindow);
}

void Server::on_delivery(pn_delivery_t* delivery) {
  auto* link = pn_delivery_link(delivery);
  auto* state = state_of(link);
  if (state == nullptr) return;
  if (pn_link_is_receiver(link)) {
    on_incoming(link, *state, delivery);
  } else if (pn_delivery_updated(delivery)) {
    on_settlement(link, delivery);
  }
}

namespace {

void settle_with_error(pn_delivery_t* d, const std::string& condition,
                       const std::string& description) {
  auto* local = pn_delivery_local(d);
  auto* c = pn_disposition_condition(local);
  pn_condition_set_name(c, condition.c_str());
  pn_condition_set_description(c, description.c_str());
  pn_delivery_update(d, PN_REJECTED);
  pn_delivery_settle(d);
}

}  // namespace

void Server::on_incoming(pn_link_t* link, LinkState& state, pn_delivery_t* delivery) {
  if (!pn_delivery_readable(delivery)) return;
  auto pending = pn_delivery_pending(delivery);
  auto offset = state.buffer.size();
  state.buffer.resize(offset + pending);
  auto n = pn_link_recv(link, state.buffer.data() + offset, pending);
  if (n == PN_ABORTED) {
    state.buffer.clear();
    pn_delivery_settle(delivery);
    pn_link_flow(link, kCreditWindow - pn_link_credit(link));
    return;
  }
  state.buffer.resize(offset + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
  if (pn_delivery_partial(delivery)) return;
  std::string bytes;
  bytes.swap(state.buffer);
  pn_link_advance(link);
  pn_link_flow(link, kCreditWindow - pn_link_credit(link));

  amqp::Message message;
  try {
    message = amqp::parse_message(bytes);
  } catch (const Error& e) {
    settle_with_error(delivery, "amqp:decode-error",
                      std::string("The message could not be decoded: ") + e.what());
    return;
  }
  switch (state.kind) {
    case LinkKind::kCbsIn:
      pn_delivery_update(delivery, PN_ACCEPTED);
      pn_delivery_settle(delivery);
      on_cbs_request(link, message);
      return;
    case LinkKind::kManagementIn:
      pn_delivery_update(delivery, PN_ACCEPTED);
      pn_delivery_settle(delivery);
      on_management_request(link, state, message);
      return;
    case LinkKind::kEntityIn: {
      std::vector<amqp::Message> messages;
      // A batch (message-format 0x80013700): every data section holds one encoded message.
      bool batch =
          !message.data_sections.empty() && !message.value_body &&
          std::all_of(message.data_sections.begin(), message.data_sections.end(),
                      [](const std::string& d) { return amqp::looks_like_encoded_message(d); });
      try {
        if (batch) {
          for (const auto& d : message.data_sections) messages.push_back(amqp::parse_message(d));
        } else {
          messages.push_back(std::move(message));
        }
      } catch (const Error& e) {
        settle_with_error(delivery, "amqp:decode-error", e.what());
        return;
      }
      broker_.send(*state.entity, std::move(messages), now_ms());
      pn_delivery_update(delivery, PN_ACCEPTED);
      pn_delivery_settle(delivery);
      wake_receivers();
      return;
    }
    default:
      settle_with_error(delivery, "amqp:not-allowed", "This link does not take messages.");
  }
}

void Server::on_settlement(pn_link_t* link, pn_delivery_t* delivery) {
  auto* ds = static_cast<DeliveryState*>(pn_delivery_get_context(delivery));
  if (ds == nullptr) {
    if (pn_delivery_remote_state(delivery) != 0 || pn_delivery_settled(delivery)) {
      pn_delivery_settle(delivery);
    }
    return;
  }
  auto outcome = pn_delivery_remote_state(delivery);
  if (outcome == 0 && !pn_delivery_settled(delivery)) return;  // Nothing decided yet.
  auto* remote = pn_delivery_remote(delivery);
  auto now = now_ms();
  std::optional<Failure> failure;
  Entity& entity = *ds->entity;
  switch (outcome) {
    case PN_ACCEPTED:
      failure = broker_.complete(entity, ds->lock, now);
      break;
    case PN_REJECTED: {
      auto* condition = pn_disposition_condition(remote);
      Value info = amqp::read_data(pn_condition_info(condition));
      std::string reason;
      std::string description = text_of(pn_condition_get_description(condition));
      Value properties = Value::map({});
      if (info.type() == amqp::Type::kMap) {
        for (std::size_t i = 0; i < info.map_size(); ++i) {
          const auto& key = info.map_key(i);
          const auto& value = info.map_value(i);
          if (!key.is_text()) continue;
          if (key.as_bytes() == "DeadLetterReason") {
            if (value.is_text()) reason = value.as_bytes();
          } else if (key.as_bytes() == "DeadLetterErrorDescription") {
            if (value.is_text()) description = value.as_bytes();
          } else {
            properties.set(Value::string(key.as_bytes()), value);
          }
        }
      }
      failure = broker_.dead_letter(entity, ds->lock, reason, description, properties, now);
      break;
    }
    case PN_RELEASED:
      failure = broker_.release(entity, ds->lock, now);
      break;
    case PN_MODIFIED: {
      Value annotations = amqp::read_data(pn_disposition_annotations(remote));
      if (pn_disposition_is_undeliverable(remote)) {
        failure = broker_.defer(entity, ds->lock, annotations, now);
      } else {
        failure = broker_.abandon(entity, ds->lock, annotations, now);
      }
      break;
    }
    default:
      // Settled without an outcome: treat as released.
      failure = broker_.release(entity, ds->lock, now);
      break;
  }
  delete ds;
  pn_delivery_set_context(delivery, nullptr);
  if (!pn_delivery_settled(delivery)) {
    if (failure) {
      settle_with_error(delivery, failure->condition, failure->description);
    } else {
      pn_delivery_update(delivery, outcome);
      pn_delivery_settle(delivery);
    }
  } else {
    pn_delivery_settle(delivery);
  }
  if (outcome != PN_ACCEPTED) wake_receivers();
  (void)link;
}

void Server::release_link(pn_link_t* link) {
  auto* state = state_of(link);
  if (state == nullptr || state->kind != LinkKind::kEntityOut) return;
  // Locks held through this link are abandoned, as when a receiver goes away.
  for (auto* d = pn_unsettled_head(link); d != nullptr; d = pn_unsettled_next(d)) {
    if (auto* ds = static_cast<DeliveryState*>(pn_delivery_get_context(d))) {
      delete ds;
      pn_delivery_set_context(d, nullptr);
    }
  }
  broker_.drop_owner(state->id, now_ms());
  state->kind = LinkKind::kRefused;
}

void Server::pump(pn_link_t* link, LinkState& state) {
  if (state.kind != LinkKind::kEntityOut) return;
  auto now = now_ms();
  while (pn_link_credit(link) > 0) {
    auto out = broker_.acquire(*state.entity, state.peek_lock, state.id, now);
    if (!out) break;
    pn_delivery_t* d;
    if (out->lock) {
      auto tag = amqp::swap_guid_bytes(*out->lock);
      d = pn_delivery(link, pn_dtag(reinterpret_cast<const char*>(tag.data()), tag.size()));
      pn_delivery_set_context(d, new DeliveryState{state.entity, *out->lock});
    } else {
      auto tag = ++state.tag;
      d = pn_delivery(link, pn_dtag(reinterpret_cast<const char*>(&tag), sizeof(tag)));
    }
    pn_link_send(link, out->bytes.data(), out->bytes.size());
    pn_link_advance(link);
    if (!out->lock) pn_delivery_settle(d);
  }
  if (pn_link_credit(link) > 0 && pn_link_get_drain(link)) pn_link_drained(link);
}

void Server::pump_connection(pn_connection_t* connection) {
  for (auto* l = pn_link_head(connection, PN_LOCAL_ACTIVE | PN_REMOTE_ACTIVE); l != nullptr;
       l = pn_link_next(l, PN_LOCAL_ACTIVE | PN_REMOTE_ACTIVE)) {
    if (!pn_link_is_sender(l)) continue;
    auto* state = state_of(l);
    if (state == nullptr) continue;
    if (state->kind == LinkKind::kEntityOut) {
      pump(l, *state);
    } else {
      send_pending(l, *state);
    }
  }
}

void Server::wake_receivers() {
  for (auto* c : connections_) pn_connection_wake(c);
}

void Server::send_pending(pn_link_t* link, LinkState& state) {
  while (!state.pending.empty() && pn_link_credit(link) > 0) {
    auto tag = ++state.tag;
    auto* d = pn_delivery(link, pn_dtag(reinterpret_cast<const char*>(&tag), sizeof(tag)));
    const auto& bytes = state.pending.front();
    pn_link_send(link, bytes.data(), bytes.size());
    pn_link_advance(link);
    pn_delivery_settle(d);
    state.pending.pop_front();
  }
}

// Finds the link a reply goes out on (servicebus-amqp §2.2): the outgoing link whose target is
// the request's reply-to, else whose name is, else the one attached to the same node.
void Server::reply(pn_link_t* request_link, const amqp::Message& request, Value app_properties,
                   Value body) {
  auto* session = pn_link_session(request_link);
  auto* connection = pn_session_connection(session);
  auto reply_to = request.property_text(amqp::kReplyTo).value_or("");
  auto node =
      normalize_address(text_of(pn_terminus_get_address(pn_link_remote_target(request_link))));
  pn_link_t* by_target = nullptr;
  pn_link_t* by_name = nullptr;
  pn_link_t* same_session = nullptr;
  pn_link_t* same_connection = nullptr;
  for (auto* l = pn_link_head(connection, PN_LOCAL_ACTIVE); l != nullptr;
       l = pn_link_next(l, PN_LOCAL_ACTIVE)) {
    if (!pn_link_is_sender(l)) continue;
    auto* state = state_of(l);
    if (state == nullptr ||
        (state->kind != LinkKind::kCbsOut && state->kind != LinkKind::kManagementOut)) {
      continue;
    }
    if (!reply_to.empty() && state->target == reply_to) by_target = l;
    if (!reply_to.empty() && text_of(pn_link_name(l)) == reply_to) by_name = l;
    auto source = normalize_address(text_of(pn_terminus_get_address(pn_link_remote_source(l))));
    if (source == node) {
      if (pn_link_session(l) == session) same_session = l;
      same_connection = l;
    }
  }
  auto* out = by_target      ? by_target
              : by_name      ? by_name
              : same_session ? same_session
                             : same_connection;
  if (out == nullptr) {
    spdlog::warn("emulator: no link to send the reply to '{}' on", reply_to);
    return;
  }
  std::vector<Value> properties(amqp::kPropertyFieldCount);
  properties[amqp::kMessageId] = Value::string(amqp::to_string(amqp::random_uuid()));
  properties[amqp::kCorrelationId] = request.property(amqp::kMessageId);
  if (!reply_to.empty()) properties[amqp::kTo] = Value::string(reply_to);
  auto* state = state_of(out);
  state->pending.push_back(amqp::encode_value_message(properties, app_properties, body));
  // Send on the next turn, after the request's disposition has gone out: uamqp-based clients
  // drop a reply that arrives before they saw their request accepted.
  pn_connection_wake(connection);
}

void Server::on_cbs_request(pn_link_t* link, const amqp::Message& request) {
  const auto& props = request.application_properties;
  auto text = [&](std::string_view key) -> std::string {
    const auto* v = props.find(key);
    return v != nullptr && v->is_text() ? v->as_bytes() : std::string();
  };
  int status = 202;
  std::string description = "Accepted";
  std::string condition;
  auto audience = text("name");
  try {
    if (text("operation") != "put-token") {
      throw InvalidArgument("unsupported $cbs operation '" + text("operation") + "'");
    }
    if (!request.value_body || !request.value_body->is_text()) {
      throw InvalidArgument("the put-token body must be the token as a string");
    }
    auto token = sb::parse_sas_token(request.value_body->as_bytes());
    const SasKey* key = nullptr;
    for (const auto& k : options_.bus.keys) {
      if (k.name == token.key_name) key = &k;
    }
    if (key == nullptr) {
      throw InvalidArgument("no shared access key named '" + token.key_name + "'");
    }
    auto now = std::chrono::system_clock::now();
    if (auto problem = sb::verify_sas_token(token, key->key, audience, now)) {
      throw InvalidArgument(*problem);
    }
    auto expiry =
        std::chrono::duration_cast<std::chrono::milliseconds>(token.expiry.time_since_epoch())
            .count();
    auto* connection = pn_session_connection(pn_link_session(link));
    state_of(connection)->audiences[normalize_address(audience)] = expiry;
  } catch (const Error& e) {
    status = 401;
    description = std::string("put-token for '") + audience + "' refused: " + e.what();
    condition = "amqp:unauthorized-access";
    spdlog::info("emulator: {}", description);
  }
  auto app = Value::map({{Value::string("status-code"), Value::int_(status)},
                         {Value::string("status-description"), Value::string(description)}});
  if (!condition.empty()) app.set(Value::string("error-condition"), Value::symbol(condition));
  reply(link, request, std::move(app), Value::null());
}

void Server::on_management_request(pn_link_t* link, LinkState& state,
                                   const amqp::Message& request) {
  const auto* op = request.application_properties.find("operation");
  std::string operation = op != nullptr && op->is_text() ? op->as_bytes() : std::string();
  Value body = request.value_body.value_or(Value::null());
  auto result = handle_management(broker_, *state.entity, operation, body, now_ms());
  auto app = Value::map({{Value::string("statusCode"), Value::int_(result.status)},
                         {Value::string("statusDescription"), Value::string(result.description)}});
  if (!result.condition.empty()) {
    app.set(Value::string("errorCondition"), Value::symbol(result.condition));
  }
  if (const auto* tracking = request.application_properties.find("com.microsoft:tracking-id")) {
    app.set(Value::string("com.microsoft:tracking-id"), *tracking);
  }
  reply(link, request, std::move(app), std::move(result.body));
  if (result.status == 200) wake_receivers();
}

std::size_t Server::drop_all_connections() {
  for (auto* c : connections_) {
    if (!state_of(c)->drop) ++dropping_;
    state_of(c)->drop = true;
    pn_connection_wake(c);
  }
  return connections_.size();
}

}  // namespace

struct Emulator::Impl {
  explicit Impl(EmulatorOptions o) : server(std::move(o)) {}
  Server server;
};

Emulator::Emulator(EmulatorOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Emulator::~Emulator() = default;

void Emulator::start() { impl_->server.start(); }
void Emulator::stop() { impl_->server.stop(); }
std::uint16_t Emulator::port() const { return impl_->server.port(); }
std::optional<std::uint16_t> Emulator::tls_port() const { return impl_->server.tls_port(); }
std::filesystem::path Emulator::certificate_file() const {
  return impl_->server.certificate_file();
}

std::string Emulator::connection_string() const {
  return "Endpoint=sb://localhost:" + std::to_string(port()) +
         ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
         "UseDevelopmentEmulator=true";
}

void Emulator::expire_locks(std::string_view entity) {
  std::string path(entity);
  impl_->server.call([&] {
    auto* e = impl_->server.broker().find(path);
    if (e == nullptr) throw InvalidArgument("no entity '" + path + "'");
    impl_->server.broker().expire_locks(*e, now_ms());
  });
}

void Emulator::drop_connections() {
  impl_->server.call([&] { return impl_->server.drop_all_connections(); });
  // Return once every dropped connection is gone, so a test's next step meets a clean slate.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (impl_->server.call([&] { return impl_->server.dropping(); }) > 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      throw Error("the emulator could not drop its connections within 10 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

EntityCounts Emulator::counts(std::string_view entity) const {
  std::string path(entity);
  return impl_->server.call([&] {
    auto* e = impl_->server.broker().find(path);
    if (e == nullptr) throw InvalidArgument("no entity '" + path + "'");
    return impl_->server.broker().counts(*e);
  });
}

}  // namespace metro::emulator
