// Links in general, senders and $management links; receivers are in receiver_link.cpp.

#include "links.hpp"

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/link.h>
#include <proton/session.h>
#include <proton/terminus.h>

#include "../common/fresh_exception.hpp"
#include "engine.hpp"

namespace metro::sb::detail {
namespace {

using amqp::Value;

std::string text_of(const char* s) { return s == nullptr ? std::string() : std::string(s); }

pn_delivery_t* send_bytes(pn_link_t* link, const std::string& bytes, std::uint64_t tag) {
  auto* d = pn_delivery(link, pn_dtag(reinterpret_cast<const char*>(&tag), sizeof(tag)));
  pn_link_send(link, bytes.data(), bytes.size());
  pn_link_advance(link);
  return d;
}

std::string unique_name(const std::string& base) {
  return base + "-" + amqp::to_string(amqp::random_uuid());
}

}  // namespace

std::exception_ptr error_for(const std::string& condition, const std::string& description,
                             int status) {
  try {
    throw_for(condition, description, status);
  } catch (...) {
    return std::current_exception();
  }
}

std::exception_ptr connection_lost(const std::string& why) {
  return fresh_exception([&] { return ConnectionLostError("amqp:connection:forced", why, true); });
}

std::exception_ptr timed_out(const std::string& what, milliseconds after) {
  return fresh_exception([&] {
    return TimeoutError("com.microsoft:timeout",
                        what + " got no answer within " + std::to_string(after.count()) + " ms",
                        true);
  });
}

// ---- Outbox ----------------------------------------------------------------------------------

void Outbox::push(std::string bytes, Done done, TimePoint deadline, std::string what) {
  backlog_.push_back({std::move(bytes), std::move(done), deadline, {}, std::move(what)});
}

void Outbox::flush(pn_link_t* link) {
  while (link != nullptr && !backlog_.empty() && pn_link_credit(link) > 0) {
    auto entry = std::move(backlog_.front());
    backlog_.pop_front();
    auto* d = send_bytes(link, entry.bytes, ++tag_);
    entry.bytes.clear();
    entry.sent = SteadyClock::now();
    in_flight_.emplace(d, std::move(entry));
  }
}

std::optional<Done> Outbox::take(pn_delivery_t* delivery) {
  auto it = in_flight_.find(delivery);
  if (it == in_flight_.end()) return std::nullopt;
  auto done = std::move(it->second.done);
  in_flight_.erase(it);
  return done;
}

void Outbox::fail_all(const std::exception_ptr& error) {
  fail_sent(error);
  auto backlog = std::move(backlog_);
  backlog_.clear();
  for (auto& e : backlog) e.done(error);
}

void Outbox::fail_sent(const std::exception_ptr& error) {
  auto in_flight = std::move(in_flight_);
  in_flight_.clear();
  for (auto& [d, e] : in_flight) e.done(error);
}

void Outbox::expire(TimePoint now, milliseconds timeout, Unanswered& unanswered) {
  std::vector<Entry> due;
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    if (it->second.deadline <= now) {
      unanswered.note(it->second.sent, it->second.what);
      due.push_back(std::move(it->second));
      it = in_flight_.erase(it);  // a late outcome finds nothing and is only settled
    } else {
      ++it;
    }
  }
  for (auto it = backlog_.begin(); it != backlog_.end();) {
    if (it->deadline <= now) {
      due.push_back(std::move(*it));
      it = backlog_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& e : due) e.done(timed_out(e.what, timeout));
}

// ---- Requests --------------------------------------------------------------------------------

std::string Requests::add(Answer answer, TimePoint deadline, std::string what) {
  auto id = "metro-" + std::to_string(++next_) + "-" + amqp::to_string(amqp::random_uuid());
  entries_[id] = {std::move(answer), deadline, SteadyClock::now(), std::move(what)};
  return id;
}

bool Requests::answer(const std::string& id, const amqp::Message* reply, std::exception_ptr error) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  auto answer = std::move(it->second.answer);
  entries_.erase(it);
  answer(std::move(error), reply);
  return true;
}

void Requests::receive_reply(pn_delivery_t* d, const char* what) {
  auto* link = pn_delivery_link(d);
  std::string bytes(pn_delivery_pending(d), '\0');
  auto n = pn_link_recv(link, bytes.data(), bytes.size());
  bytes.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  pn_link_advance(link);
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  pn_link_flow(link, 100 - pn_link_credit(link));
  try {
    auto reply = amqp::parse_message(bytes);
    if (auto id = reply.property_text(amqp::kCorrelationId)) answer(*id, &reply, nullptr);
  } catch (const amqp::DecodeError& e) {
    // Tell the request it answers, when the reply says which.
    if (auto id = codec::correlation_id_of(bytes)) {
      answer(*id, nullptr, fresh_exception([&] {
        return ServiceBusError("amqp:decode-error",
                               std::string(what) + " could not be decoded: " + e.what(), false);
      }));
    }
  }
}

