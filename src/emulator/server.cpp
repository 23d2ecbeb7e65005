// The emulator server's life: start and stop, the event loop, connections and link attaches, and
// holding acknowledgements until the journal has what they acknowledge.

#include "server.hpp"

#include <proton/netaddr.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <spdlog/spdlog.h>

#include "../sb/log_text.hpp"
#include "tls.hpp"

namespace metro::emulator {
namespace {

constexpr std::uint64_t kMaxMessageSize = 1024 * 1024;
constexpr pn_millis_t kTickMs = 50;
/// On stop, how long clients get to answer the close before they are dropped.
constexpr pn_millis_t kCloseGraceMs = 2000;
/// While the journal cannot be written, how often to say so again.
constexpr auto kJournalComplaintInterval = std::chrono::seconds(10);

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

std::uint16_t bound_port(pn_listener_t* listener) {
  char port[PN_MAX_ADDR];
  pn_netaddr_host_port(pn_listener_addr(listener), nullptr, 0, port, sizeof(port));
  return static_cast<std::uint16_t>(std::stoi(port));
}

}  // namespace

std::string text_of(const char* s) { return s == nullptr ? std::string() : std::string(s); }

void Server::start() {
  if (!options_.data_dir.empty()) {
    journal_ = std::make_unique<Journal>(options_.data_dir);
    broker_.restore(*journal_, now_ms());
  }
  try {
    open_listeners();
  } catch (...) {
    journal_.reset();
    throw;
  }
}

void Server::open_listeners() {
  amqp::ProactorPtr proactor(pn_proactor());
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
    ssl_domain_.reset(pn_ssl_domain(PN_SSL_MODE_SERVER));
    if (pn_ssl_domain_set_credentials(ssl_domain_.get(), certificate_.c_str(), key.c_str(),
                                      nullptr) != 0) {
      ssl_domain_.reset();
      throw Error("cannot load the TLS certificate " + certificate_.string() + " and key " +
                  key.string());
    }
  }
  auto listen = [&](std::uint16_t port, bool tls) {
    char addr[PN_MAX_ADDR];
    pn_proactor_addr(addr, sizeof(addr), options_.host.c_str(), std::to_string(port).c_str());
    auto* listener = pn_listener();
    pn_listener_set_context(listener, tls ? this : nullptr);
    pn_proactor_listen(proactor.get(), listener, addr, 64);
    ++listeners_pending_;
    return listener;
  };
  plain_listener_ = listen(options_.port, false);
  if (options_.tls_port) tls_listener_ = listen(*options_.tls_port, true);
  {
    MutexLock lock(mutex_);
    proactor_ = std::move(proactor);
    running_ = true;
  }
  auto listening = listening_.get_future();
  thread_ = std::thread([this] { run(); });
  listening.wait();
  if (!listen_error_.empty()) {
    stop();
    throw Error(listen_error_);
  }
  pn_proactor_set_timeout(proactor_.get(), kTickMs);
}

void Server::stop() {
  std::lock_guard stopping(stop_mutex_);
  {
    MutexLock lock(mutex_);
    if (!running_) return;
    running_ = false;
    stopping_ = true;
    pn_proactor_interrupt(proactor_.get());
  }
  if (thread_.joinable()) thread_.join();
  std::deque<std::function<void()>> abandoned;
  {
    MutexLock lock(mutex_);
    abandoned.swap(tasks_);  // their callers learn the emulator stopped
  }
  abandoned.clear();
  proactor_.reset();  // frees the connections and listeners it still holds
  ssl_domain_.reset();
}

void Server::run() {
  bool done = false;
  while (!done) {
    auto* batch = pn_proactor_wait(proactor_.get());
    while (auto* event = pn_event_batch_next(batch)) {
      if (!handle(event)) done = true;
    }
    // Store the turn's changes before its acknowledgements go out.
    std::optional<std::string> refused;
    if (journal_) refused = write_journal();
    auto effects = std::move(after_write_);
    after_write_.clear();
    for (auto& effect : effects) effect(refused);
    pn_proactor_done(proactor_.get(), batch);
  }
}

