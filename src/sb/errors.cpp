#include <metro/sb/errors.hpp>

namespace metro::sb {

void throw_for(const std::string& condition, const std::string& description, int status) {
  if (condition == "com.microsoft:message-lock-lost" ||
      condition == "com.microsoft:session-lock-lost" || status == 410) {
    throw LockLostError(condition, description, false);
  }
  if (condition == "amqp:not-found" || condition == "com.microsoft:message-not-found" ||
      status == 404) {
    throw NotFoundError(condition, description, false);
  }
  if (condition == "amqp:unauthorized-access" || condition == "com.microsoft:auth-failed" ||
      status == 401) {
    throw UnauthorizedError(condition, description, false);
  }
  if (condition == "com.microsoft:timeout" || status == 408) {
    throw TimeoutError(condition, description, true);
  }
  bool transient = condition == "com.microsoft:server-busy" || condition == "amqp:internal-error" ||
                   condition == "amqp:connection:forced" ||
                   condition == "amqp:link:detach-forced" || status == 503 || status == 500;
  throw ServiceBusError(condition, description, transient);
}

}  // namespace metro::sb
