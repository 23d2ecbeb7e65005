#pragma once

// A lean completed message keeps its handler runs on its own row, in one compact field, instead
// of a row of their own each. What both ledgers write there and read back.

#include <string>
#include <string_view>
#include <vector>

#include <metro/ledger/ledger.hpp>

namespace metro::ledger::detail {

/// At most this many runs stay on a lean row (a message that retried many times).
inline constexpr std::size_t kKeptRuns = 20;
/// The runs a lean row keeps, in the order they started: every one, or when there are more than
/// `kKeptRuns`, the last run (highest attempt) of each handler and the latest others up to
/// `kKeptRuns`.
std::vector<HandlerRun> runs_to_keep(std::vector<HandlerRun> runs);
/// `runs` as the compact field: per run, its handler, attempt, outcome, start, duration, retries,
/// error and task id; texts are length-prefixed, so any byte may be in them.
std::string encode_runs(const std::vector<HandlerRun>& runs);
/// The runs of a field `encode_runs` wrote; a damaged field gives the runs read before the damage.
std::vector<HandlerRun> decode_runs(std::string_view text);

}  // namespace metro::ledger::detail
