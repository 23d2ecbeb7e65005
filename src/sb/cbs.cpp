#include "cbs.hpp"

#include <proton/condition.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/link.h>
#include <proton/session.h>
#include <proton/terminus.h>

#include <metro/sb/sas.hpp>

#include "engine.hpp"

namespace metro::sb::detail {
namespace {

using amqp::Value;

}  // namespace

void Cbs::open(pn_session_t* session) {
  reply_to_ = "cbs-" + amqp::to_string(amqp::random_uuid());
  sender_ = pn_sender(session, ("$cbs-sender-" + reply_to_).c_str());
  pn_terminus_set_address(pn_link_target(sender_), "$cbs");
  pn_terminus_set_address(pn_link_source(sender_), reply_to_.c_str());
  pn_link_open(sender_);
  receiver_ = pn_receiver(session, reply_to_.c_str());
  pn_terminus_set_address(pn_link_source(receiver_), "$cbs");
  pn_terminus_set_address(pn_link_target(receiver_), reply_to_.c_str());
  pn_link_open(receiver_);
  pn_link_flow(receiver_, 100);
}

void Cbs::lost(const std::exception_ptr& error) {
  sender_ = receiver_ = nullptr;
  outbox_.fail_all(error);
  requests_.fail_all(error);
  auto waiting = std::move(waiting_);
  waiting_.clear();
  for (auto& [audience, callbacks] : waiting) {
    for (auto& done : callbacks) done(error);
  }
  tokens_.clear();
}

bool Cbs::due(Clock::time_point expiry) const {
  // Put again once a quarter of its life is left (15 minutes of an hour, as the JS SDK does), so
  // links never meet an expired token.
  return expiry - Clock::now() <
         std::chrono::duration_cast<Clock::duration>(engine_.options().token_lifetime) / 4;
}

void Cbs::authorize(const std::string& path, Done done, TimePoint deadline) {
  auto audience = engine_.connection_string().audience(path);
  if (auto it = tokens_.find(audience);
      it != tokens_.end() && it->second > Clock::now() + std::chrono::minutes(5)) {
    return done(nullptr);
  }
  auto& waiting = waiting_[audience];
  waiting.push_back(std::move(done));
  if (waiting.size() > 1) return;  // a put-token for it is under way
  put_token(audience, deadline);
}

void Cbs::put_token(const std::string& audience, TimePoint deadline) {
  const auto& cs = engine_.connection_string();
  auto expiry = Clock::now() + engine_.options().token_lifetime;
  std::string token = cs.has_key() ? make_sas_token(audience, cs.shared_access_key_name,
                                                    cs.shared_access_key, expiry)
                                   : cs.shared_access_signature;
  auto what = "put-token on $cbs";
  auto id = requests_.add(
      [this, audience, expiry, has_key = cs.has_key()](std::exception_ptr error,
                                                       const amqp::Message* reply) {
        if (!error && reply != nullptr) {
          auto r = codec::reply_of(*reply);
          if (r.status >= 200 && r.status < 300) {
            tokens_[audience] = has_key ? expiry : Clock::time_point::max();
          } else {
            error = error_for(r.status == 401 ? "amqp:unauthorized-access" : r.condition,
                              r.description, r.status);
          }
        }
        // Answered, refused or timed out: the next attach of this entity puts a token again.
        auto callbacks = std::move(waiting_[audience]);
        waiting_.erase(audience);
        for (auto& done : callbacks) done(error);
      },
      deadline, what);
  std::vector<Value> properties(amqp::kPropertyFieldCount);
  properties[amqp::kMessageId] = Value::string(id);
  properties[amqp::kTo] = Value::string("$cbs");
  properties[amqp::kReplyTo] = Value::string(reply_to_);
  auto app = Value::map({{Value::string("operation"), Value::string("put-token")},
                         {Value::string("type"), Value::string("servicebus.windows.net:sastoken")},
                         {Value::string("name"), Value::string(audience)},
                         {Value::string("expiration"), Value::timestamp(codec::to_ms(expiry))}});
  outbox_.push(
      amqp::encode_value_message(properties, app, Value::string(token)),
      [this, id](std::exception_ptr error) {
        if (error) requests_.answer(id, nullptr, error);
      },
      deadline, what);
  outbox_.flush(sender_);
}

void Cbs::tick(TimePoint now, Unanswered& unanswered) {
  auto timeout = engine_.options().operation_timeout;
  outbox_.expire(now, timeout, unanswered);
  requests_.expire(now, timeout, unanswered);
  if (!engine_.open() || !engine_.connection_string().has_key()) return;
  // A given signature cannot be renewed here; a key can mint a new one.
  std::vector<std::string> stale;
  for (const auto& [audience, expiry] : tokens_) {
    if (due(expiry) && waiting_.count(audience) == 0) stale.push_back(audience);
  }
  for (const auto& audience : stale) {
    // Open links keep working with the old token meanwhile; a failure is tried again next tick.
    waiting_[audience].push_back([](std::exception_ptr) {});
    put_token(audience, engine_.deadline());
  }
}

void Cbs::on_flow(pn_link_t* link) {
  if (link == sender_) outbox_.flush(sender_);
}

void Cbs::on_delivery(pn_delivery_t* d) {
  auto* link = pn_delivery_link(d);
  if (link == sender_) {
    if (!pn_delivery_updated(d)) return;
    auto outcome = pn_delivery_remote_state(d);
    if (outcome == 0 && !pn_delivery_settled(d)) return;
    auto done = outbox_.take(d);
    pn_delivery_settle(d);
    if (!done) return;
    (*done)(outcome == PN_ACCEPTED ? nullptr
                                   : error_for("", "the service did not accept a put-token"));
    return;
  }
  if (!pn_delivery_readable(d) || pn_delivery_partial(d)) return;
  requests_.receive_reply(d, "the put-token reply");
}

}  // namespace metro::sb::detail
