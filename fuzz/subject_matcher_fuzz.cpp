// Subject patterns and subjects on arbitrary input: the first line is a pattern (compiled as
// regex and as glob), the rest a subject; compile errors are InvalidArgument, matching never fails.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <metro/error.hpp>
#include <metro/routing/router.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto newline = input.find('\n');
  auto pattern = input.substr(0, newline);
  auto subject = newline == std::string_view::npos ? std::string_view{} : input.substr(newline + 1);
  using metro::routing::MatchKind;
  for (auto kind : {MatchKind::kExact, MatchKind::kRegex, MatchKind::kGlob}) {
    try {
      metro::routing::SubjectMatcher matcher(kind, pattern);
      (void)matcher.matches(subject);
    } catch (const metro::InvalidArgument&) {
    }
  }
  for (auto source :
       {metro::routing::SubjectSource::kBody, metro::routing::SubjectSource::kBodyThenProperty}) {
    (void)metro::routing::find_subject(source, input, std::string(pattern));
  }
  return 0;
}
