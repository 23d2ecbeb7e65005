// SQL filter expressions from arbitrary text: they parse or throw InvalidArgument, and a parsed
// filter evaluates against a message without failing.
#include <cstddef>
#include <cstdint>
#include <string>

#include "../src/emulator/filter.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string expression(reinterpret_cast<const char*>(data), size);
  metro::amqp::Message message;
  message.set_property(metro::amqp::kSubject, metro::amqp::Value::string("order/1"));
  message.application_properties = metro::amqp::Value::map(
      {{metro::amqp::Value::string("quantity"), metro::amqp::Value::int_(12)},
       {metro::amqp::Value::string("colour"), metro::amqp::Value::string("red")}});
  try {
    auto filter = metro::emulator::sql_filter(expression);
    (void)filter->matches(message);
    (void)filter->describe();
  } catch (const metro::InvalidArgument&) {
  }
  return 0;
}