void Requests::fail_all(const std::exception_ptr& error) {
  auto entries = std::move(entries_);
  entries_.clear();
  for (auto& [id, e] : entries) e.answer(error, nullptr);
}

void Requests::expire(TimePoint now, milliseconds timeout, Unanswered& unanswered) {
  std::vector<Entry> due;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.deadline <= now) {
      unanswered.note(it->second.sent, it->second.what);
      due.push_back(std::move(it->second));
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& e : due) e.answer(timed_out(e.what, timeout), nullptr);
}

// ---- Link ------------------------------------------------------------------------------------

void Link::attach() {
  if (!engine_.open() || ready_ || attaching_ || released_) return;
  attaching_ = true;
  std::weak_ptr<Link> weak = shared_from_this();
  auto generation = engine_.generation();
  engine_.cbs().authorize(
      node(),
      [this, weak, generation](std::exception_ptr error) {
        auto self = weak.lock();
        if (!self || generation != engine_.generation() || !engine_.open()) return;
        if (error) {
          attaching_ = false;
          return fail_waiting(error);
        }
        ++attachment_;
        auto* session = pn_session(engine_.connection());
        pn_session_open(session);
        open_links(session);
      },
      engine_.deadline());
}

void Link::when_ready(std::function<void()> run, Done fail, TimePoint deadline) {
  if (ready_) return run();
  waiting_.push_back({std::move(run), std::move(fail), deadline});
  attach();
}

void Link::detach() {
  for (auto* l : links()) {
    if (l == nullptr) continue;
    pn_link_set_context(l, nullptr);
    if (engine_.connection() != nullptr) pn_link_close(l);
  }
  forget_links();
  ready_ = false;
}

void Link::lost(const std::exception_ptr& error) {
  ready_ = false;
  attaching_ = false;
  forget_links();  // freed with the connection
  fail_pending(error);
}

void Link::tick(TimePoint now, Unanswered&) {
  std::vector<Waiting> due;
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (it->deadline <= now) {
      due.push_back(std::move(*it));
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& w : due)
    w.fail(timed_out("attaching a link to " + address_, engine_.options().operation_timeout));
}

void Link::fail_waiting(const std::exception_ptr& error) {
  auto waiting = std::move(waiting_);
  waiting_.clear();
  for (auto& w : waiting) w.fail(error);
}

void Link::on_remote_open(pn_link_t*) {
  for (auto* l : links()) {
    if (l == nullptr || (pn_link_state(l) & PN_REMOTE_ACTIVE) == 0) return;
    // A refusal opens with a null terminus; the detach with the error follows.
    auto* terminus = pn_link_is_sender(l) ? pn_link_remote_target(l) : pn_link_remote_source(l);
    if (pn_terminus_get_address(terminus) == nullptr) return;
  }
  ready_ = true;
  attaching_ = false;
  on_ready();
  auto waiting = std::move(waiting_);
  waiting_.clear();
  for (auto& w : waiting) w.run();
}

void Link::on_remote_close(pn_link_t* link) {
  auto* condition = pn_link_remote_condition(link);
  auto name = text_of(pn_condition_get_name(condition));
  auto description = text_of(pn_condition_get_description(condition));
  auto error = name.empty() ? connection_lost("the service closed the link to " + address_)
                            : error_for(name, description);
  detach();  // every Proton link of it; the next operation attaches again
  attaching_ = false;
  fail_pending(error);
  fail_waiting(error);
}

// ---- SenderLink ------------------------------------------------------------------------------

void SenderLink::send(std::vector<std::string> messages, Done done, TimePoint deadline) {
  if (messages.empty()) return done(nullptr);
  auto remaining = std::make_shared<std::size_t>(messages.size());
  auto once = std::make_shared<Done>(std::move(done));
  when_ready(
      [this, messages = std::move(messages), remaining, once, deadline]() mutable {
        for (auto& bytes : messages) {
          outbox_.push(
              std::move(bytes),
              [remaining, once](std::exception_ptr error) {
                if (!*once) return;
                if (error || --*remaining == 0) {
                  auto d = std::move(*once);
                  *once = nullptr;
                  d(error);
                }
              },
              deadline, "sending to " + address_);
        }
        outbox_.flush(link_);
      },
      [once](std::exception_ptr error) {
        if (!*once) return;
        auto d = std::exchange(*once, nullptr);
        d(error);
      },
      deadline);
}

void SenderLink::open_links(pn_session_t* session) {
  auto name = unique_name(address_);
  link_ = pn_sender(session, name.c_str());
  pn_terminus_set_address(pn_link_target(link_), address_.c_str());
  pn_terminus_set_address(pn_link_source(link_), name.c_str());
  pn_link_set_snd_settle_mode(link_, PN_SND_UNSETTLED);
  pn_link_set_context(link_, this);
  pn_link_open(link_);
}

