#include "lock_renewer.hpp"

#include "codec.hpp"
#include "links.hpp"

namespace metro::sb::detail {

using amqp::Value;

void LockRenewer::hold(pn_delivery_t* delivery, const amqp::Uuid& lock,
                       Clock::time_point locked_until) {
  if (!enabled()) return;
  held_[delivery] = {lock, locked_until, Clock::now(), false};
}

void LockRenewer::renew(std::chrono::steady_clock::time_point deadline) {
  if (!enabled()) return;
  auto now = Clock::now();
  std::weak_ptr<std::map<pn_delivery_t*, Held>> weak = held_ptr_;
  for (auto& [delivery, held] : held_) {
    if (held.renewing || now - held.received > renew_for_) continue;
    auto left = held.locked_until - now;
    if (left > std::chrono::seconds(10) && left > (held.locked_until - held.received) / 2) continue;
    held.renewing = true;
    auto body = Value::map({{Value::string("lock-tokens"),
                             Value::array(amqp::Type::kUuid, {Value::uuid(held.lock)})}});
    management_->request(
        "com.microsoft:renew-lock", std::move(body),
        [weak, delivery = delivery, lock = held.lock](std::exception_ptr error,
                                                      codec::Reply reply) {
          auto all = weak.lock();
          if (!all) return;  // the receiver is gone
          auto it = all->find(delivery);
          if (it == all->end() || it->second.lock != lock) return;  // settled meanwhile
          it->second.renewing = false;
          const auto* expirations = reply.body.find("expirations");
          if (!error && reply.status == 200 && expirations != nullptr &&
              expirations->type() == amqp::Type::kArray && !expirations->items().empty() &&
              expirations->items().front().type() == amqp::Type::kTimestamp) {
            it->second.locked_until = codec::from_ms(expirations->items().front().as_timestamp());
          } else {
            all->erase(it);  // Lost: settling will say so.
          }
        },
        deadline);
  }
}

}  // namespace metro::sb::detail
