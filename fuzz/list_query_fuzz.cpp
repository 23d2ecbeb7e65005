// The filters of GET /api/v1/deferred, from an untrusted query string, through to the SQLite
// ledger: bad input must be an InvalidArgument, never a crash or another exception.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include <unistd.h>

#include <metro/ledger/ledger.hpp>

#include "query.hpp"

namespace {

metro::ledger::Ledger& ledger() {
  static auto instance = [] {
    auto path = std::filesystem::temp_directory_path() /
                ("metro-fuzz-ledger-" + std::to_string(::getpid()) + ".db");
    std::filesystem::remove(path);
    auto l = metro::ledger::open_ledger("sqlite://" + path.string());
    for (std::int64_t i = 1; i <= 20; ++i) {
      metro::ledger::DeferredMessage m;
      m.key = {"orders", i % 2 ? "billing" : "shipping", i};
      m.subject = i % 3 ? "Orders/Created" : "Orders/Paid/Card";
      m.state = static_cast<metro::ledger::State>(i % 8);
      l->record(m);
    }
    return l;
  }();
  return *instance;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  std::multimap<std::string, std::string> params;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find('&', start);
    if (end == std::string::npos) end = text.size();
    auto pair = text.substr(start, end - start);
    auto eq = pair.find('=');
    params.emplace(pair.substr(0, eq), eq == std::string::npos ? "" : pair.substr(eq + 1));
    start = end + 1;
  }
  try {
    auto query = metro::admin::parse_list_query(params, std::chrono::system_clock::now());
    auto page = ledger().list(query);
    if (page.next) (void)metro::admin::decode_cursor(metro::admin::encode_cursor(*page.next));
  } catch (const metro::InvalidArgument&) {
    // A clear refusal is the expected answer to bad input.
  }
  return 0;
}
