#include "raw_amqp.hpp"

#include <future>
#include <stdexcept>

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
#include <proton/terminus.h>
#include <proton/transport.h>

namespace metro::test {
namespace {

using amqp::Value;

std::string text_of(const char* s) { return s == nullptr ? std::string() : std::string(s); }

std::string read_delivery(pn_delivery_t* d) {
  auto* link = pn_delivery_link(d);
  std::string bytes(pn_delivery_pending(d), '\0');
  auto n = pn_link_recv(link, bytes.data(), bytes.size());
  bytes.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return bytes;
}

Outcome outcome_of(pn_delivery_t* d) {
  Outcome o;
  o.state = pn_delivery_remote_state(d);
  auto* condition = pn_disposition_condition(pn_delivery_remote(d));
  o.condition = text_of(pn_condition_get_name(condition));
  o.description = text_of(pn_condition_get_description(condition));
  return o;
}

pn_delivery_t* send_bytes(pn_link_t* link, const std::string& bytes, std::uint64_t tag) {
  auto* d = pn_delivery(link, pn_dtag(reinterpret_cast<const char*>(&tag), sizeof(tag)));
  pn_link_send(link, bytes.data(), bytes.size());
  pn_link_advance(link);
  return d;
}

}  // namespace

// ---- Client ----------------------------------------------------------------------------------

struct RawAmqpClient::Link {
  pn_link_t* link = nullptr;
  bool sender = false;
  std::deque<pn_delivery_t*> deliveries;  // receiver: unsettled, for receive_and_modify
  struct Pending {
    std::string bytes;
    Outcome* outcome;
    bool* done;
  };
  std::deque<Pending> to_send;
  std::map<pn_delivery_t*, Pending> in_flight;
  std::deque<amqp::Message> received;
};

RawAmqpClient::RawAmqpClient(const std::string& host, std::uint16_t port,
                             std::chrono::milliseconds timeout)
    : timeout_(timeout), proactor_(pn_proactor()) {
  connection_ = pn_connection();
  pn_connection_set_container(connection_, "metro-raw-client");
  pn_connection_set_hostname(connection_, host.c_str());
  auto* transport = pn_transport();
  pn_sasl_allowed_mechs(pn_sasl(transport), "ANONYMOUS");
  char addr[PN_MAX_ADDR];
  pn_proactor_addr(addr, sizeof(addr), host.c_str(), std::to_string(port).c_str());
  pn_proactor_connect2(proactor_, connection_, transport, addr);
  run_until([&] { return opened_ || closed_; });
  if (!opened_) {
    pn_proactor_free(proactor_);
    throw std::runtime_error("the raw client could not connect to " + host);
  }
}

RawAmqpClient::~RawAmqpClient() { pn_proactor_free(proactor_); }

bool RawAmqpClient::open() {
  // Take what has arrived, so that a close the peer sent is seen.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  while (!closed_ && std::chrono::steady_clock::now() < deadline) {
    pn_proactor_set_timeout(proactor_, 20);
    auto* batch = pn_proactor_wait(proactor_);
    while (auto* e = pn_event_batch_next(batch)) handle(e);
    pn_proactor_done(proactor_, batch);
  }
  return opened_ && !closed_;
}

void RawAmqpClient::run_until(const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    pn_proactor_set_timeout(proactor_, 20);
    auto* batch = pn_proactor_wait(proactor_);
    while (auto* e = pn_event_batch_next(batch)) handle(e);
    pn_proactor_done(proactor_, batch);
  }
}

