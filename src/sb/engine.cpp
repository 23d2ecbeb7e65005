#include "engine.hpp"

#include <random>

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/transport.h>
#include <spdlog/spdlog.h>

#include "../common/fresh_exception.hpp"
#include "log_text.hpp"

namespace metro::sb::detail {
namespace {

using std::chrono::duration_cast;

std::string text_of(const char* s) { return s == nullptr ? std::string() : std::string(s); }

/// "30 s", "1.5 s", "250 ms".
std::string seconds_text(std::chrono::milliseconds d) {
  if (d.count() < 1000) return std::to_string(d.count()) + " ms";
  auto tenths = d.count() / 100;
  return std::to_string(tenths / 10) + (tenths % 10 != 0 ? "." + std::to_string(tenths % 10) : "") +
         " s";
}

/// How long a closing connection may wait for the peer's close before it is dropped.
constexpr auto kCloseGrace = std::chrono::seconds(2);

}  // namespace

Engine::Engine(ConnectionString cs, ClientOptions options)
    : cs_(std::move(cs)), options_(std::move(options)), cbs_(*this) {}

Engine::~Engine() {
  close();
  if (thread_.joinable()) {
    // Destroyed by the event thread itself (its last task held the last reference): it is past
    // the loop and touches nothing of this any more.
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();
    } else {
      thread_.join();
    }
  }
}

ClientClosedError Engine::closed_error(const std::string& what) {
  return ClientClosedError("the client is closed: " + what +
                           " cannot be done (Client::close() was called, or the client is gone)");
}

std::string Engine::peer() const { return cs_.host + ":" + std::to_string(cs_.port); }

std::chrono::milliseconds Engine::tick_interval() const {
  // Often enough to notice silence within a quarter of the idle timeout; at most once a second.
  return std::clamp(options_.idle_timeout / 4, std::chrono::milliseconds(20),
                    std::chrono::milliseconds(1000));
}

void Engine::start() {
  proactor_.reset(pn_proactor());
  if (cs_.use_tls) {
    ssl_domain_.reset(pn_ssl_domain(PN_SSL_MODE_CLIENT));
    auto ca = options_.ca_file.empty() ? std::string("/etc/ssl/certs/ca-certificates.crt")
                                       : options_.ca_file;
    if (pn_ssl_domain_set_trusted_ca_db(ssl_domain_.get(), ca.c_str()) != 0) {
      throw InvalidArgument("cannot load the CA file " + ca);
    }
    pn_ssl_domain_set_peer_authentication(ssl_domain_.get(), PN_SSL_VERIFY_PEER_NAME, nullptr);
  }
  down_since_ = SteadyClock::now();
  connect();
  // The thread holds the engine: it is freed after the loop, never under it.
  thread_ = std::thread([self = shared_from_this()] { self->run_loop(); });
}

// ---- Any thread ------------------------------------------------------------------------------

bool Engine::post(std::function<void()> task) {
  MutexLock lock(mutex_);
  // Not closing: the proactor lives (it is freed only after closing and joining).
  if (closing_) return false;
  tasks_.push_back(std::move(task));
  // One wake per batch: tasks already queued have asked for a turn that has not taken them yet
  // (every wake and interrupt ends in run_tasks, or in lost() or the loop's end, which run them).
  if (tasks_.size() > 1) return true;
  if (wakeable_ != nullptr) {
    pn_connection_wake(wakeable_);  // run in the connection's own turn, where its writes go out
  } else {
    pn_proactor_interrupt(proactor_.get());
  }
  return true;
}

void Engine::run(std::function<void()> task, const std::string& what) {
  if (!post(std::move(task))) throw closed_error(what);
}

bool Engine::closed() const {
  MutexLock lock(mutex_);
  return closing_;
}

ConnectionState Engine::state() const {
  MutexLock lock(mutex_);
  return state_;
}

