// $management requests from arbitrary bytes: the first byte picks the operation, the rest is
// decoded as the request body — or, with bit 0x40 set, as a whole request message (operation
// and body read from it, as the emulator does). Every request gets a reply; nothing throws or
// crashes, however deep the body nests.
#include <cstddef>
#include <cstdint>
#include <string>

#include "../src/amqp/message.hpp"
#include "../src/emulator/broker.hpp"
#include "../src/emulator/management.hpp"

namespace {

metro::emulator::BusConfig bus() {
  metro::emulator::BusConfig config;
  config.queues.push_back({"q", {}});
  metro::emulator::TopicOptions topic{"t", {}, {}};
  topic.subscriptions.push_back({"s", {}, {}});
  config.topics.push_back(topic);
  return config;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const char* kOperations[] = {
      "com.microsoft:peek-message",       "com.microsoft:receive-by-sequence-number",
      "com.microsoft:update-disposition", "com.microsoft:renew-lock",
      "com.microsoft:schedule-message",   "com.microsoft:cancel-scheduled-message",
      "com.microsoft:add-rule",           "com.microsoft:remove-rule",
      "com.microsoft:enumerate-rules",    "com.microsoft:unknown"};
  if (size == 0) return 0;
  static metro::emulator::Broker broker(bus());
  auto* queue = broker.find("q");
  auto* subscription = broker.find("t/Subscriptions/s");
  static bool seeded = false;
  if (!seeded) {
    metro::amqp::Message m;
    m.value_body = metro::amqp::Value::string("seed");
    broker.send(*queue, {m, m}, 1);
    seeded = true;
  }
  std::string operation = kOperations[data[0] % 10];
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  metro::amqp::Value body;
  try {
    if ((data[0] & 0x40) != 0) {
      auto request = metro::amqp::parse_message(rest);
      if (const auto* op = request.application_properties.find("operation");
          op != nullptr && op->is_text()) {
        operation = op->as_bytes();
      }
      body = request.value_body.value_or(metro::amqp::Value::null());
    } else {
      body = metro::amqp::decode(rest);
    }
  } catch (const metro::Error&) {
    return 0;
  }
  auto* entity = (data[0] & 0x80) != 0 ? subscription : queue;
  (void)metro::emulator::handle_management(broker, *entity, operation, body, 1000);
  return 0;
}
