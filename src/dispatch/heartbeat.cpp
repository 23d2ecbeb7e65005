#include "heartbeat.hpp"

#include <unistd.h>

#include <spdlog/spdlog.h>

#include "naming.hpp"

namespace metro::dispatch {

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "localhost";
  return name;
}

std::string default_instance_id() { return host_name() + "-" + std::to_string(::getpid()); }

void Heartbeat::start() {
  thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
}

void Heartbeat::stop() {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  { MutexLock lock(mutex_); }
  wake_.notify_all();
  thread_.join();
}

void Heartbeat::loop(const std::stop_token& stop) {
  bool failing = false;
  while (!stop.stop_requested()) {
    {
      MutexLock lock(mutex_);
      wake_.wait_for(lock, stop, period_, [] { return false; });
    }
    if (stop.stop_requested()) break;
    try {
      ledger_.heartbeat(in_flight_.size());
      if (failing) spdlog::info("ledger: heartbeat written again");
      failing = false;
      health_.succeeded();
    } catch (const Error& e) {
      if (!failing) {
        spdlog::warn("ledger: cannot write the heartbeat ({}); other instances may take over this "
                     "one's messages once its lease lapses",
                     log_value(e.what()));
      }
      failing = true;
      health_.failed(e.what());
    }
  }
}

}  // namespace metro::dispatch
