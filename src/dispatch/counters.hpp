#pragma once

// The service's counters: atomics any thread bumps, and dead-letters per reason.

#include <atomic>
#include <cstdint>
#include <string>

#include <metro/dispatch/service.hpp>

namespace metro::dispatch {

/// Why metro dead-lettered a message, as `metro_messages_dead_lettered_total{reason}` labels it.
enum class DeadLetterCause { kNoHandler, kMalformedBody, kHandlerFailed, kOperator };

inline const char* label_of(DeadLetterCause cause) {
  switch (cause) {
    case DeadLetterCause::kNoHandler:
      return "NoHandler";
    case DeadLetterCause::kMalformedBody:
      return "MalformedBody";
    case DeadLetterCause::kHandlerFailed:
      return "HandlerFailed";
    case DeadLetterCause::kOperator:
      return "operator";
  }
  return "operator";
}

struct ServiceCounters {
  std::atomic<std::uint64_t> received{0}, routed{0}, deferred{0}, completed{0}, failed{0},
      retries{0}, no_match{0}, malformed{0};
  std::atomic<std::uint64_t> dead_lettered[4] = {0, 0, 0, 0};  // By DeadLetterCause.

  void dead_letter(DeadLetterCause cause, std::uint64_t n = 1) {
    dead_lettered[static_cast<int>(cause)] += n;
  }

  Counters snapshot() const {
    Counters c;
    c.received = received;
    c.routed = routed;
    c.deferred = deferred;
    c.completed = completed;
    c.failed = failed;
    c.retries = retries;
    c.no_match = no_match;
    c.malformed = malformed;
    for (int i = 0; i < 4; ++i) {
      auto n = dead_lettered[i].load();
      c.dead_lettered_by_reason[label_of(static_cast<DeadLetterCause>(i))] = n;
      c.dead_lettered += n;
    }
    return c;
  }
};

}  // namespace metro::dispatch
