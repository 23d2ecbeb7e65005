#pragma once

// Automatic lock renewal (ReceiverOptions::auto_renew_lock_for): the locks of messages a
// receiver has handed out and not yet settled are renewed over $management when less than half
// their time, or 10 s, is left, for up to the configured time after each arrived.
// Event thread only.

#include <chrono>
#include <map>
#include <memory>

#include <metro/sb/client.hpp>

#include "../amqp/value.hpp"

struct pn_delivery_t;

namespace metro::sb::detail {

class ManagementLink;

class LockRenewer {
 public:
  /// Renews through `management` for up to `renew_for` (0: never).
  LockRenewer(std::shared_ptr<ManagementLink> management, milliseconds renew_for)
      : management_(std::move(management)), renew_for_(renew_for) {}

  bool enabled() const { return management_ != nullptr && renew_for_.count() > 0; }
  /// A message arrived holding `lock` until `locked_until`.
  void hold(pn_delivery_t* delivery, const amqp::Uuid& lock, Clock::time_point locked_until);
  /// It was settled (or its lock is gone).
  void release(pn_delivery_t* delivery) { held_.erase(delivery); }
  void clear() { held_.clear(); }
  /// Starts the renewals that are due.
  void renew(std::chrono::steady_clock::time_point deadline);

 private:
  struct Held {
    amqp::Uuid lock;
    Clock::time_point locked_until;
    Clock::time_point received;
    bool renewing = false;
  };
  std::shared_ptr<ManagementLink> management_;
  milliseconds renew_for_;
  // Shared with the renewals under way, which may answer after the receiver is gone.
  std::shared_ptr<std::map<pn_delivery_t*, Held>> held_ptr_ =
      std::make_shared<std::map<pn_delivery_t*, Held>>();
  std::map<pn_delivery_t*, Held>& held_ = *held_ptr_;
};

}  // namespace metro::sb::detail
