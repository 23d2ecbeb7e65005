#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <optional>

#include <spdlog/spdlog.h>

#include <metro/admin/server.hpp>
#include <metro/config/config.hpp>
#include <metro/emulator/emulator.hpp>

#include "commands.hpp"

namespace metro::cli {
namespace {

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

  int received = 0;
  sigwait(&signals, &received);
  spdlog::info(
      "{}: stopping (handlers get {} s to finish)", received == SIGINT ? "SIGINT" : "SIGTERM",
      std::chrono::duration_cast<std::chrono::seconds>(config.metro.shutdown_grace).count());
  if (api) api->stop();
  bool finished = service->stop(config.metro.shutdown_grace);
  if (!finished) {
    // A handler thread cannot be interrupted; its message stays deferred and runs again at the
    // next start. Leave without waiting for it.
    spdlog::shutdown();
    std::_Exit(kExitOk);
  }
  service.reset();
  if (bus) bus->stop();
  spdlog::info("stopped");
  return kExitOk;
}

}  // namespace metro::cli
