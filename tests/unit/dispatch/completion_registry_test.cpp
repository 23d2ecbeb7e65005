// The registry behind metro::complete_deferred_message: found by name in any case, and its lock
// is not held while a service completes (which reads the ledger and may take long).
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include <metro/dispatch/service.hpp>

#include "../../../src/dispatch/completion_registry.hpp"
#include "../../../src/dispatch/naming.hpp"

namespace metro::dispatch {
namespace {

using namespace std::chrono_literals;

/// Completes by looking itself up again (and so needs the registry's lock while completing).
class Reentrant : public Completer {
 public:
  bool consumes(std::string_view topic, std::string_view subscription) const override {
    return same_name(topic, "orders") && same_name(subscription, "billing");
  }
  std::future<void> complete(const ledger::MessageKey& key) override {
    ++calls;
    EXPECT_EQ(find_completer(key.topic, key.subscription).get(), this);
    std::promise<void> done;
    done.set_value();
    return done.get_future();
  }
  int calls = 0;
};

TEST(CompletionRegistry, FindsByNameInAnyCaseAndCompletesWithoutItsLock) {
  auto completer = std::make_shared<Reentrant>();
  register_completer(completer);
  auto done = std::async(std::launch::async, [] {
    metro::complete_deferred_message(7, "ORDERS", "Billing");
  });
  ASSERT_EQ(done.wait_for(10s), std::future_status::ready) << "the registry's lock was held";
  done.get();
  EXPECT_EQ(completer->calls, 1);
  EXPECT_THROW(metro::complete_deferred_message(7, "orders", "other"), UnknownMessageError);
  unregister_completer(completer.get());
  EXPECT_THROW(metro::complete_deferred_message(7, "orders", "billing"), UnknownMessageError);
}

}  // namespace
}  // namespace metro::dispatch
