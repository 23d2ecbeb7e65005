#pragma once

// What the SQLite and PostgreSQL ledgers share: state and outcome names, the
// states whose rows are in flight (leased), and the time representation (milliseconds since the
// epoch in a 64-bit integer, so both ledgers order and compare times the same way).

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <metro/ledger/ledger.hpp>

namespace metro::ledger::detail {

inline constexpr std::array<std::string_view, 8> kStates = {
    "deferring", "deferred", "running", "retrying", "failed", "completed", "dead-lettered",
    "orphaned"};
inline constexpr std::array<std::string_view, 4> kOutcomes = {"running", "succeeded", "failed",
                                                              "retry"};
inline constexpr std::array<std::string_view, 5> kJobStates = {"queued", "running", "completed",
                                                               "cancelled", "failed"};
inline constexpr std::array<std::string_view, 3> kJobActions = {"retry", "complete",
                                                                "dead-letter"};

/// States of a message some instance is working on: their rows carry a lease it renews.
inline constexpr const char* kLeasedStates = "('deferring', 'deferred', 'running', 'retrying')";

inline std::int64_t to_ms(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}
inline Clock::time_point from_ms(std::int64_t ms) {
  return Clock::time_point(std::chrono::milliseconds(ms));
}

inline bool is_final(State s) { return s == State::kCompleted || s == State::kDeadLettered; }
/// Parked or settled: nobody is working on it, so its lease is let go.
inline bool releases_lease(State s) {
  return is_final(s) || s == State::kFailed || s == State::kOrphaned;
}

std::optional<HandlerRun::Outcome> outcome_from_string(std::string_view text);

/// Why the reason to supersede a record: a new message with this sequence number.
inline constexpr const char* kSupersededNote =
    "superseded: a new message arrived with this sequence number (the subscription's sequence "
    "numbers started again), so this one is no longer in Service Bus";

/// Whether the instance row (`host`, `pid`, last `heartbeat` with its lease) belongs to a
/// process that is still running: its heartbeat is recent and, on this host, the pid exists.
bool instance_alive(const std::string& host, std::int64_t pid, std::int64_t heartbeat_ms,
                    std::int64_t lease_ms, std::int64_t now_ms);
/// Why `me` cannot join while `other` (its id, host, pid, heartbeat age) is alive.
std::string in_use_by(const std::string& id, const std::string& host, std::int64_t pid,
                      std::int64_t heartbeat_age_ms);

std::unique_ptr<Ledger> open_sqlite_ledger(const std::string& path, const OpenOptions& options);
std::unique_ptr<Ledger> open_postgres_ledger(const std::string& url, const OpenOptions& options);

}  // namespace metro::ledger::detail
