// The config loader on arbitrary text: it must answer with a Config or a ConfigError, nothing else.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <metro/config/config.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  metro::config::Environment env = [](std::string_view name) -> std::optional<std::string> {
    if (name == "CS") {
      return "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v;"
             "UseDevelopmentEmulator=true";
    }
    return std::nullopt;
  };
  try {
    (void)metro::config::parse_config(text, "fuzz.toml", env);
  } catch (const metro::config::ConfigError&) {
  }
  return 0;
}
