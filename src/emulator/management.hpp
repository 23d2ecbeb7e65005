#pragma once

// The `$management` operations of an entity: decoding a request, running it on the broker,
// encoding the reply. No networking; the server routes requests and replies.

#include <string>

#include "../amqp/value.hpp"
#include "broker.hpp"

namespace metro::emulator {

struct ManagementReply {
  int status = 200;
  std::string description = "OK";
  std::string condition;  ///< Error condition symbol; empty on success.
  amqp::Value body;       ///< Map, or null for none.
};

/// Runs `operation` (e.g. `com.microsoft:peek-message`) with the request body `body` (a map) on
/// `entity`. Never throws for bad input: a malformed request gets a 400 reply that says why.
ManagementReply handle_management(Broker& broker, Entity& entity, const std::string& operation,
                                  const amqp::Value& body, TimeMs now);

}  // namespace metro::emulator
