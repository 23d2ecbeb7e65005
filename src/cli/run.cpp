#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <metro/admin/server.hpp>
#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/emulator/emulator.hpp>

#include "../celery/celery_handler.hpp"
#include "commands.hpp"

namespace metro::cli {
namespace {

using std::chrono::microseconds;

/// Tells systemd how `metro run` is doing (Type=notify): ready once every subscription is
/// connected, a status line, watchdog pings, stopping. Outside systemd (no NOTIFY_SOCKET) every
/// call does nothing.
class SystemdNotifier {
 public:
  SystemdNotifier() {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) watchdog_ = microseconds(usec);
  }

  /// Called every turn of the main loop with the subscriptions' states.
  void update(const std::vector<dispatch::SubscriptionStatus>& subscriptions) {
    std::string waiting;
    for (const auto& s : subscriptions) {
      if (s.state == sb::ConnectionState::kConnected) continue;
      waiting += (waiting.empty() ? "" : ", ") + s.topic + "/" + s.subscription;
      if (!s.state_reason.empty()) waiting += " (" + s.state_reason + ")";
    }
    std::string status =
        waiting.empty() ? "consuming " + std::to_string(subscriptions.size()) + " subscription(s)"
                        : "waiting for " + waiting;
    if (waiting.empty() && !ready_) {
      ready_ = true;
      notify("READY=1\nSTATUS=" + status);
    } else if (status != status_) {
      notify("STATUS=" + status);
    }
    status_ = status;
    // The ping says that this loop turns and the service answers.
    auto now = std::chrono::steady_clock::now();
    if (watchdog_ && now >= next_ping_) {
      notify("WATCHDOG=1");
      next_ping_ = now + *watchdog_ / 2;
    }
  }

  /// How long the main loop may wait for a signal before its next turn.
  microseconds poll_interval() const {
    microseconds interval = ready_ ? std::chrono::seconds(1) : std::chrono::milliseconds(50);
    if (watchdog_) interval = std::min(interval, *watchdog_ / 4);
    return interval;
  }

  /// Stopping: handlers get `grace`, then pending settlements a little more.
  void stopping(std::chrono::milliseconds grace) {
    auto extend = std::chrono::duration_cast<microseconds>(grace + std::chrono::seconds(30));
    notify("STOPPING=1\nSTATUS=stopping\nEXTEND_TIMEOUT_USEC=" + std::to_string(extend.count()));
  }

 private:
  static void notify(const std::string& state) { sd_notify(0, state.c_str()); }

  std::optional<microseconds> watchdog_;
  std::chrono::steady_clock::time_point next_ping_{};
  bool ready_ = false;
  std::string status_;
};

bool sends_celery_tasks(const config::Config& config) {
  for (const auto& s : config.subscriptions) {
    for (const auto& h : s.handlers) {
      if (h.kind == config::HandlerKind::kPython || h.kind == config::HandlerKind::kCelery) {
        return true;
      }
    }
  }
  return false;
}

/// Waits up to `timeout` for one of `signals`; the signal, or 0.
int wait_for_signal(const sigset_t& signals, microseconds timeout) {
  timespec ts{};
  ts.tv_sec = static_cast<std::time_t>(timeout.count() / 1'000'000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000 * 1000);
  int received = sigtimedwait(&signals, nullptr, &ts);
  return received > 0 ? received : 0;
}

/// The topics and subscriptions a metro config consumes, with default settings: what
/// `metro run --emulator` hosts.
emulator::BusConfig bus_config_for(const config::Config& config) {
  emulator::BusConfig bus;
  for (const auto& s : config.subscriptions) {
    auto it = std::find_if(bus.topics.begin(), bus.topics.end(),
                           [&](const emulator::TopicOptions& t) { return t.name == s.topic_name; });
    if (it == bus.topics.end()) {
      bus.topics.push_back({s.topic_name, {}, {}});
      it = std::prev(bus.topics.end());
    }
    emulator::SubscriptionOptions sub;
    sub.name = s.subscription_name;
    it->subscriptions.push_back(std::move(sub));
  }
  return bus;
}

}  // namespace

int run_service(const RunCommand& command,
                const std::map<std::string, dispatch::Function>& functions) {
  config::Config config;
  try {
    config = config::load_config(command.config_path);
  } catch (const config::ConfigError& e) {
    for (const auto& d : e.diagnostics()) std::cerr << d.to_string() << '\n';
    return kExitUsage;
  }

  // Block the stop signals before any thread starts, then wait for one here.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::optional<emulator::Emulator> bus;
  if (command.emulator) {
    emulator::EmulatorOptions options;
    options.port = command.emulator_port;
    options.data_dir = command.emulator_data_dir;
    options.bus = bus_config_for(config);
    bus.emplace(options);
    bus->start();
    for (auto& sub : config.subscriptions) {
      sub.connection_string = bus->connection_string();
      sub.connection = sb::parse_connection_string(sub.connection_string);
    }
    std::cout << "metro emulator listening: amqp=" << bus->port() << std::endl;
    std::cout << "connection string: " << bus->connection_string() << std::endl;
  }

  dispatch::ServiceOptions options;
  options.functions = functions;
  if (sends_celery_tasks(config)) {
    // One Celery client for every python and celery handler. Credentials Redis refuses, or a
    // server that is not Redis, stop metro here; a Redis that is merely down does not (the
    // attempts fail as retryable until it is back).
    try {
      auto celery = std::make_shared<celery::CeleryHandlers>(config.celery);
      auto unreachable = celery->verify();
      if (!unreachable.empty()) {
        spdlog::warn("celery: not reachable yet ({}); tasks are tried again until it is",
                     celery::redact_url_passwords(unreachable));
      }
      options.handler_factory = std::move(celery);
    } catch (const Error& e) {
      std::cerr << "metro run: [celery]: " << celery::redact_url_passwords(e.what()) << '\n';
      return kExitUsage;
    }
  }
  std::optional<dispatch::Service> service;
  try {
    service.emplace(config, options);
    service->start();
  } catch (const InvalidArgument& e) {
    std::cerr << "metro run: " << e.what() << '\n';
    return kExitUsage;
  }
  std::optional<admin::Server> api;
  if (config.admin.enabled) {
    api.emplace(*service, config.admin);
    api->start();
    auto host = config.admin.listen.substr(0, config.admin.listen.rfind(':'));
    std::cout << "metro admin listening: http://" << host << ":" << api->port() << "/" << std::endl;
  }
  std::cout << "metro running: subscriptions=" << config.subscriptions.size()
            << " workers=" << config.metro.workers << std::endl;

  SystemdNotifier systemd;
  int received = 0;
  while (received == 0) {
    systemd.update(service->subscriptions());
    received = wait_for_signal(signals, systemd.poll_interval());
  }
  systemd.stopping(config.metro.shutdown_grace);
  spdlog::info(
      "{}: stopping (handlers get {} s to finish)", received == SIGINT ? "SIGINT" : "SIGTERM",
      std::chrono::duration_cast<std::chrono::seconds>(config.metro.shutdown_grace).count());
  if (api) api->stop();
  // Runs past the grace period are interrupted (their messages stay deferred for the next start)
  // and every thread of the service is joined before it is destroyed.
  service->stop(config.metro.shutdown_grace);
  service.reset();
  if (bus) bus->stop();
  spdlog::info("stopped");
  return kExitOk;
}

}  // namespace metro::cli