void SenderLink::on_flow(pn_link_t*) { outbox_.flush(link_); }

void SenderLink::on_delivery(pn_delivery_t* d) {
  if (!pn_delivery_updated(d)) return;
  auto outcome = pn_delivery_remote_state(d);
  if (outcome == 0 && !pn_delivery_settled(d)) return;
  auto done = outbox_.take(d);
  pn_delivery_settle(d);
  if (!done) return;
  std::exception_ptr error;
  if (outcome == PN_REJECTED) {
    auto* cond = pn_disposition_condition(pn_delivery_remote(d));
    error = error_for(text_of(pn_condition_get_name(cond)),
                      text_of(pn_condition_get_description(cond)));
  } else if (outcome != PN_ACCEPTED) {
    error = error_for("", "the service did not accept the message (outcome " +
                              std::string(pn_disposition_type_name(outcome)) + ")");
  }
  (*done)(error);
}

void SenderLink::tick(TimePoint now, Unanswered& unanswered) {
  Link::tick(now, unanswered);
  outbox_.expire(now, engine_.options().operation_timeout, unanswered);
}

// ---- ManagementLink --------------------------------------------------------------------------

void ManagementLink::request(const std::string& operation, Value body, Answer answer,
                             TimePoint deadline) {
  auto shared = std::make_shared<Answer>(std::move(answer));
  when_ready(
      [this, operation, body = std::move(body), shared, deadline]() mutable {
        auto id = requests_.add(
            [shared](std::exception_ptr error, const amqp::Message* reply) {
              (*shared)(std::move(error),
                        reply != nullptr ? codec::reply_of(*reply) : codec::Reply{});
            },
            deadline, operation + " on " + address_);
        std::vector<Value> properties(amqp::kPropertyFieldCount);
        properties[amqp::kMessageId] = Value::string(id);
        properties[amqp::kReplyTo] = Value::string(reply_to_);
        auto app = Value::map({{Value::string("operation"), Value::string(operation)}});
        outbox_.push(
            amqp::encode_value_message(properties, app, body),
            [this, id](std::exception_ptr error) {
              // Accepted: the reply follows. Refused: that is the answer.
              if (error) requests_.answer(id, nullptr, error);
            },
            deadline, operation + " on " + address_);
        outbox_.flush(requests_link_);
      },
      [shared](std::exception_ptr error) { (*shared)(std::move(error), codec::Reply{}); },
      deadline);
}

void ManagementLink::open_links(pn_session_t* session) {
  auto node = address_ + "/$management";
  auto name = unique_name(address_);
  reply_to_ = amqp::to_string(amqp::random_uuid());
  requests_link_ = pn_sender(session, (name + "-requests").c_str());
  pn_terminus_set_address(pn_link_target(requests_link_), node.c_str());
  pn_terminus_set_address(pn_link_source(requests_link_), reply_to_.c_str());
  replies_link_ = pn_receiver(session, reply_to_.c_str());
  pn_terminus_set_address(pn_link_source(replies_link_), node.c_str());
  pn_terminus_set_address(pn_link_target(replies_link_), reply_to_.c_str());
  pn_link_set_context(requests_link_, this);
  pn_link_set_context(replies_link_, this);
  pn_link_open(replies_link_);
  pn_link_flow(replies_link_, 100);
  pn_link_open(requests_link_);
}

void ManagementLink::on_flow(pn_link_t* link) {
  if (link == requests_link_) outbox_.flush(requests_link_);
}

void ManagementLink::on_delivery(pn_delivery_t* d) {
  auto* link = pn_delivery_link(d);
  if (link == requests_link_) {
    if (!pn_delivery_updated(d)) return;
    auto outcome = pn_delivery_remote_state(d);
    if (outcome == 0 && !pn_delivery_settled(d)) return;
    auto done = outbox_.take(d);
    pn_delivery_settle(d);
    if (!done) return;
    std::exception_ptr error;
    if (outcome != PN_ACCEPTED) {
      auto* cond = pn_disposition_condition(pn_delivery_remote(d));
      error =
          error_for(text_of(pn_condition_get_name(cond)),
                    "the request was not accepted: " + text_of(pn_condition_get_description(cond)));
    }
    return (*done)(error);
  }
  if (!pn_delivery_readable(d) || pn_delivery_partial(d)) return;
  requests_.receive_reply(d, "the reply");
}

void ManagementLink::fail_pending(const std::exception_ptr& error) {
  // Requests not yet sent name a reply address that dies with this attach: they fail too.
  outbox_.fail_all(error);
  requests_.fail_all(error);
}

void ManagementLink::tick(TimePoint now, Unanswered& unanswered) {
  Link::tick(now, unanswered);
  outbox_.expire(now, engine_.options().operation_timeout, unanswered);
  requests_.expire(now, engine_.options().operation_timeout, unanswered);
}

}  // namespace metro::sb::detail
