#pragma once

// The running services of this process, so that `metro::complete_deferred_message` finds the
// one consuming a subscription. The registry's lock is held only to find it, never while
// completing (which reads the ledger).
// Thread-safety: every function may be called from any thread.

#include <chrono>
#include <future>
#include <memory>
#include <string_view>

#include <metro/ledger/ledger.hpp>

namespace metro::dispatch {

/// What the registry holds: a running service, as far as completing goes.
class Completer {
 public:
  virtual ~Completer() = default;
  virtual bool consumes(std::string_view topic, std::string_view subscription) const = 0;
  virtual std::future<void> complete(const ledger::MessageKey& key) = 0;
};

void register_completer(const std::shared_ptr<Completer>& completer);
void unregister_completer(const Completer* completer);
/// The running service consuming `topic`/`subscription` (any case), or null.
std::shared_ptr<Completer> find_completer(std::string_view topic, std::string_view subscription);

}  // namespace metro::dispatch
