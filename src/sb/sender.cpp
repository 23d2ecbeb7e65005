// metro::sb::Sender: sends on its link, schedules over $management.

#include "../common/fresh_exception.hpp"
#include "codec.hpp"
#include "completion.hpp"
#include "handles.hpp"

namespace metro::sb {

using amqp::Value;

const std::string& Sender::entity() const { return impl_->link->address(); }

std::future<void> Sender::send_async(std::vector<Message> messages) {
  auto sent = std::make_shared<detail::Completion<void>>();
  auto future = sent->future();
  std::vector<std::string> encoded;
  encoded.reserve(messages.size());
  for (const auto& m : messages) encoded.push_back(codec::encode(m));
  auto deadline = impl_->engine->deadline();
  bool posted = impl_->engine->post(
      [link = impl_->link, encoded = std::move(encoded), sent, deadline]() mutable {
        link->send(
            std::move(encoded),
            [sent](std::exception_ptr error) {
              if (error) return sent->fail(std::move(error));
              sent->set();
            },
            deadline);
      });
  if (!posted) {
    sent->fail(fresh_exception(
        [&] { return detail::Engine::closed_error("sending to " + impl_->link->address()); }));
  }
  return future;
}

void Sender::send(const Message& message) { send(std::vector<Message>{message}); }

void Sender::send(const std::vector<Message>& messages) {
  auto future = send_async(messages);
  impl_->engine->wait(future, "sending to " + impl_->link->address());
}

std::vector<std::int64_t> Sender::schedule(const std::vector<Message>& messages,
                                           Clock::time_point at) {
  std::vector<Value> list;
  for (auto m : messages) {
    m.scheduled_enqueue_time = at;
    if (!m.message_id) m.message_id = amqp::to_string(amqp::random_uuid());
    list.push_back(Value::map({{Value::string("message"), Value::binary(codec::encode(m))},
                               {Value::string("message-id"), Value::string(*m.message_id)}}));
  }
  auto reply = detail::run_management(
      *impl_->engine, impl_->management.get(), "com.microsoft:schedule-message",
      Value::map({{Value::string("messages"), Value::list(std::move(list))}}));
  std::vector<std::int64_t> numbers;
  if (const auto* n = reply.find("sequence-numbers"); n != nullptr && !n->is_null()) {
    for (const auto& v : n->items()) numbers.push_back(v.as_int64());
  }
  return numbers;
}

void Sender::cancel_scheduled(const std::vector<std::int64_t>& sequence_numbers) {
  detail::run_management(
      *impl_->engine, impl_->management.get(), "com.microsoft:cancel-scheduled-message",
      Value::map({{Value::string("sequence-numbers"), codec::sequence_array(sequence_numbers)}}));
}

}  // namespace metro::sb
