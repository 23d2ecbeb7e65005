// A received message's body on arbitrary input, as intake sees it: classification (bounded
// before parsing), the task JSON a handler gets, and the ledger row. Oracles: nothing throws or
// crashes; a body intake accepts is routed with a subject; the task JSON always parses again, with
// `message` the body's JSON (an object for routed work) or the body as a string.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include <metro/config/config.hpp>
#include <metro/sb/client.hpp>

#include "../src/dispatch/intake.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace metro::dispatch;
  static const auto* options = [] {
    auto* o = new metro::config::SubscriptionOptions;
    o->topic_name = "orders";
    o->subscription_name = "billing";
    return o;
  }();
  static const auto* router = [] {
    auto* r = new metro::routing::Router;
    r->add(metro::routing::SubjectMatcher(metro::routing::MatchKind::kGlob, "**"));
    return r;
  }();
  metro::sb::ReceivedMessage m;
  m.sequence_number = 1;
  m.body.assign(reinterpret_cast<const char*>(data), size);
  auto c = classify(m, *options, *router, std::chrono::system_clock::now());
  Task task = c.base;
  task.body = m.body;
  auto json = nlohmann::json::parse(to_json(task));  // Throws (a crash here) if not JSON.
  const auto& message = json.at("message");
  if (c.kind == Classification::Kind::kWork) {
    if (c.handlers.empty() || !message.is_object()) __builtin_trap();
  } else if (!message.is_string() && c.kind == Classification::Kind::kMalformed) {
    __builtin_trap();  // What intake refuses is never handed over as parsed JSON.
  }
  (void)row_of(task, {}, metro::ledger::State::kDeferring, 64);
  return 0;
}
