// AMQP values and messages from arbitrary bytes, as they arrive from the network: decoding either
// succeeds or throws DecodeError, however deep or long the input claims to be; what decodes
// encodes again to the same bytes on a second round; a message's sections split and join again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "../src/amqp/message.hpp"
#include "../src/amqp/value.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    std::size_t consumed = 0;
    auto value = metro::amqp::decode(bytes, &consumed);
    if (consumed == 0 || consumed > size) std::abort();
    // Proton normalises some encodings (list8 vs list32…): compare after one round trip.
    auto once = metro::amqp::encode(value);
    auto again = metro::amqp::encode(metro::amqp::decode(once));
    if (once != again) std::abort();
    (void)value.to_string();
  } catch (const metro::amqp::DecodeError&) {
  }
  try {
    auto message = metro::amqp::parse_message(bytes);
    (void)message.body_bytes();
    (void)metro::amqp::encode_message(message, true, true);
  } catch (const metro::amqp::DecodeError&) {
  }
  return 0;
}
