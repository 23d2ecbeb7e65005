#pragma once

// The heartbeat: one thread that, every third of the lease, renews this instance's heartbeat row
// and the leases of the messages it works on (with its in-flight count for the API), so that
// instances sharing the ledger know it is alive and leave its messages alone. A heartbeat that
// cannot be written is a ledger that cannot be written (intake pauses until it can).
// Thread-safety: `start`/`stop` from the service's thread.

#include <chrono>
#include <thread>

#include <metro/ledger/ledger.hpp>

#include "../common/thread_annotations.hpp"
#include "in_flight.hpp"
#include "ledger_health.hpp"

namespace metro::dispatch {

class Heartbeat {
 public:
  Heartbeat(ledger::Ledger& ledger, InFlight& in_flight, LedgerHealth& health,
            std::chrono::milliseconds lease)
      : ledger_(ledger), in_flight_(in_flight), health_(health), period_(lease / 3) {}
  ~Heartbeat() { stop(); }
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  void start();
  /// Ends the thread. Idempotent.
  void stop();

 private:
  void loop(const std::stop_token& stop);

  ledger::Ledger& ledger_;
  InFlight& in_flight_;
  LedgerHealth& health_;
  const std::chrono::milliseconds period_;
  Mutex mutex_;
  CondVar wake_;
  std::jthread thread_;
};

/// `<host name>-<pid>`: this process's instance id when the config names none.
std::string default_instance_id();
/// This host's name.
std::string host_name();

}  // namespace metro::dispatch