void Server::after_write(AfterWrite effect) {
  if (!journal_) return effect(std::nullopt);
  after_write_.push_back(std::move(effect));
}

std::optional<std::string> Server::write_journal() {
  if (!broker_.changed()) return std::nullopt;  // nothing to write is no sign either way
  try {
    broker_.flush(*journal_);
    if (journal_failing_) {
      spdlog::warn("emulator: the journal {} takes writes again, after {} refused turns",
                   journal_->path().string(), refused_turns_);
      journal_failing_ = false;
      refused_turns_ = 0;
    }
    return std::nullopt;
  } catch (const Error& e) {
    std::string why = e.what();
    ++refused_turns_;
    auto now = std::chrono::steady_clock::now();
    if (!journal_failing_ || now - journal_last_complaint_ >= kJournalComplaintInterval) {
      spdlog::critical(
          "emulator: cannot write the journal {}: {}. Durability cannot be kept: sends and "
          "settlements that need a write are refused with amqp:internal-error, and state goes "
          "back to the last write ({} turns refused so far)",
          journal_->path().string(), why, refused_turns_);
      journal_last_complaint_ = now;
    }
    journal_failing_ = true;
    try {
      broker_.reload(*journal_, now_ms());
    } catch (const Error& reload_error) {
      // The unwritten changes stay in memory and are written with the next turn that can.
      spdlog::critical("emulator: cannot read the journal {} back either: {}",
                       journal_->path().string(), reload_error.what());
    }
    wake_receivers();  // what was unlocked by the rollback can go out again
    return why;
  }
}

void Server::run_tasks() {
  std::deque<std::function<void()>> tasks;
  {
    MutexLock lock(mutex_);
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
      if (stopping_) {
        pn_listener_close(pn_event_listener(event));
        break;
      }
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
    case PN_CONNECTION_REMOTE_CLOSE:
      pn_connection_close(pn_event_connection(event));
      break;
    case PN_CONNECTION_WAKE: {
      auto* c = pn_event_connection(event);
      auto* state = state_of(c);
      if (state != nullptr && state->drop) {
        auto* t = pn_connection_transport(c);
        pn_transport_close_tail(t);
        pn_transport_close_head(t);
        break;
      }
      if (stopping_) {
        // A clean close: what this turn owes (acknowledgements) goes out before the close frame.
        pn_connection_close(c);
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
      if (stopping_ && connections_.empty()) {
        pn_proactor_disconnect(proactor_.get(), nullptr);  // the listeners; then inactive
      } else {
        wake_receivers();
      }
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
    case PN_PROACTOR_TIMEOUT:
      if (stopping_) {
        // Clients that did not answer the close in time are dropped.
        pn_proactor_disconnect(proactor_.get(), nullptr);
        break;
      }
      if (broker_.tick(now_ms())) wake_receivers();
      pn_proactor_set_timeout(proactor_.get(), kTickMs);
      break;
    case PN_PROACTOR_INTERRUPT:
      run_tasks();
      wake_receivers();  // stopping: each connection closes in its turn
      if (stopping_ && !stop_begun_) {
        stop_begun_ = true;
        if (connections_.empty()) {
          pn_proactor_cancel_timeout(proactor_.get());
          pn_proactor_disconnect(proactor_.get(), nullptr);
        } else {
          pn_proactor_set_timeout(proactor_.get(), kCloseGraceMs);
        }
      }
      break;
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
    pn_ssl_init(pn_ssl(transport), ssl_domain_.get(), nullptr);
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
  spdlog::debug("emulator: refused link {}: {}", sb::printable(text_of(pn_link_name(link))),
                sb::printable(description));
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

std::size_t Server::drop_all_connections() {
  for (auto* c : connections_) {
    if (!state_of(c)->drop) ++dropping_;
    state_of(c)->drop = true;
    pn_connection_wake(c);
  }
  return connections_.size();
}

}  // namespace metro::emulator