RawAmqpClient::Link& RawAmqpClient::link(const std::string& address, bool sender,
                                         const std::string& name) {
  auto key = (sender ? "s:" : "r:") + address;
  auto& entry = links_[key];
  if (entry) return *entry;
  entry = std::make_unique<Link>();
  entry->sender = sender;
  // Made in the connection's own turn (a wake), where what it writes goes out.
  bool made = false;
  auto* raw = entry.get();
  pending_actions_.push_back([this, raw, address, sender, name, &made] {
    auto* session = pn_session(connection_);
    pn_session_open(session);
    if (sender) {
      raw->link = pn_sender(session, (name + "-sender").c_str());
      pn_terminus_set_address(pn_link_target(raw->link), address.c_str());
    } else {
      raw->link = pn_receiver(session, (name + "-receiver").c_str());
      pn_terminus_set_address(pn_link_source(raw->link), address.c_str());
      pn_terminus_set_address(pn_link_target(raw->link), name.c_str());
      if (name.rfind("raw-receiver-", 0) == 0) {
        pn_link_set_snd_settle_mode(raw->link, PN_SND_UNSETTLED);
        pn_link_set_rcv_settle_mode(raw->link, PN_RCV_SECOND);
      }
    }
    pn_link_set_context(raw->link, raw);
    pn_link_open(raw->link);
    if (!sender) pn_link_flow(raw->link, 10);
    made = true;
  });
  pn_connection_wake(connection_);
  run_until([&] { return made || closed_; });
  return *raw;
}

Outcome RawAmqpClient::send(const std::string& address, const std::string& bytes) {
  auto& l = link(address, true, "raw-" + address);
  Outcome outcome;
  bool done = false;
  pending_actions_.push_back([&] {
    l.to_send.push_back({bytes, &outcome, &done});
    flush(l);
  });
  pn_connection_wake(connection_);
  run_until([&] { return done || closed_; });
  return outcome;
}

void RawAmqpClient::flush(Link& l) {
  while (l.link != nullptr && !l.to_send.empty() && pn_link_credit(l.link) > 0) {
    auto pending = std::move(l.to_send.front());
    l.to_send.pop_front();
    auto* d = send_bytes(l.link, pending.bytes, ++tag_);
    l.in_flight.emplace(d, std::move(pending));
  }
}

int RawAmqpClient::put_token(const std::string& audience, const std::string& token) {
  std::vector<Value> properties(amqp::kPropertyFieldCount);
  properties[amqp::kMessageId] = Value::string("put-token-" + std::to_string(++tag_));
  properties[amqp::kTo] = Value::string("$cbs");
  properties[amqp::kReplyTo] = Value::string("raw-cbs-replies");
  auto app = Value::map({{Value::string("operation"), Value::string("put-token")},
                         {Value::string("type"), Value::string("servicebus.windows.net:sastoken")},
                         {Value::string("name"), Value::string(audience)}});
  auto reply = request("$cbs", "raw-cbs-replies",
                       amqp::encode_value_message(properties, app, Value::string(token)));
  if (!reply) return -1;
  const auto* status = reply->application_properties.find("status-code");
  return status != nullptr && status->is_integer() ? static_cast<int>(status->as_int64()) : -1;
}

std::optional<amqp::Message> RawAmqpClient::request(const std::string& node,
                                                    const std::string& reply_to,
                                                    const std::string& bytes, Outcome* outcome) {
  auto& replies = link(node, false, reply_to);
  auto& requests = link(node, true, reply_to);
  Outcome sent;
  bool done = false;
  pending_actions_.push_back([&] {
    requests.to_send.push_back({bytes, &sent, &done});
    flush(requests);
  });
  pn_connection_wake(connection_);
  // A refused request gets no reply: stop waiting when the refusal comes.
  run_until(
      [&] { return !replies.received.empty() || closed_ || (done && sent.state != PN_ACCEPTED); });
  if (outcome != nullptr) {
    run_until([&] { return done || closed_; });
    *outcome = sent;
  }
  if (replies.received.empty()) return std::nullopt;
  auto reply = std::move(replies.received.front());
  replies.received.pop_front();
  return reply;
}

Outcome RawAmqpClient::receive_and_modify(const std::string& address,
                                          const std::string& annotations) {
  auto& l = link(address, false, "raw-receiver-" + address);
  run_until([&] { return !l.deliveries.empty() || closed_; });
  Outcome outcome;
  if (l.deliveries.empty()) return outcome;
  auto* d = l.deliveries.front();
  l.deliveries.pop_front();
  bool done = false;
  pending_actions_.push_back([&] {
    auto* local = pn_delivery_local(d);
    pn_disposition_set_failed(local, true);
    pn_data_decode(pn_disposition_annotations(local), annotations.data(), annotations.size());
    pn_delivery_update(d, PN_MODIFIED);
  });
  settling_ = d;
  settled_ = &outcome;
  settled_done_ = &done;
  pn_connection_wake(connection_);
  run_until([&] { return done || closed_; });
  settling_ = nullptr;
  return outcome;
}

