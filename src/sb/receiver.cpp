// metro::sb::Receiver: receiving (blocking, with a callback, as a future), settlement on the
// link and over $management, deferred messages, peeking, rules.

#include <proton/disposition.h>

#include "../common/fresh_exception.hpp"
#include "codec.hpp"
#include "completion.hpp"
#include "handles.hpp"

namespace metro::sb {

using amqp::Value;

const std::string& Receiver::entity_path() const { return impl_->link->address(); }

// ---- Receiving -------------------------------------------------------------------------------

std::vector<ReceivedMessage> Receiver::receive(std::size_t max, milliseconds timeout) {
  auto& engine = *impl_->engine;
  auto link = impl_->link;
  auto what = "receiving from " + link->address();
  if (engine.closed()) throw detail::Engine::closed_error(what);
  if (max == 0) return {};
  if (link->options().prefetch == 0) engine.run([link, max] { link->grant(max); }, what);
  auto out = link->take(max, timeout);
  // Taking messages out of the buffer makes room for more: grant the credit.
  if (!out.empty() && link->options().prefetch > 0) (void)engine.post([link] { link->top_up(); });
  return out;
}

std::future<std::vector<ReceivedMessage>> Receiver::receive_async(std::size_t max,
                                                                  milliseconds timeout) {
  auto received = std::make_shared<detail::Completion<std::vector<ReceivedMessage>>>();
  auto future = received->future();
  auto& engine = *impl_->engine;
  auto link = impl_->link;
  if (engine.closed()) {
    received->fail(fresh_exception(
        [&] { return detail::Engine::closed_error("receiving from " + link->address()); }));
    return future;
  }
  detail::ReceiverLink::Waiter waiter{
      max, detail::SteadyClock::now() + timeout,
      [received](std::vector<ReceivedMessage> messages) { received->set(std::move(messages)); },
      false};
  auto ready = link->take_or_wait(std::move(waiter));
  if (!ready) {
    (void)engine.post([link, max] { link->grant(max); });
    return future;
  }
  if (!ready->empty() && link->options().prefetch > 0) {
    (void)engine.post([link] { link->top_up(); });
  }
  received->set(std::move(*ready));
  return future;
}

void Receiver::receive_async(std::size_t max, milliseconds timeout,
                             std::function<void(std::vector<ReceivedMessage>)> callback) {
  auto& engine = *impl_->engine;
  auto link = impl_->link;
  if (engine.closed()) throw detail::Engine::closed_error("receiving from " + link->address());
  detail::ReceiverLink::Waiter waiter{max, detail::SteadyClock::now() + timeout,
                                      std::move(callback), true};
  // Keep a way to answer: when the buffer hands messages at once, the callback comes back.
  auto answer = waiter.callback;
  auto ready = link->take_or_wait(std::move(waiter));
  if (!ready) {
    // Refused only when closing; the closing engine answers every waiter then.
    (void)engine.post([link, max] { link->grant(max); });
    return;
  }
  if (!ready->empty() && link->options().prefetch > 0) {
    (void)engine.post([link] { link->top_up(); });
  }
  answer(std::move(*ready));
}

bool Receiver::cancel_receive_async() { return impl_->link->cancel_exclusive(); }

// ---- Settlement ------------------------------------------------------------------------------

namespace {

std::string status_of(std::uint64_t outcome, bool undeliverable) {
  return outcome == PN_ACCEPTED   ? "completed"
         : outcome == PN_REJECTED ? "suspended"
         : undeliverable          ? "defered"
                                  : "abandoned";
}

Value to_annotations(const std::map<std::string, PropertyValue>& properties) {
  return properties.empty() ? Value::null() : codec::property_map(properties);
}

}  // namespace

std::future<void> Receiver::Impl::settle_async(const ReceivedMessage& message,
                                               std::uint64_t outcome, const Value& annotations,
                                               bool undeliverable, const std::string& reason,
                                               const std::string& description) {
  auto ref = std::static_pointer_cast<detail::DeliveryRef>(message.settlement);
  if (!ref) {
    throw InvalidArgument(
        "this message cannot be settled (received in receive-and-delete mode, or peeked)");
  }
  auto settled = std::make_shared<detail::Completion<void>>();
  auto future = settled->future();
  auto done = [settled](std::exception_ptr error) {
    if (error) return settled->fail(std::move(error));
    settled->set();
  };
  auto what = "settling message " + std::to_string(message.sequence_number);
  if (ref->lock) {
    // Fetched by sequence number: settled over $management.
    std::shared_ptr<detail::ManagementLink> link_of_entity;
    try {
      link_of_entity = management.get();
      detail::start_management(
          *engine, link_of_entity, "com.microsoft:update-disposition",
          codec::disposition_request(status_of(outcome, undeliverable), {Value::uuid(*ref->lock)},
                                     annotations, reason, description),
          false, [done](std::exception_ptr error, const Value&) { done(error); });
    } catch (const ClientClosedError&) {
      settled->fail(std::current_exception());
    }
    return future;
  }
  auto deadline = engine->deadline();
  bool posted =
      engine->post([ref, outcome, annotations, undeliverable, reason, description, done, deadline] {
        auto receiving = ref->link.lock();
        if (!receiving) {
          return done(fresh_exception([&] {
            return LockLostError(
                "com.microsoft:message-lock-lost",
                "the receiver of this message is gone, so its lock is too; the message "
                "will be delivered again",
                false);
          }));
        }
        receiving->settle(*ref, outcome, annotations, undeliverable, reason, description, done,
                          deadline);
      });
  if (!posted) settled->fail(fresh_exception([&] { return detail::Engine::closed_error(what); }));
  return future;
}

void Receiver::Impl::settle(const ReceivedMessage& message, std::uint64_t outcome,
                            const Value& annotations, bool undeliverable, const std::string& reason,
                            const std::string& description) {
  auto future = settle_async(message, outcome, annotations, undeliverable, reason, description);
  engine->wait(future, "settling message " + std::to_string(message.sequence_number));
}

void Receiver::complete(const ReceivedMessage& m) {
  impl_->settle(m, PN_ACCEPTED, Value::null(), false, "", "");
}
void Receiver::abandon(const ReceivedMessage& m, const std::map<std::string, PropertyValue>& p) {
  impl_->settle(m, PN_MODIFIED, to_annotations(p), false, "", "");
}
void Receiver::defer(const ReceivedMessage& m, const std::map<std::string, PropertyValue>& p) {
  impl_->settle(m, PN_MODIFIED, to_annotations(p), true, "", "");
}
void Receiver::dead_letter(const ReceivedMessage& m, const std::string& reason,
                           const std::string& description) {
  impl_->settle(m, PN_REJECTED, Value::null(), false, reason, description);
}

std::future<void> Receiver::complete_async(const ReceivedMessage& m) {
  return impl_->settle_async(m, PN_ACCEPTED, Value::null(), false, "", "");
}
std::future<void> Receiver::abandon_async(const ReceivedMessage& m) {
  return impl_->settle_async(m, PN_MODIFIED, Value::null(), false, "", "");
}
std::future<void> Receiver::defer_async(const ReceivedMessage& m) {
  return impl_->settle_async(m, PN_MODIFIED, Value::null(), true, "", "");
}
std::future<void> Receiver::dead_letter_async(const ReceivedMessage& m, const std::string& reason,
                                              const std::string& description) {
  return impl_->settle_async(m, PN_REJECTED, Value::null(), false, reason, description);
}

// ---- $management -----------------------------------------------------------------------------

void Receiver::settle_deferred(const std::vector<ReceivedMessage>& messages,
                               Disposition disposition, const std::string& reason,
                               const std::string& description) {
  std::vector<Value> tokens;
  for (const auto& m : messages) {
    auto token = amqp::uuid_from_string(m.lock_token);
    if (!token) {
      throw InvalidArgument("message " + std::to_string(m.sequence_number) + " holds no lock");
    }
    tokens.push_back(Value::uuid(*token));
  }
  if (tokens.empty()) return;
  detail::run_management(
      *impl_->engine, impl_->management.get(), "com.microsoft:update-disposition",
      codec::disposition_request(codec::disposition_status(disposition), std::move(tokens),
                                 Value::null(), reason, description));
}

void Receiver::complete_deferred(const std::vector<ReceivedMessage>& messages) {
  settle_deferred(messages, Disposition::kComplete);
}

Clock::time_point Receiver::renew_lock(const ReceivedMessage& m) {
  auto token = amqp::uuid_from_string(m.lock_token);
  if (!token) throw InvalidArgument("this message holds no lock");
  auto reply = detail::run_management(
      *impl_->engine, impl_->management.get(), "com.microsoft:renew-lock",
      Value::map({{Value::string("lock-tokens"),
                   Value::array(amqp::Type::kUuid, {Value::uuid(*token)})}}));
  const auto* expirations = reply.find("expirations");
  if (expirations == nullptr || expirations->is_null() || expirations->items().empty() ||
      expirations->items().front().type() != amqp::Type::kTimestamp) {
    throw ServiceBusError("", "renew-lock returned no expiry", false);
  }
  return codec::from_ms(expirations->items().front().as_timestamp());
}

std::vector<ReceivedMessage> Receiver::receive_deferred(const std::vector<std::int64_t>& numbers) {
  bool peek_lock = impl_->link->options().mode == ReceiveMode::kPeekLock;
  auto reply = detail::run_management(
      *impl_->engine, impl_->management.get(), "com.microsoft:receive-by-sequence-number",
      Value::map({{Value::string("sequence-numbers"), codec::sequence_array(numbers)},
                  {Value::string("receiver-settle-mode"), Value::uint(peek_lock ? 1 : 0)}}));
  auto messages = codec::messages_of(reply, peek_lock);
  for (auto& m : messages) {
    if (m.lock_token.empty()) continue;
    auto ref = std::make_shared<detail::DeliveryRef>();
    ref->lock = amqp::uuid_from_string(m.lock_token);
    m.settlement = ref;
  }
  return messages;
}

std::vector<ReceivedMessage> Receiver::peek(std::int64_t from, std::size_t count) {
  auto reply = detail::run_management(
      *impl_->engine, impl_->management.get(), "com.microsoft:peek-message",
      Value::map({{Value::string("from-sequence-number"), Value::long_(from)},
                  {Value::string("message-count"), Value::int_(static_cast<std::int32_t>(count))}}),
      true);
  return codec::messages_of(reply, false);
}

void Receiver::add_sql_rule(const std::string& name, const std::string& expression) {
  detail::run_management(*impl_->engine, impl_->management.get(), "com.microsoft:add-rule",
                         codec::sql_rule(name, expression));
}

void Receiver::add_correlation_rule(const std::string& name, const RuleInfo& filter) {
  detail::run_management(*impl_->engine, impl_->management.get(), "com.microsoft:add-rule",
                         codec::correlation_rule(name, filter));
}

void Receiver::remove_rule(const std::string& name) {
  detail::run_management(*impl_->engine, impl_->management.get(), "com.microsoft:remove-rule",
                         Value::map({{Value::string("rule-name"), Value::string(name)}}));
}

std::vector<RuleInfo> Receiver::rules() {
  auto reply = detail::run_management(*impl_->engine, impl_->management.get(),
                                      "com.microsoft:enumerate-rules",
                                      Value::map({{Value::string("top"), Value::int_(1 << 30)},
                                                  {Value::string("skip"), Value::int_(0)}}),
                                      true);
  return codec::rules_of(reply);
}

}  // namespace metro::sb
