#include <iostream>

#include <spdlog/spdlog.h>

#include <metro/config/config.hpp>
#include <metro/sb/client.hpp>

#include "../dispatch/trace.hpp"
#include "commands.hpp"

namespace metro::cli {

int run_publish(const PublishCommand& command) {
  std::string connection_string = command.connection_string;
  if (connection_string.empty()) {
    if (command.config_path.empty()) {
      std::cerr << "metro publish: give --config (to use its connection string for the topic) or "
                   "--connection-string\n";
      return kExitUsage;
    }
    config::Config cfg;
    try {
      cfg = config::load_config(command.config_path);
    } catch (const config::ConfigError& e) {
      for (const auto& d : e.diagnostics()) {
        std::cerr << sb::redact_connection_string(d.to_string()) << '\n';
      }
      return kExitUsage;
    }
    for (const auto& s : cfg.subscriptions) {
      if (s.topic_name == command.topic) {
        connection_string = s.connection_string;
        break;
      }
    }
    if (connection_string.empty()) {
      std::cerr << "metro publish: " << command.config_path << " has no subscription on topic '"
                << command.topic << "' whose connection string could be used\n";
      return kExitUsage;
    }
  }
  sb::Message message;
  message.body = command.body;
  if (!command.subject.empty()) message.subject = command.subject;
  if (!command.correlation_id.empty()) message.correlation_id = command.correlation_id;
  message.content_type = "application/json";
  if (!command.traceparent.empty() && !dispatch::parse_traceparent(command.traceparent)) {
    std::cerr << "metro publish: --traceparent must be a W3C traceparent "
                 "(00-<32 hex digits>-<16 hex digits>-<2 hex digits>)\n";
    return kExitUsage;
  }
  try {
    sb::ClientOptions options;
    options.operation_timeout = std::chrono::seconds(30);
    sb::Client client(connection_string, options);
    auto sender = client.create_sender(command.topic);
    for (int i = 0; i < command.count; ++i) {
      // Each message starts a trace of its own, unless one was given to continue.
      message.application_properties["traceparent"] =
          command.traceparent.empty() ? dispatch::new_traceparent() : command.traceparent;
      sender.send(message);
    }
    std::cout << "published " << command.count << (command.count == 1 ? " message" : " messages")
              << " to " << command.topic
              << (command.subject.empty() ? "" : " with subject " + command.subject) << '\n';
    return kExitOk;
  } catch (const Error& e) {
    std::cerr << "metro publish: " << sb::redact_connection_string(e.what()) << '\n';
    return kExitFailure;
  }
}

}  // namespace metro::cli
