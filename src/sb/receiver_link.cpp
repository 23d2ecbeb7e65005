// A receiver link: credit, the buffer of received messages callers take from (or wait on), and
// settlement on the link.

#include <cstring>

#include <proton/condition.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/link.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <spdlog/spdlog.h>

#include "../amqp/value_pn.hpp"
#include "../common/fresh_exception.hpp"
#include "engine.hpp"
#include "links.hpp"
#include "log_text.hpp"

namespace metro::sb::detail {
namespace {

using amqp::Value;

std::string text_of(const char* s) { return s == nullptr ? std::string() : std::string(s); }

/// Takes up to `max` messages from the front of `buffer`.
std::vector<ReceivedMessage> take_from(std::deque<ReceivedMessage>& buffer, std::size_t max) {
  std::vector<ReceivedMessage> out;
  while (!buffer.empty() && out.size() < max) {
    out.push_back(std::move(buffer.front()));
    buffer.pop_front();
  }
  return out;
}

}  // namespace

ReceiverLink::ReceiverLink(Engine& engine, std::string address, ReceiverOptions options,
                           std::shared_ptr<ManagementLink> management)
    : Link(engine, std::move(address)),
      options_(options),
      renewer_(std::move(management), options.auto_renew_lock_for) {}

// ---- Any thread ------------------------------------------------------------------------------

std::vector<ReceivedMessage> ReceiverLink::take(std::size_t max, milliseconds timeout) {
  auto deadline = SteadyClock::now() + timeout;
  MutexLock lock(mutex_);
  while (buffer_.empty() && !closed_) {
    if (arrived_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  }
  auto out = take_from(buffer_, max);
  // One blocked taker is woken per arrival; it passes on what it left.
  if (!buffer_.empty()) arrived_.notify_one();
  return out;
}

std::optional<std::vector<ReceivedMessage>> ReceiverLink::take_or_wait(Waiter waiter) {
  MutexLock lock(mutex_);
  if (waiter.exclusive) {
    for (const auto& w : waiters_) {
      if (w.exclusive) {
        throw InvalidArgument("a receive_async callback is already waiting on " + address_);
      }
    }
  }
  if (!buffer_.empty() || waiter.max == 0 || closed_) return take_from(buffer_, waiter.max);
  waiters_.push_back(std::move(waiter));
  return std::nullopt;
}

bool ReceiverLink::cancel_exclusive() {
  MutexLock lock(mutex_);
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (it->exclusive) {
      waiters_.erase(it);
      return true;
    }
  }
  return false;
}

void ReceiverLink::close_buffer() {
  std::deque<Waiter> waiting;
  {
    MutexLock lock(mutex_);
    closed_ = true;
    waiting.swap(waiters_);
  }
  arrived_.notify_all();
  for (auto& w : waiting) w.callback({});  // Closed: nothing more will come.
}

void ReceiverLink::serve_waiters() {
  std::vector<std::pair<Waiter, std::vector<ReceivedMessage>>> handed;
  std::size_t next = 0;
  {
    MutexLock lock(mutex_);
    while (!buffer_.empty() && !waiters_.empty()) {
      auto waiter = std::move(waiters_.front());
      waiters_.pop_front();
      auto messages = take_from(buffer_, waiter.max);
      handed.emplace_back(std::move(waiter), std::move(messages));
    }
    if (!waiters_.empty()) next = waiters_.front().max;
    // A blocked take gets what is left (and wakes the next taker when it leaves some).
    if (!buffer_.empty()) arrived_.notify_one();
  }
  for (auto& [waiter, messages] : handed) waiter.callback(std::move(messages));
  // Without prefetch, credit follows what is asked for: the next waiter's.
  if (next > 0) grant(next);
}

// ---- Event thread ----------------------------------------------------------------------------

void ReceiverLink::grant(std::size_t max) {
  if (options_.prefetch != 0) return;
  last_grant_ = max;
  if (link_ == nullptr || !ready()) return;  // granted once attached (on_ready)
  std::size_t buffered;
  {
    MutexLock lock(mutex_);
    buffered = buffer_.size();
  }
  auto credit = static_cast<int>(max) - pn_link_credit(link_) - static_cast<int>(buffered);
  if (credit > 0) pn_link_flow(link_, credit);
}

void ReceiverLink::top_up() {
  if (link_ == nullptr || options_.prefetch == 0) return;
  std::size_t buffered;
  {
    MutexLock lock(mutex_);
    buffered = buffer_.size();
  }
  auto want =
      static_cast<int>(options_.prefetch) - pn_link_credit(link_) - static_cast<int>(buffered);
  if (want > 0) pn_link_flow(link_, want);
}

void ReceiverLink::on_ready() {
  if (options_.prefetch > 0) return top_up();
  std::size_t waiting = 0;
  {
    MutexLock lock(mutex_);
    if (!waiters_.empty()) waiting = waiters_.front().max;
  }
  if (waiting > 0 || last_grant_ > 0) grant(waiting > 0 ? waiting : last_grant_);
}

void ReceiverLink::open_links(pn_session_t* session) {
  auto name = address_ + "-" + amqp::to_string(amqp::random_uuid());
  link_ = pn_receiver(session, name.c_str());
  pn_terminus_set_address(pn_link_source(link_), address_.c_str());
  pn_terminus_set_address(pn_link_target(link_), name.c_str());
  if (options_.mode == ReceiveMode::kPeekLock) {
    pn_link_set_snd_settle_mode(link_, PN_SND_UNSETTLED);
    pn_link_set_rcv_settle_mode(link_, PN_RCV_SECOND);
  } else {
    pn_link_set_snd_settle_mode(link_, PN_SND_SETTLED);
    pn_link_set_rcv_settle_mode(link_, PN_RCV_FIRST);
  }
  pn_link_set_context(link_, this);
  pn_link_open(link_);
}

void ReceiverLink::forget_links() {
  link_ = nullptr;
  unsettled_.clear();
  renewer_.clear();
}

void ReceiverLink::fail_pending(const std::exception_ptr& error) {
  auto settlements = std::move(settlements_);
  settlements_.clear();
  unsettled_.clear();
  renewer_.clear();
  for (auto& [d, s] : settlements) s.done(error);
}

void ReceiverLink::on_delivery(pn_delivery_t* d) {
  if (pn_delivery_readable(d) && !pn_delivery_partial(d)) {
    auto* link = pn_delivery_link(d);
    std::string bytes(pn_delivery_pending(d), '\0');
    auto n = pn_link_recv(link, bytes.data(), bytes.size());
    bytes.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    pn_link_advance(link);
    return on_message(d, std::move(bytes));
  }
  if (pn_delivery_updated(d) && pn_delivery_settled(d)) on_settled(d);
}

void ReceiverLink::on_message(pn_delivery_t* d, std::string bytes) {
  amqp::Message message;
  try {
    message = amqp::parse_message(bytes);
  } catch (const amqp::DecodeError& e) {
    // Poison: nothing can be handed out. Rejected, Service Bus dead-letters it with the reason.
    auto why = std::string("metro could not decode the message: ") + e.what();
    spdlog::warn("sb: a message from {} could not be decoded and is rejected (dead-lettered): {}",
                 printable(address_), printable(e.what()));
    auto* local = pn_delivery_local(d);
    auto* cond = pn_disposition_condition(local);
    pn_condition_set_name(cond, "amqp:decode-error");
    pn_condition_set_description(cond, why.c_str());
    amqp::write_data(
        pn_condition_info(cond),
        Value::map({{Value::symbol("DeadLetterReason"), Value::string("DecodeError")},
                    {Value::symbol("DeadLetterErrorDescription"), Value::string(why)}}));
    pn_delivery_update(d, PN_REJECTED);
    pn_delivery_settle(d);
    top_up();
    return;
  }
  auto received = codec::decode_received(message);
  if (options_.mode == ReceiveMode::kPeekLock) {
    auto tag = pn_delivery_tag(d);
    if (received.lock_token.empty() && tag.size == 16) {
      amqp::Uuid raw;
      std::memcpy(raw.data(), tag.start, 16);
      received.lock_token = amqp::to_string(amqp::swap_guid_bytes(raw));
    }
    auto ref = std::make_shared<DeliveryRef>();
    ref->link = std::static_pointer_cast<ReceiverLink>(shared_from_this());
    ref->delivery = d;
    ref->attachment = attachment_;
    received.settlement = ref;
    unsettled_.insert(d);
    auto lock = amqp::uuid_from_string(received.lock_token);
    if (lock && received.locked_until) renewer_.hold(d, *lock, *received.locked_until);
  } else {
    pn_delivery_settle(d);
  }
  {
    MutexLock lock(mutex_);
    buffer_.push_back(std::move(received));
  }
  if (!arrived_in_batch_) {
    arrived_in_batch_ = true;
    engine_.after_batch(shared_from_this());
  }
}

void ReceiverLink::on_batch_end() {
  arrived_in_batch_ = false;
  serve_waiters();
  top_up();
}

void ReceiverLink::settle(const DeliveryRef& ref, std::uint64_t outcome, const Value& annotations,
                          bool undeliverable, const std::string& reason,
                          const std::string& description, Done done, TimePoint deadline) {
  auto* d = ref.delivery;
  if (ref.attachment != attachment_ || link_ == nullptr || unsettled_.count(d) == 0) {
    return done(fresh_exception([&] {
      return LockLostError(
          "com.microsoft:message-lock-lost",
          "the link that received this message is gone (connection or link lost), so its lock is "
          "too; the message will be delivered again",
          false);
    }));
  }
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
  settlements_[d] = {std::move(done), deadline, SteadyClock::now()};
}

void ReceiverLink::on_settled(pn_delivery_t* d) {
  // Our settlement came back (rcv-settle-mode second): success, or why not.
  unsettled_.erase(d);
  renewer_.release(d);
  auto it = settlements_.find(d);
  if (it == settlements_.end()) return pn_delivery_settle(d);
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
  auto done = std::move(it->second.done);
  settlements_.erase(it);
  pn_delivery_settle(d);
  done(error);
}

void ReceiverLink::tick(TimePoint now, Unanswered& unanswered) {
  Link::tick(now, unanswered);
  std::vector<Done> due;
  for (auto it = settlements_.begin(); it != settlements_.end();) {
    if (it->second.deadline <= now) {
      unanswered.note(it->second.sent, "settling a message on " + address_);
      due.push_back(std::move(it->second.done));
      it = settlements_.erase(it);  // a late answer is only settled
    } else {
      ++it;
    }
  }
  for (auto& d : due)
    d(timed_out("settling a message on " + address_, engine_.options().operation_timeout));
  std::vector<Waiter> expired;
  {
    MutexLock lock(mutex_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->deadline <= now) {
        expired.push_back(std::move(*it));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& w : expired) w.callback({});
  if (ready()) renewer_.renew(engine_.deadline());
}

}  // namespace metro::sb::detail
