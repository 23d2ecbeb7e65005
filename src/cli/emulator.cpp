#include <csignal>
#include <iostream>

#include <metro/config/config.hpp>
#include <metro/emulator/emulator.hpp>

#include "commands.hpp"

namespace metro::cli {

int run_emulator(const EmulatorCommand& command) {
  emulator::EmulatorOptions options;
  if (!command.config_path.empty()) {
    try {
      options.bus = emulator::load_bus_config(command.config_path);
    } catch (const config::ConfigError& e) {
      for (const auto& d : e.diagnostics()) std::cerr << d.to_string() << '\n';
      return kExitUsage;
    }
  }
  options.host = command.host;
  options.port = command.port;
  options.tls_port = command.tls_port;
  options.certificate_file = command.certificate_file;
  options.private_key_file = command.private_key_file;
  options.data_dir = command.data_dir;
  if (!command.latency.empty()) {
    auto latency = parse_duration(command.latency);
    if (!latency) {
      std::cerr << "metro emulator: --latency wants a duration such as 2ms or 10ms, not '"
                << command.latency << "'\n";
      return kExitUsage;
    }
    options.latency = *latency;
  }
  if (options.certificate_file.empty() != options.private_key_file.empty()) {
    std::cerr << "metro emulator: --cert and --key go together\n";
    return kExitUsage;
  }

  // Block the stop signals before any thread starts, then wait for one here.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  emulator::Emulator bus(options);
  try {
    bus.start();
  } catch (const Error& e) {
    std::cerr << "metro emulator: " << e.what() << '\n';
    return kExitFailure;
  }
  std::cout << "metro emulator listening: amqp=" << bus.port();
  if (auto tls = bus.tls_port()) {
    std::cout << " amqps=" << *tls << " cert=" << bus.certificate_file().string();
  }
  if (options.latency.count() > 0) std::cout << " latency=" << options.latency.count() << "ms";
  std::cout << std::endl;
  std::cout << "connection string: " << bus.connection_string() << std::endl;
  int received = 0;
  sigwait(&signals, &received);
  bus.stop();
  return kExitOk;
}

}  // namespace metro::cli
