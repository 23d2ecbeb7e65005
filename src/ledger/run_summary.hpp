#pragma once

// A lean completed message keeps its handler runs on its own row, collapsed to the last run of
// each handler, in one compact field. What both ledgers write there and read back.

#include <string>
#include <string_view>
#include <vector>

#include <metro/ledger/ledger.hpp>

namespace metro::ledger::detail {

/// The last run (highest attempt, then latest start) of each handler in `runs`, in the order of
/// their start.
std::vector<HandlerRun> last_run_of_each(const std::vector<HandlerRun>& runs);
/// `runs` as the compact field: per run, its handler, attempt, outcome, start, duration, retries,
/// error and task id; texts are length-prefixed, so any byte may be in them.
std::string encode_runs(const std::vector<HandlerRun>& runs);
/// The runs of a field `encode_runs` wrote; a damaged field gives the runs read before the damage.
std::vector<HandlerRun> decode_runs(std::string_view text);

}  // namespace metro::ledger::detail
