// Request/reply exchanges: $cbs put-token (SAS validation) and an entity's $management
// operations, with the reply routed to the link the client reads replies from.

#include <proton/session.h>
#include <proton/terminus.h>
#include <spdlog/spdlog.h>

#include <metro/sb/sas.hpp>

#include "../sb/log_text.hpp"
#include "management.hpp"
#include "server.hpp"

namespace metro::emulator {
namespace {

using amqp::Value;

/// Operations that only read: their replies need not wait for the journal.
bool reads_only(const std::string& operation) {
  return operation == "com.microsoft:peek-message" || operation == "com.microsoft:enumerate-rules";
}

}  // namespace

// Finds the link a reply goes out on (servicebus-amqp §2.2): the outgoing link whose target is
// the request's reply-to, else whose name is, else the one attached to the same node.
void Server::reply(pn_link_t* request_link, const amqp::Message& request, Value app_properties,
                   Value body) {
  auto* session = pn_link_session(request_link);
  auto* connection = pn_session_connection(session);
  if (state_of(connection) == nullptr) return;  // the connection closed in this turn
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
    spdlog::warn("emulator: no link to send a reply on (the request names reply-to of {} bytes)",
                 reply_to.size());
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
    spdlog::info("emulator: a put-token was refused: {}", sb::printable(e.what()));
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
  if (result.status == 200) wake_receivers();
  auto answer = [this, link, request,
                 result = std::move(result)](const std::optional<std::string>& refused) mutable {
    if (refused) {
      result = {500,
                "The emulator could not write the change to its journal (" + *refused +
                    "); it was not made.",
                "amqp:internal-error", Value::null()};
    }
    auto app =
        Value::map({{Value::string("statusCode"), Value::int_(result.status)},
                    {Value::string("statusDescription"), Value::string(result.description)}});
    if (!result.condition.empty()) {
      app.set(Value::string("errorCondition"), Value::symbol(result.condition));
    }
    if (const auto* tracking = request.application_properties.find("com.microsoft:tracking-id")) {
      app.set(Value::string("com.microsoft:tracking-id"), *tracking);
    }
    reply(link, request, std::move(app), std::move(result.body));
  };
  if (reads_only(operation) || result.status >= 300) {
    answer(std::nullopt);
  } else {
    after_write(std::move(answer));
  }
}

}  // namespace metro::emulator