void RawAmqpClient::handle(pn_event_t* event) {
  switch (pn_event_type(event)) {
    case PN_CONNECTION_INIT:
      pn_connection_open(pn_event_connection(event));
      break;
    case PN_CONNECTION_REMOTE_OPEN:
      opened_ = true;
      break;
    case PN_CONNECTION_REMOTE_CLOSE:
      pn_connection_close(pn_event_connection(event));
      closed_ = true;
      break;
    case PN_TRANSPORT_CLOSED:
      closed_ = true;
      break;
    case PN_CONNECTION_WAKE: {
      auto actions = std::move(pending_actions_);
      pending_actions_.clear();
      for (auto& a : actions) a();
      break;
    }
    case PN_LINK_FLOW: {
      auto* l = static_cast<Link*>(pn_link_get_context(pn_event_link(event)));
      if (l != nullptr && l->sender) flush(*l);
      break;
    }
    case PN_LINK_REMOTE_CLOSE:
      pn_link_close(pn_event_link(event));
      break;
    case PN_DELIVERY: {
      auto* d = pn_event_delivery(event);
      auto* l = static_cast<Link*>(pn_link_get_context(pn_delivery_link(d)));
      if (l == nullptr) break;
      if (l->sender) {
        if (!pn_delivery_updated(d)) break;
        auto it = l->in_flight.find(d);
        if (it == l->in_flight.end()) break;
        if (pn_delivery_remote_state(d) == 0 && !pn_delivery_settled(d)) break;
        *it->second.outcome = outcome_of(d);
        *it->second.done = true;
        l->in_flight.erase(it);
        pn_delivery_settle(d);
      } else if (d == settling_ && pn_delivery_updated(d) && pn_delivery_settled(d)) {
        *settled_ = outcome_of(d);
        *settled_done_ = true;
        pn_delivery_settle(d);
      } else if (pn_delivery_readable(d) && !pn_delivery_partial(d)) {
        auto bytes = read_delivery(d);
        pn_link_advance(pn_delivery_link(d));
        if (pn_link_rcv_settle_mode(pn_delivery_link(d)) == PN_RCV_SECOND) {
          l->deliveries.push_back(d);  // settled by receive_and_modify
          break;
        }
        pn_delivery_update(d, PN_ACCEPTED);
        pn_delivery_settle(d);
        pn_link_flow(pn_delivery_link(d), 1);
        try {
          l->received.push_back(amqp::parse_message(bytes));
        } catch (const Error&) {
          // Not ours to judge here: a test reading replies sees none.
        }
      }
      break;
    }
    default:
      break;
  }
}

// ---- Server ----------------------------------------------------------------------------------

RawAmqpServer::RawAmqpServer() : proactor_(pn_proactor()) {
  auto* listener = pn_listener();
  char addr[PN_MAX_ADDR];
  pn_proactor_addr(addr, sizeof(addr), "127.0.0.1", "0");
  pn_proactor_listen(proactor_, listener, addr, 16);
  std::promise<std::uint16_t> bound;
  auto port = bound.get_future();
  listening_ = &bound;
  thread_ = std::thread([this] { run(); });
  if (port.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    std::terminate();  // the thread still refers to `bound`
  }
  port_ = port.get();
}

RawAmqpServer::~RawAmqpServer() {
  {
    MutexLock lock(mutex_);
    stop_requested_ = true;
  }
  pn_proactor_interrupt(proactor_);
  thread_.join();
  pn_proactor_free(proactor_);
}

std::string RawAmqpServer::connection_string() const {
  return "Endpoint=sb://127.0.0.1:" + std::to_string(port_) +
         ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
         "UseDevelopmentEmulator=true";
}

