#pragma once

/// When a failed handler runs again: `immediate_retries` at once, then exponential backoff from
/// `backoff` doubling up to `max_backoff`, with jitter, until `max_attempts` runs were made.
/// Thread-safety: a policy is a value; `next_delay` is reentrant.

#include <chrono>
#include <optional>

#include <metro/config/config.hpp>

namespace metro::dispatch {

/// The delay before attempt `attempt + 1`, after attempt `attempt` (1-based) did not succeed;
/// nullopt when the attempts are used up. `jitter` in [0, 1) picks a point in the upper half of
/// the backoff (so retries of many messages spread out): delay = d/2 + jitter * d/2.
std::optional<std::chrono::milliseconds> next_delay(const config::RetryOptions& retry, int attempt,
                                                    double jitter);

}  // namespace metro::dispatch
