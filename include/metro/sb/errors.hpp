#pragma once

/// Errors of the Service Bus client, by category. Each carries the AMQP condition and the
/// service's description; `is_transient()` says whether trying again can help.
/// Thread-safety: immutable after construction.

#include <string>

#include <metro/error.hpp>

namespace metro::sb {

class ServiceBusError : public Error {
 public:
  ServiceBusError(std::string condition, const std::string& description, bool transient)
      : Error(condition.empty() ? description : condition + ": " + description, transient),
        condition_(std::move(condition)),
        description_(description) {}
  /// The AMQP error condition, e.g. `com.microsoft:message-lock-lost`; may be empty.
  const std::string& condition() const { return condition_; }
  const std::string& description() const { return description_; }

 private:
  std::string condition_;
  std::string description_;
};

/// The lock of a message is gone (expired, already settled, or its link/connection was lost).
class LockLostError : public ServiceBusError {
 public:
  using ServiceBusError::ServiceBusError;
};
/// The entity, or the message asked for by sequence number, does not exist.
class NotFoundError : public ServiceBusError {
 public:
  using ServiceBusError::ServiceBusError;
};
/// The credentials were refused.
class UnauthorizedError : public ServiceBusError {
 public:
  using ServiceBusError::ServiceBusError;
};
/// No answer within the operation's timeout. Transient.
class TimeoutError : public ServiceBusError {
 public:
  using ServiceBusError::ServiceBusError;
};
/// The connection dropped while the operation was under way. Transient.
class ConnectionLostError : public ServiceBusError {
 public:
  using ServiceBusError::ServiceBusError;
};

/// The client was closed (or destroyed): nothing more can be done with it or its senders and
/// receivers. Not transient.
class ClientClosedError : public ServiceBusError {
 public:
  explicit ClientClosedError(const std::string& description)
      : ServiceBusError("", description, false) {}
};

/// Builds the error of the right category for an AMQP condition (or a `$management` status).
[[noreturn]] void throw_for(const std::string& condition, const std::string& description,
                            int status = 0);

}  // namespace metro::sb