void RawAmqpServer::ignore_put_tokens(int n) {
  MutexLock lock(mutex_);
  ignore_put_tokens_ = n;
}

void RawAmqpServer::on_management(ManagementHandler handler) {
  MutexLock lock(mutex_);
  management_ = std::move(handler);
}

void RawAmqpServer::deliver(const std::string& address, std::string message_bytes) {
  {
    MutexLock lock(mutex_);
    to_deliver_[address].push_back(std::move(message_bytes));
  }
  pn_proactor_interrupt(proactor_);
}

std::vector<Outcome> RawAmqpServer::outcomes() {
  MutexLock lock(mutex_);
  return outcomes_;
}

int RawAmqpServer::put_tokens() {
  MutexLock lock(mutex_);
  return put_tokens_;
}

void RawAmqpServer::run() {
  bool done = false;
  while (!done) {
    auto* batch = pn_proactor_wait(proactor_);
    while (auto* e = pn_event_batch_next(batch)) {
      if (pn_event_type(e) == PN_PROACTOR_INACTIVE && stopping_) done = true;
      handle(e);
    }
    pn_proactor_done(proactor_, batch);
  }
}

void RawAmqpServer::pump(pn_link_t* link) {
  auto& replies = replies_[link];
  while (!replies.empty() && pn_link_credit(link) > 0) {
    pn_delivery_settle(send_bytes(link, replies.front(), ++tag_));  // replies go pre-settled
    replies.pop_front();
  }
  std::string address = text_of(pn_terminus_get_address(pn_link_remote_source(link)));
  while (pn_link_credit(link) > 0) {
    std::string bytes;
    {
      MutexLock lock(mutex_);
      auto it = to_deliver_.find(address);
      if (it == to_deliver_.end() || it->second.empty()) break;
      bytes = std::move(it->second.front());
      it->second.pop_front();
    }
    // A GUID-sized tag, as Service Bus gives (the client reads the lock token from it).
    auto lock_token = amqp::random_uuid();
    pn_delivery(link, pn_dtag(reinterpret_cast<const char*>(lock_token.data()), 16));
    pn_link_send(link, bytes.data(), bytes.size());
    pn_link_advance(link);
  }
}

void RawAmqpServer::on_request(pn_link_t* link, const amqp::Message& request) {
  auto node = text_of(pn_terminus_get_address(pn_link_remote_target(link)));
  std::optional<std::pair<Value, Value>> answer;
  if (node == "$cbs") {
    MutexLock lock(mutex_);
    ++put_tokens_;
    if (ignore_put_tokens_ > 0) {
      --ignore_put_tokens_;
    } else {
      answer =
          std::pair{Value::map({{Value::string("status-code"), Value::int_(202)},
                                {Value::string("status-description"), Value::string("Accepted")}}),
                    Value::null()};
    }
  } else {
    ManagementHandler handler;
    {
      MutexLock lock(mutex_);
      handler = management_;
    }
    if (handler) answer = handler(node, request);
  }
  if (!answer) return;
  auto reply_to = request.property_text(amqp::kReplyTo).value_or("");
  auto* connection = pn_session_connection(pn_link_session(link));
  for (auto* l = pn_link_head(connection, PN_LOCAL_ACTIVE); l != nullptr;
       l = pn_link_next(l, PN_LOCAL_ACTIVE)) {
    if (!pn_link_is_sender(l)) continue;
    if (text_of(pn_terminus_get_address(pn_link_remote_target(l))) != reply_to) continue;
    std::vector<Value> properties(amqp::kPropertyFieldCount);
    properties[amqp::kMessageId] = Value::string(amqp::to_string(amqp::random_uuid()));
    properties[amqp::kCorrelationId] = request.property(amqp::kMessageId);
    replies_[l].push_back(amqp::encode_value_message(properties, answer->first, answer->second));
    pump(l);
    return;
  }
}

