#pragma once

// The JSON shapes of the API: a deferred message, a handler run, times, connection states.

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include <metro/ledger/ledger.hpp>
#include <metro/sb/client.hpp>

namespace metro::admin {

/// `2026-11-28T11:40:52.123Z`.
std::string iso_time(std::chrono::system_clock::time_point t);
std::string connection_state(sb::ConnectionState state);
/// A ledger row; with `body`, the body as JSON when it parses within json_bounds, else as a
/// string.
nlohmann::json message_json(const ledger::DeferredMessage& m, bool body);
nlohmann::json run_json(const ledger::HandlerRun& r);
nlohmann::json failure_group_json(const ledger::FailureGroup& g);
/// A bulk job: its counts, `pending` (total less done and failed) and its filter as JSON.
nlohmann::json job_json(const ledger::Job& j);

}  // namespace metro::admin
