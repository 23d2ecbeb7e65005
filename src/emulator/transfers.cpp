// Messages on entity links: what clients send (stored, then accepted once written), what goes out
// to receivers (under a lock, or removed), and the settlements that come back.

#include <algorithm>

#include <proton/connection.h>
#include <proton/disposition.h>
#include <proton/session.h>

#include "../amqp/value_pn.hpp"
#include "server.hpp"

namespace metro::emulator {
namespace {

using amqp::Value;

/// A link keeps the buffer of its last transfer for the next one, up to this size.
constexpr std::size_t kKeptBuffer = 64 * 1024;

void settle_with_error(pn_delivery_t* d, const std::string& condition,
                       const std::string& description) {
  auto* local = pn_delivery_local(d);
  auto* c = pn_disposition_condition(local);
  pn_condition_set_name(c, condition.c_str());
  pn_condition_set_description(c, description.c_str());
  pn_delivery_update(d, PN_REJECTED);
  pn_delivery_settle(d);
}

std::string not_stored(const std::string& what, const std::string& why) {
  return "The emulator could not write " + what + " to its journal (" + why + ")";
}

/// What a client's disposition asks for, read from the C API (the C++ API hides the flags,
/// annotations and condition). Throws DecodeError for values nested too deep or of odd types.
struct Outcome {
  std::uint64_t type = 0;
  std::string reason;
  std::string description;
  Value properties = Value::map({});
  bool undeliverable = false;
};

Outcome read_outcome(pn_delivery_t* delivery) {
  Outcome o;
  o.type = pn_delivery_remote_state(delivery);
  auto* remote = pn_delivery_remote(delivery);
  if (o.type == PN_REJECTED) {
    auto* condition = pn_disposition_condition(remote);
    Value info = amqp::read_data(pn_condition_info(condition));
    o.description = text_of(pn_condition_get_description(condition));
    if (info.type() == amqp::Type::kMap) {
      for (std::size_t i = 0; i < info.map_size(); ++i) {
        const auto& key = info.map_key(i);
        const auto& value = info.map_value(i);
        if (!key.is_text()) continue;
        if (key.as_bytes() == "DeadLetterReason") {
          if (value.is_text()) o.reason = value.as_bytes();
        } else if (key.as_bytes() == "DeadLetterErrorDescription") {
          if (value.is_text()) o.description = value.as_bytes();
        } else {
          o.properties.set(Value::string(key.as_bytes()), value);
        }
      }
    }
  } else if (o.type == PN_MODIFIED) {
    o.properties = amqp::read_data(pn_disposition_annotations(remote));
    o.undeliverable = pn_disposition_is_undeliverable(remote);
  }
  return o;
}

}  // namespace

void Server::on_delivery(pn_delivery_t* delivery) {
  auto* link = pn_delivery_link(delivery);
  auto* state = state_of(link);
  if (state == nullptr) return;
  // After this side's close frame no answer can reach the client: what arrives now is not
  // applied, so that nothing changes that the client was not told of (it tries again).
  if ((pn_connection_state(pn_session_connection(pn_link_session(link))) & PN_LOCAL_CLOSED) != 0) {
    return;
  }
  if (pn_link_is_receiver(link)) {
    on_incoming(link, *state, delivery);
  } else if (pn_delivery_updated(delivery)) {
    on_settlement(delivery);
  }
}

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
  pn_link_advance(link);
  pn_link_flow(link, kCreditWindow - pn_link_credit(link));

  // The buffer keeps its capacity for the link's next transfer.
  amqp::Message message;
  try {
    message = amqp::parse_message(state.buffer);
  } catch (const Error& e) {
    state.buffer.clear();
    settle_with_error(delivery, "amqp:decode-error",
                      std::string("The message could not be decoded: ") + e.what());
    return;
  }
  state.buffer.clear();
  if (state.buffer.capacity() > kKeptBuffer) std::string().swap(state.buffer);
  on_message(link, state, delivery, std::move(message));
}

