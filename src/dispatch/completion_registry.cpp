#include "completion_registry.hpp"

#include <algorithm>
#include <vector>

#include "../common/thread_annotations.hpp"

namespace metro::dispatch {
namespace {

Mutex registry_mutex;
std::vector<std::weak_ptr<Completer>> registry GUARDED_BY(registry_mutex);

}  // namespace

void register_completer(const std::shared_ptr<Completer>& completer) {
  MutexLock lock(registry_mutex);
  registry.push_back(completer);
}

void unregister_completer(const Completer* completer) {
  MutexLock lock(registry_mutex);
  std::erase_if(registry, [&](const std::weak_ptr<Completer>& w) {
    auto p = w.lock();
    return !p || p.get() == completer;
  });
}

std::shared_ptr<Completer> find_completer(std::string_view topic, std::string_view subscription) {
  MutexLock lock(registry_mutex);
  for (const auto& w : registry) {
    auto p = w.lock();
    if (p && p->consumes(topic, subscription)) return p;
  }
  return nullptr;
}

}  // namespace metro::dispatch