void RawAmqpServer::handle(pn_event_t* event) {
  switch (pn_event_type(event)) {
    case PN_LISTENER_OPEN: {
      char port[PN_MAX_ADDR];
      pn_netaddr_host_port(pn_listener_addr(pn_event_listener(event)), nullptr, 0, port,
                           sizeof(port));
      listening_->set_value(static_cast<std::uint16_t>(std::stoi(port)));
      listening_ = nullptr;
      break;
    }
    case PN_LISTENER_ACCEPT: {
      auto* transport = pn_transport();
      pn_transport_set_server(transport);
      pn_sasl_allowed_mechs(pn_sasl(transport), "ANONYMOUS");
      pn_transport_require_auth(transport, false);
      pn_listener_accept2(pn_event_listener(event), nullptr, transport);
      break;
    }
    case PN_CONNECTION_INIT:
      connections_.push_back(pn_event_connection(event));
      break;
    case PN_CONNECTION_REMOTE_OPEN:
      pn_connection_open(pn_event_connection(event));
      break;
    case PN_CONNECTION_REMOTE_CLOSE:
      pn_connection_close(pn_event_connection(event));
      break;
    case PN_TRANSPORT_CLOSED: {
      auto* c = pn_event_connection(event);
      std::erase(connections_, c);
      for (auto* l = pn_link_head(c, 0); l != nullptr; l = pn_link_next(l, 0)) replies_.erase(l);
      break;
    }
    case PN_SESSION_REMOTE_OPEN:
      pn_session_open(pn_event_session(event));
      break;
    case PN_SESSION_REMOTE_CLOSE:
      pn_session_close(pn_event_session(event));
      break;
    case PN_LINK_REMOTE_OPEN: {
      auto* link = pn_event_link(event);
      pn_terminus_copy(pn_link_source(link), pn_link_remote_source(link));
      pn_terminus_copy(pn_link_target(link), pn_link_remote_target(link));
      pn_link_set_snd_settle_mode(link, pn_link_remote_snd_settle_mode(link));
      pn_link_set_rcv_settle_mode(link, pn_link_remote_rcv_settle_mode(link));
      pn_link_open(link);
      if (pn_link_is_receiver(link)) pn_link_flow(link, 100);
      break;
    }
    case PN_LINK_REMOTE_CLOSE:
      replies_.erase(pn_event_link(event));
      pn_link_close(pn_event_link(event));
      break;
    case PN_LINK_FLOW:
      if (pn_link_is_sender(pn_event_link(event))) pump(pn_event_link(event));
      break;
    case PN_CONNECTION_WAKE: {
      auto* c = pn_event_connection(event);
      for (auto* l = pn_link_head(c, PN_LOCAL_ACTIVE); l != nullptr;
           l = pn_link_next(l, PN_LOCAL_ACTIVE)) {
        if (pn_link_is_sender(l)) pump(l);
      }
      break;
    }
    case PN_DELIVERY: {
      auto* d = pn_event_delivery(event);
      auto* link = pn_delivery_link(d);
      if (pn_link_is_sender(link)) {
        if (!pn_delivery_updated(d)) break;
        if (pn_delivery_remote_state(d) == 0 && !pn_delivery_settled(d)) break;
        {
          MutexLock lock(mutex_);
          outcomes_.push_back(outcome_of(d));
        }
        pn_delivery_settle(d);
        break;
      }
      if (!pn_delivery_readable(d) || pn_delivery_partial(d)) break;
      auto bytes = read_delivery(d);
      pn_link_advance(link);
      pn_delivery_update(d, PN_ACCEPTED);
      pn_delivery_settle(d);
      pn_link_flow(link, 1);
      auto node = text_of(pn_terminus_get_address(pn_link_remote_target(link)));
      if (node == "$cbs" || node.find("/$management") != std::string::npos) {
        try {
          on_request(link, amqp::parse_message(bytes));
        } catch (const Error&) {
        }
      }
      break;
    }
    case PN_PROACTOR_INTERRUPT: {
      bool stop;
      {
        MutexLock lock(mutex_);
        stop = stop_requested_;
      }
      if (stop) {
        stopping_ = true;
        pn_proactor_disconnect(proactor_, nullptr);
      } else {
        for (auto* c : connections_) pn_connection_wake(c);
      }
      break;
    }
    default:
      break;
  }
}

}  // namespace metro::test