void Server::on_message(pn_link_t* link, LinkState& state, pn_delivery_t* delivery,
                        amqp::Message message) {
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
      if (!message.data_sections.empty() && !message.value_body) {
        messages.reserve(message.data_sections.size());
        for (const auto& d : message.data_sections) {
          auto inner = amqp::parse_encoded_message(d);
          if (!inner) {
            messages.clear();  // not a batch: one message whose data looks otherwise
            break;
          }
          messages.push_back(std::move(*inner));
        }
      }
      if (messages.empty()) messages.push_back(std::move(message));
      broker_.send(*state.entity, std::move(messages), now_ms());
      wake_receivers();  // receivers are pumped in later turns, after this one is written
      after_write([delivery](const std::optional<std::string>& refused) {
        if (refused) {
          return settle_with_error(
              delivery, "amqp:internal-error",
              not_stored("the message", *refused) + "; it was not accepted. Send it again.");
        }
        pn_delivery_update(delivery, PN_ACCEPTED);
        pn_delivery_settle(delivery);
      });
      return;
    }
    default:
      settle_with_error(delivery, "amqp:not-allowed", "This link does not take messages.");
  }
}

void Server::on_settlement(pn_delivery_t* delivery) {
  auto* ds = static_cast<DeliveryState*>(pn_delivery_get_context(delivery));
  if (ds == nullptr) {
    if (pn_delivery_remote_state(delivery) != 0 || pn_delivery_settled(delivery)) {
      pn_delivery_settle(delivery);
    }
    return;
  }
  if (pn_delivery_remote_state(delivery) == 0 && !pn_delivery_settled(delivery)) {
    return;  // Nothing decided yet.
  }
  Outcome outcome;
  try {
    outcome = read_outcome(delivery);
  } catch (const Error& e) {
    // Nothing is applied: the message keeps its lock until it expires (or $management settles
    // it by lock token), as when a disposition is lost.
    delete ds;
    pn_delivery_set_context(delivery, nullptr);
    if (pn_delivery_settled(delivery)) {
      pn_delivery_settle(delivery);
    } else {
      settle_with_error(delivery, "amqp:decode-error",
                        std::string("The disposition could not be decoded: ") + e.what());
    }
    return;
  }
  auto now = now_ms();
  std::optional<Failure> failure;
  Entity& entity = *ds->entity;
  switch (outcome.type) {
    case PN_ACCEPTED:
      failure = broker_.complete(entity, ds->lock, now);
      break;
    case PN_REJECTED:
      failure = broker_.dead_letter(entity, ds->lock, outcome.reason, outcome.description,
                                    outcome.properties, now);
      break;
    case PN_RELEASED:
      failure = broker_.release(entity, ds->lock, now);
      break;
    case PN_MODIFIED:
      if (outcome.undeliverable) {
        failure = broker_.defer(entity, ds->lock, outcome.properties, now);
      } else {
        failure = broker_.abandon(entity, ds->lock, outcome.properties, now);
      }
      break;
    default:
      // Settled without an outcome: treat as released.
      failure = broker_.release(entity, ds->lock, now);
      break;
  }
  delete ds;
  pn_delivery_set_context(delivery, nullptr);
  if (outcome.type != PN_ACCEPTED) wake_receivers();
  if (pn_delivery_settled(delivery)) {
    // Settled by the client first: no answer goes back.
    pn_delivery_settle(delivery);
    return;
  }
  if (failure) {
    settle_with_error(delivery, failure->condition, failure->description);
    return;
  }
  after_write([delivery, type = outcome.type](const std::optional<std::string>& refused) {
    if (refused) {
      return settle_with_error(delivery, "amqp:internal-error",
                               not_stored("the settlement", *refused) +
                                   "; the message is unlocked and will be delivered again.");
    }
    pn_delivery_update(delivery, type);
    pn_delivery_settle(delivery);
  });
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

std::size_t Server::unsettled_deliveries(const Entity& entity) {
  std::size_t n = 0;
  for (auto* c : connections_) {
    for (auto* l = pn_link_head(c, 0); l != nullptr; l = pn_link_next(l, 0)) {
      for (auto* d = pn_unsettled_head(l); d != nullptr; d = pn_unsettled_next(d)) {
        auto* ds = static_cast<DeliveryState*>(pn_delivery_get_context(d));
        if (ds != nullptr && ds->entity == &entity) ++n;
      }
    }
  }
  return n;
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

}  // namespace metro::emulator
