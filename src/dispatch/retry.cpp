#include <algorithm>

#include "retry.hpp"

namespace metro::dispatch {

std::optional<std::chrono::milliseconds> next_delay(const config::RetryOptions& retry, int attempt,
                                                    double jitter) {
  if (attempt >= retry.max_attempts) return std::nullopt;
  if (attempt <= retry.immediate_retries) return std::chrono::milliseconds(0);
  auto exponent = std::min(attempt - retry.immediate_retries - 1, 30);
  auto base = static_cast<double>(retry.backoff.count()) * static_cast<double>(1LL << exponent);
  auto capped = std::min(base, static_cast<double>(retry.max_backoff.count()));
  jitter = std::clamp(jitter, 0.0, 1.0);
  return std::chrono::milliseconds(static_cast<long long>(capped / 2 + jitter * capped / 2));
}

}  // namespace metro::dispatch
