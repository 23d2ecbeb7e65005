// metro::sb::Subscription: messages pushed to a callback on a thread of its own.

#include <spdlog/spdlog.h>

#include "handles.hpp"
#include "log_text.hpp"

namespace metro::sb {

Subscription& Subscription::operator=(Subscription&& other) noexcept {
  if (this != &other) {
    stop();
    state_ = std::move(other.state_);
  }
  return *this;
}

void Subscription::stop() {
  if (!state_) return;
  auto state = std::move(state_);
  state->stopping = true;
  if (state->thread.get_id() == std::this_thread::get_id()) {
    // From the callback: its thread ends when the callback returns, and holds the state till then.
    state->thread.detach();
  } else if (state->thread.joinable()) {
    state->thread.join();
  }
}

Subscription Receiver::subscribe(std::function<void(ReceivedMessage&)> handler, std::size_t batch) {
  auto state = std::make_shared<Subscription::State>();
  state->thread = std::thread([impl = impl_, state, handler = std::move(handler), batch] {
    Receiver receiver(impl);
    while (!state->stopping) {
      std::vector<ReceivedMessage> got;
      try {
        got = receiver.receive(batch, std::chrono::milliseconds(200));
      } catch (const ClientClosedError&) {
        return;  // nothing more will come
      } catch (const Error&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));  // reconnecting
        continue;
      }
      for (auto& m : got) {
        if (state->stopping) break;  // the rest stay locked, and are delivered again
        try {
          handler(m);
        } catch (const std::exception& e) {
          spdlog::warn(
              "sb: a subscription callback on {} threw for message {}: {}; the message stays "
              "locked until it is settled or its lock expires",
              printable(impl->link->address()), m.sequence_number, printable(e.what()));
        } catch (...) {
          spdlog::warn(
              "sb: a subscription callback on {} threw for message {}; the message stays locked "
              "until it is settled or its lock expires",
              printable(impl->link->address()), m.sequence_number);
        }
      }
    }
  });
  Subscription subscription;
  subscription.state_ = std::move(state);
  return subscription;
}

}  // namespace metro::sb
