// Connection strings and SAS tokens on arbitrary text: parse or InvalidArgument; redaction never
// fails and never leaves a key behind.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <metro/error.hpp>
#include <metro/sb/connection_string.hpp>
#include <metro/sb/sas.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    auto cs = metro::sb::parse_connection_string(text);
    (void)cs.audience("entity");
    if (cs.has_key()) {
      // The key's own value never survives redaction. (A key of a few characters, or one that
      // also stands inside another value, may still occur elsewhere in the text; and a key with
      // a `*` may be spelt again by the text before it plus the `***` marker.)
      const auto& key = cs.shared_access_key;
      auto redacted = metro::sb::redact_connection_string(text);
      auto first = text.find(key);
      bool once =
          first != std::string_view::npos && text.find(key, first + 1) == std::string_view::npos;
      if (key.size() >= 12 && once && key.find('*') == std::string::npos &&
          redacted.find(key) != std::string::npos) {
        std::abort();
      }
    }
  } catch (const metro::InvalidArgument&) {
  }
  try {
    auto token = metro::sb::parse_sas_token(text);
    (void)metro::sb::verify_sas_token(token, "key", "sb://h/e", std::chrono::system_clock::now());
  } catch (const metro::InvalidArgument&) {
  }
  (void)metro::sb::url_decode(text);
  return 0;
}
