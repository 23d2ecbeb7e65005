#pragma once

// The emulator's AMQP server: one Proton proactor thread drives every connection and the broker.
// server.cpp has its life (start, the event loop, stop), connections and link attaches;
// transfers.cpp the messages and settlements on entity links; requests.cpp the $cbs and
// $management request/reply exchanges.
//
// Thread domains: the event thread owns everything below except what `mutex_` guards (the task
// queue other threads post hooks to, and whether the server runs). Public members other than
// `call` and `stop` are for the event thread (hooks reach them through `call`).

#include <atomic>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/listener.h>

#include <metro/emulator/emulator.hpp>

#include "../amqp/message.hpp"
#include "../amqp/proton_handles.hpp"
#include "../common/thread_annotations.hpp"
#include "broker.hpp"
#include "journal.hpp"

namespace metro::emulator {

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

/// A message delivered under a lock, on its outgoing delivery.
struct DeliveryState {
  Entity* entity;
  amqp::Uuid lock;
};

struct ConnectionState {
  std::uint64_t id = 0;
  std::map<std::string, TimeMs> audiences;  // normalised path -> token expiry
  bool drop = false;
};

std::string text_of(const char* s);

/// Credit each incoming link is given, and topped up to.
inline constexpr int kCreditWindow = 500;

class Server {
 public:
  explicit Server(EmulatorOptions options)
      : options_(std::move(options)), broker_(options_.bus, !options_.data_dir.empty()) {}
  ~Server() { stop(); }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Opens the journal, binds the listeners and starts the event thread. Throws `metro::Error`;
  /// whatever it had made is freed again.
  void start();
  /// Closes every connection and joins the event thread. Idempotent; concurrent callers wait for
  /// the first.
  void stop();
  std::uint16_t port() const { return port_; }
  std::optional<std::uint16_t> tls_port() const { return tls_port_; }
  std::filesystem::path certificate_file() const { return certificate_; }

  /// Runs `task` on the event thread and waits (up to a minute) for it. Throws `metro::Error`
  /// when the server is not running or stops first.
  template <typename F>
  auto call(F&& task) -> decltype(task()) {
    using R = decltype(task());
    auto packaged = std::make_shared<std::packaged_task<R()>>(std::forward<F>(task));
    auto future = packaged->get_future();
    {
      MutexLock lock(mutex_);
      if (!running_) throw Error("the emulator is not running");
      tasks_.emplace_back([packaged] { (*packaged)(); });
      pn_proactor_interrupt(proactor_.get());
    }
    if (future.wait_for(std::chrono::minutes(1)) != std::future_status::ready) {
      throw Error("the emulator did not answer within a minute");
    }
    try {
      return future.get();
    } catch (const std::future_error&) {
      throw Error("the emulator stopped before it could answer");
    }
  }

  // ---- Event thread ----
  Broker& broker() { return broker_; }
  /// Marks every connection to be dropped; returns how many.
  std::size_t drop_all_connections();
  std::size_t dropping() const { return dropping_; }
  /// Deliveries of `entity`'s messages still awaiting their settlement, over every link.
  std::size_t unsettled_deliveries(const Entity& entity);

 private:
  // server.cpp: life, connections, attaches.
  void open_listeners();
  void run();
  bool handle(pn_event_t* event);
  void run_tasks();
  void on_accept(pn_listener_t* listener);
  void on_link_open(pn_link_t* link);
  void refuse(pn_link_t* link, const char* condition, const std::string& description);
  bool authorized(pn_connection_t* connection, const std::string& path);

  // Durability: what tells a client its change is stored waits until the turn is written.
  using AfterWrite = std::function<void(const std::optional<std::string>& refused)>;
  /// Runs `effect` once this turn's changes are in the journal (at once without one), with why
  /// they could not be written, if so.
  void after_write(AfterWrite effect);
  /// Writes the turn's changes; on failure rolls the broker back to the journal and says why.
  std::optional<std::string> write_journal();

  // transfers.cpp: messages and settlements.
  void on_delivery(pn_delivery_t* delivery);
  void on_incoming(pn_link_t* link, LinkState& state, pn_delivery_t* delivery);
  void on_message(pn_link_t* link, LinkState& state, pn_delivery_t* delivery,
                  amqp::Message message);
  void on_settlement(pn_delivery_t* delivery);
  void release_link(pn_link_t* link);
  void pump(pn_link_t* link, LinkState& state);
  void pump_connection(pn_connection_t* connection);
  void send_pending(pn_link_t* link, LinkState& state);
  void wake_receivers();

  // requests.cpp: $cbs and $management.
  void on_cbs_request(pn_link_t* link, const amqp::Message& request);
  void on_management_request(pn_link_t* link, LinkState& state, const amqp::Message& request);
  void reply(pn_link_t* request_link, const amqp::Message& request, amqp::Value app_properties,
             amqp::Value body);

  LinkState* state_of(pn_link_t* link) {
    return static_cast<LinkState*>(pn_link_get_context(link));
  }
  ConnectionState* state_of(pn_connection_t* c) {
    return static_cast<ConnectionState*>(pn_connection_get_context(c));
  }

  EmulatorOptions options_;
  Broker broker_;
  std::unique_ptr<Journal> journal_;
  std::vector<AfterWrite> after_write_;
  bool journal_failing_ = false;
  std::size_t refused_turns_ = 0;
  std::chrono::steady_clock::time_point journal_last_complaint_;
  amqp::SslDomainPtr ssl_domain_;
  pn_listener_t* plain_listener_ = nullptr;  // owned by the proactor
  pn_listener_t* tls_listener_ = nullptr;
  std::uint16_t port_ = 0;
  std::optional<std::uint16_t> tls_port_;
  std::filesystem::path certificate_;
  std::uint64_t next_id_ = 1;
  std::set<pn_connection_t*> connections_;
  std::size_t dropping_ = 0;  // connections marked to drop whose transport has not closed yet
  int listeners_pending_ = 0;
  std::promise<void> listening_;
  std::string listen_error_;

  std::mutex stop_mutex_;  // one stop() at a time: the second waits for the first
  Mutex mutex_;
  amqp::ProactorPtr proactor_;  // set before the thread starts, reset after it is joined
  std::deque<std::function<void()>> tasks_ GUARDED_BY(mutex_);
  bool running_ GUARDED_BY(mutex_) = false;
  std::atomic<bool> stopping_{false};  // read by the event thread without the mutex
  bool stop_begun_ = false;            // event thread: the connections are closing
  std::thread thread_;
};

}  // namespace metro::emulator