void Engine::close() {
  std::lock_guard one_at_a_time(close_mutex_);
  {
    MutexLock lock(mutex_);
    if (!closing_) {
      closing_ = true;
      if (!proactor_) return;  // never started
      // The last task: close every link and the connection in the connection's turn.
      tasks_.push_back([this] {
        for (auto& [raw, link] : links_) link->detach();
        if (connection_ != nullptr) pn_connection_close(connection_);
        pn_proactor_set_timeout(
            proactor_.get(),
            static_cast<pn_millis_t>(duration_cast<milliseconds>(kCloseGrace).count()));
      });
      pn_proactor_interrupt(proactor_.get());
    }
  }
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

// ---- Event thread ----------------------------------------------------------------------------

void Engine::add(const std::shared_ptr<Link>& link) {
  links_[link.get()] = link;
  link->attach();
}

void Engine::run_tasks() {
  std::deque<std::function<void()>> batch;
  {
    MutexLock lock(mutex_);
    batch.swap(tasks_);
  }
  for (auto& t : batch) t();
}

void Engine::run_loop() {
  pn_proactor_set_timeout(proactor_.get(), static_cast<pn_millis_t>(tick_interval().count()));
  bool done = false;
  while (!done) {
    auto* events = pn_proactor_wait(proactor_.get());
    bool ours = false;  // the connection's own turn
    while (auto* e = pn_event_batch_next(events)) {
      ours = ours || (connection_ != nullptr && pn_event_connection(e) == connection_);
      if (!handle(e)) done = true;
    }
    end_batch();
    if (ours && connection_ != nullptr) note_input();
    // Released links are detached in the connection's turn (or forgotten without one).
    if (ours || connection_ == nullptr) sweep();
    pn_proactor_done(proactor_.get(), events);
  }
  // Closed: what was posted, under way or waiting fails now rather than at its deadline, and
  // whoever waits for messages gets an empty answer.
  set_state(ConnectionState::kClosed, "closed");
  run_tasks();
  end_batch();
  auto error = fresh_exception([&] { return closed_error("the operation"); });
  cbs_.lost(error);
  for (auto& [raw, link] : links_) {
    link->close(error);
    if (auto* receiver = dynamic_cast<ReceiverLink*>(raw)) receiver->close_buffer();
  }
  links_.clear();
}

void Engine::end_batch() {
  while (!batch_end_.empty()) {
    auto links = std::move(batch_end_);
    batch_end_.clear();
    for (auto& link : links) link->on_batch_end();
  }
}

void Engine::sweep() {
  for (auto it = links_.begin(); it != links_.end();) {
    if (it->second->finished()) {
      it->second->detach();
      it = links_.erase(it);
    } else {
      ++it;
    }
  }
}

void Engine::connect() {
  auto* c = pn_connection();
  pn_connection_set_hostname(c, cs_.host.c_str());
  pn_connection_set_container(c, ("metro-" + amqp::to_string(amqp::random_uuid())).c_str());
  if (!cs_.shared_access_key_name.empty()) {
    pn_connection_set_user(c, cs_.shared_access_key_name.c_str());
  }
  auto* t = pn_transport();
  // Proton sends half of this as the open frame's idle-time-out and drops the connection when
  // nothing arrives for all of it; the watchdog in tick() says so in its own words first.
  pn_transport_set_idle_timeout(t, static_cast<pn_millis_t>(options_.idle_timeout.count()));
  pn_sasl_allowed_mechs(pn_sasl(t), "ANONYMOUS");
  if (ssl_domain_) {
    auto* ssl = pn_ssl(t);
    pn_ssl_init(ssl, ssl_domain_.get(), nullptr);
    pn_ssl_set_peer_hostname(ssl, cs_.host.c_str());
  }
  connection_ = c;
  ++generation_;
  ++attempts_;
  open_ = false;
  connect_started_ = SteadyClock::now();
  last_input_ = connect_started_;
  frames_input_ = 0;
  abort_reason_.clear();
  char addr[PN_MAX_ADDR];
  pn_proactor_addr(addr, sizeof(addr), cs_.host.c_str(), std::to_string(cs_.port).c_str());
  pn_proactor_connect2(proactor_.get(), c, t, addr);
  MutexLock lock(mutex_);
  wakeable_ = c;
}

bool Engine::handle(pn_event_t* e) {
  switch (pn_event_type(e)) {
    case PN_CONNECTION_INIT: {
      auto* c = pn_event_connection(e);
      pn_connection_open(c);
      auto* session = pn_session(c);
      pn_session_open(session);
      cbs_.open(session);
      break;
    }
    case PN_CONNECTION_REMOTE_OPEN: {
      open_ = true;
      backoff_ = milliseconds(0);
      auto attempts = attempts_;
      attempts_ = 0;
      auto down = duration_cast<milliseconds>(SteadyClock::now() - down_since_);
      std::string how = ever_connected_ ? "connected to " + peer() + " again after "
                                        : "connected to " + peer() + " after ";
      set_state(ConnectionState::kConnected, attempts == 1 && !ever_connected_
                                                 ? "connected to " + peer()
                                                 : how + seconds_text(down) + " and " +
                                                       std::to_string(attempts) +
                                                       (attempts == 1 ? " attempt" : " attempts"));
      ever_connected_ = true;
      for (auto& [raw, link] : links_) link->attach();
      run_tasks();
      break;
    }
    case PN_CONNECTION_WAKE:
      if (tick_due_) {
        tick_due_ = false;
        tick();
      }
      if (!abort_reason_.empty()) break;
      run_tasks();
      break;
    case PN_PROACTOR_INTERRUPT: {
      MutexLock lock(mutex_);
      if (wakeable_ != nullptr) {
        pn_connection_wake(wakeable_);  // the work runs in the connection's turn
      } else if (closing_) {
        return false;
      } else {
        lock.unlock();
        run_tasks();  // no connection: nothing of Proton to touch
      }
      break;
    }
    case PN_CONNECTION_REMOTE_CLOSE:
      pn_connection_close(pn_event_connection(e));
      break;
    case PN_TRANSPORT_CLOSED: {
      auto* cond = pn_transport_condition(pn_event_transport(e));
      std::string why;
      if (!abort_reason_.empty()) {
        why = abort_reason_;
      } else if (pn_condition_is_set(cond)) {
        auto name = text_of(pn_condition_get_name(cond));
        auto description = text_of(pn_condition_get_description(cond));
        why = description == "local-idle-timeout expired"
                  ? "no frame from the peer for " + seconds_text(options_.idle_timeout)
                  : name + ": " + description;
      } else {
        why = "the connection closed";
      }
      lost(why);
      if (closed()) return false;
      break;
    }
    case PN_PROACTOR_TIMEOUT: {
      if (closed()) {
        // The peer did not answer the close in time: drop what is left.
        pn_proactor_disconnect(proactor_.get(), nullptr);
        break;
      }
      auto now = SteadyClock::now();
      auto next = tick_interval();
      if (connection_ == nullptr) {
        tick();  // deadlines run out between attempts too
        if (now >= reconnect_at_) {
          connect();
        } else {
          next = std::min(next, duration_cast<milliseconds>(reconnect_at_ - now) + milliseconds(1));
        }
      } else {
        // Outside the connection's turn: do the work in it, where what it writes goes out.
        tick_due_ = true;
        MutexLock lock(mutex_);
        if (wakeable_ != nullptr) pn_connection_wake(wakeable_);
      }
      pn_proactor_set_timeout(proactor_.get(), static_cast<pn_millis_t>(next.count()));
      break;
    }
    case PN_LINK_FLOW: {
      auto* link = pn_event_link(e);
      if (cbs_.owns(link)) {
        cbs_.on_flow(link);
      } else if (auto* l = static_cast<Link*>(pn_link_get_context(link))) {
        l->on_flow(link);
      }
      break;
    }
    case PN_LINK_REMOTE_OPEN:
      if (auto* l = static_cast<Link*>(pn_link_get_context(pn_event_link(e)))) {
        l->on_remote_open(pn_event_link(e));
      } else if (cbs_.owns(pn_event_link(e))) {
        cbs_.on_flow(pn_event_link(e));
      }
      break;
    case PN_LINK_REMOTE_CLOSE: {
      auto* link = pn_event_link(e);
      if (auto* l = static_cast<Link*>(pn_link_get_context(link))) {
        l->on_remote_close(link);
      } else {
        pn_link_close(link);
      }
      break;
    }
    case PN_DELIVERY: {
      auto* d = pn_event_delivery(e);
      auto* link = pn_delivery_link(d);
      if (cbs_.owns(link)) {
        cbs_.on_delivery(d);
      } else if (auto* l = static_cast<Link*>(pn_link_get_context(link))) {
        l->on_delivery(d);
      } else {
        pn_delivery_settle(d);  // of a link already let go
      }
      break;
    }
    default:
      break;
  }
  return true;
}

void Engine::note_input() {
  // Frames that carry something raise events (a turn of the connection), so a reply is noted
  // when it arrives; empty heartbeat frames raise none, and are noted by the next tick.
  auto frames = pn_transport_get_frames_input(pn_connection_transport(connection_));
  if (frames != frames_input_) {
    frames_input_ = frames;
    last_input_ = SteadyClock::now();
  }
}

void Engine::tick() {
  auto now = SteadyClock::now();
  if (connection_ != nullptr) note_input();
  Unanswered unanswered;
  cbs_.tick(now, unanswered);
  std::vector<std::shared_ptr<Link>> links;
  for (auto& [raw, link] : links_) links.push_back(link);
  for (auto& link : links) link->tick(now, unanswered);
  if (connection_ == nullptr) return;
  auto silent = duration_cast<milliseconds>(now - last_input_);
  if (!open_ && now - connect_started_ >= options_.idle_timeout) {
    return abort("no answer from " + peer() + " within " + seconds_text(options_.idle_timeout) +
                 " of connecting");
  }
  if (open_ && silent >= options_.idle_timeout) {
    return abort("no frame from the peer for " + seconds_text(silent));
  }
  // A request that outlived its deadline with nothing at all heard since it went out: the peer
  // is not answering anything, heartbeats included, though it has not been long enough for the
  // idle timeout to say so.
  if (open_ && unanswered.oldest_sent && last_input_ <= *unanswered.oldest_sent) {
    abort("no frame from the peer for " + seconds_text(silent) + " (" + unanswered.what +
          " got no answer)");
  }
}

void Engine::abort(const std::string& why) {
  if (connection_ == nullptr || !abort_reason_.empty()) return;
  abort_reason_ = why;
  auto* t = pn_connection_transport(connection_);
  pn_condition_set_name(pn_transport_condition(t), "amqp:connection:forced");
  pn_condition_set_description(pn_transport_condition(t), why.c_str());
  pn_transport_close_tail(t);
  pn_transport_close_head(t);
}

void Engine::lost(const std::string& why) {
  {
    MutexLock lock(mutex_);
    wakeable_ = nullptr;  // the proactor frees the connection after this turn
  }
  connection_ = nullptr;
  open_ = false;
  tick_due_ = false;
  // Said first, then what was under way fails (its callers may log about it).
  bool closing = closed();
  if (closing) {
    set_state(ConnectionState::kClosed, "closed");
  } else {
    if (state() == ConnectionState::kConnected) down_since_ = SteadyClock::now();
    spdlog::debug("sb: connection to {} ended (attempt {}): {}", peer(), attempts_, printable(why));
    set_state(ConnectionState::kDisconnected, why);
  }
  // An exception object of its own for each link: the callers of one link's operations (a
  // receiver's settlements, an entity's $management requests) are on different threads from
  // another's, and one object released from two threads races (see fresh_exception).
  cbs_.lost(connection_lost(why));
  std::vector<std::shared_ptr<Link>> links;
  for (auto& [raw, link] : links_) links.push_back(link);
  for (auto& link : links) link->lost(connection_lost(why));
  if (closing) return;
  // Exponential backoff with jitter.
  backoff_ = backoff_.count() == 0 ? options_.reconnect_initial_backoff
                                   : std::min(backoff_ * 2, options_.reconnect_max_backoff);
  static thread_local std::mt19937 random{std::random_device{}()};
  auto jitter = milliseconds(std::uniform_int_distribution<long>(0, backoff_.count() / 2)(random));
  reconnect_at_ = SteadyClock::now() + backoff_ + jitter;
  pn_proactor_set_timeout(
      proactor_.get(),
      static_cast<pn_millis_t>(std::min(backoff_ + jitter, tick_interval()).count()));
  run_tasks();  // what was posted meanwhile waits for the next connection, with its deadline
}

void Engine::set_state(ConnectionState state, const std::string& why) {
  ConnectionState before;
  {
    MutexLock lock(mutex_);
    if (state_ == state) return;  // once per change, not per link or per attempt
    before = state_;
    state_ = state;
  }
  auto reason = printable(why);
  switch (state) {
    case ConnectionState::kConnected:
      // The first connection is routine (debug); one made after a failure is news (info).
      if (before == ConnectionState::kConnecting) {
        spdlog::debug("sb: {}", reason);
      } else {
        spdlog::info("sb: {}", reason);
      }
      break;
    case ConnectionState::kDisconnected:
      if (before == ConnectionState::kConnecting) {
        spdlog::warn("sb: cannot connect to {}: {}; retrying with backoff", peer(), reason);
      } else {
        spdlog::warn("sb: connection to {} lost: {}; reconnecting with backoff", peer(), reason);
      }
      break;
    case ConnectionState::kClosed:
      spdlog::debug("sb: connection to {} closed", peer());
      break;
    case ConnectionState::kConnecting:
      break;
  }
  if (options_.on_state_change) options_.on_state_change(state, reason);
}

}  // namespace metro::sb::detail
