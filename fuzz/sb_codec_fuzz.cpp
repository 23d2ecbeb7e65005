// The client's codec from arbitrary bytes, as a peer could send them: a received message, a
// $management or $cbs reply and what is read out of it. Decoding succeeds or throws a
// metro::Error; nothing crashes, however the bytes nest.
#include <cstddef>
#include <cstdint>
#include <string>

#include "../src/amqp/message.hpp"
#include "../src/sb/codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  (void)metro::sb::codec::correlation_id_of(bytes);
  try {
    auto message = metro::amqp::parse_message(bytes);
    auto received = metro::sb::codec::decode_received(message);
    (void)received.body.size();
    auto reply = metro::sb::codec::reply_of(message);
    try {
      (void)metro::sb::codec::messages_of(reply.body, true);
    } catch (const metro::Error&) {
    }
    try {
      (void)metro::sb::codec::rules_of(reply.body);
    } catch (const metro::Error&) {
    }
  } catch (const metro::Error&) {
  }
  return 0;
}
