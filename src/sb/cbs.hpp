#pragma once

// Claims-based security over the `$cbs` node: a SAS token is put for each entity before its
// links attach, cached until a quarter of its life is left, and put again before it expires.
// A put-token that gets no reply fails its waiters at their deadline and is forgotten, so the
// next attach of that entity tries again. Event thread only.

#include <chrono>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include <metro/sb/client.hpp>

#include "links.hpp"

struct pn_link_t;
struct pn_delivery_t;
struct pn_session_t;

namespace metro::sb::detail {

class Cbs {
 public:
  explicit Cbs(Engine& engine) : engine_(engine) {}

  /// Opens the $cbs link pair on a new connection.
  void open(pn_session_t* session);
  /// The connection is gone: waiters fail with `error`, tokens are forgotten.
  void lost(const std::exception_ptr& error);
  bool owns(pn_link_t* link) const {
    return link != nullptr && (link == sender_ || link == receiver_);
  }

  /// `done` once a valid token for `path` is in place (now, when one is cached).
  void authorize(const std::string& path, Done done, TimePoint deadline);
  /// Puts again the tokens that are due; fails put-tokens past their deadline.
  void tick(TimePoint now, Unanswered& unanswered);

  void on_flow(pn_link_t* link);
  void on_delivery(pn_delivery_t* delivery);

 private:
  void put_token(const std::string& audience, TimePoint deadline);
  bool due(Clock::time_point expiry) const;

  Engine& engine_;
  pn_link_t* sender_ = nullptr;
  pn_link_t* receiver_ = nullptr;
  std::string reply_to_;
  std::map<std::string, Clock::time_point> tokens_;   // audience -> expiry
  std::map<std::string, std::vector<Done>> waiting_;  // audience -> attaches waiting
  Outbox outbox_;
  Requests requests_;
};

}  // namespace metro::sb::detail
