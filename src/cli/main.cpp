// `metro`: the command line. Parses arguments, sets up logging, runs one subcommand.

#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <metro/version.hpp>

#include "commands.hpp"
#include "logging.hpp"

int main(int argc, char** argv) {
  using metro::cli::LogFormat;
  CLI::App app{
      "metro: consume Azure Service Bus topics: route by subject, defer, run handlers, "
      "complete; list and retry deferred messages.",
      "metro"};
  app.set_version_flag("--version", std::string("metro ") + metro::kVersion);
  std::string log_level = "info";
  LogFormat log_format = LogFormat::kText;
  app.add_option("--log-level", log_level,
                 "trace, debug, info, warn, error, critical or off (default info)")
      ->envname("METRO_LOG_LEVEL");
  app.add_option("--log-format", log_format, "text or json (default text)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, LogFormat>{{"text", LogFormat::kText}, {"json", LogFormat::kJson}}))
      ->envname("METRO_LOG_FORMAT");
  app.require_subcommand(1);

  std::string config_path;
  auto* check = app.add_subcommand("check", "Validate a config file and summarise it");
  check->add_option("-c,--config", config_path, "The config file (metro.toml)")
      ->required()
      ->envname("METRO_CONFIG");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return metro::cli::kExitUsage;
  }

  if (auto error = metro::cli::setup_logging(log_level, log_format)) {
    std::cerr << "metro: " << *error << '\n';
    return metro::cli::kExitUsage;
  }

  try {
    if (check->parsed()) return metro::cli::run_check(config_path);
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return metro::cli::kExitFailure;
  }
  return metro::cli::kExitUsage;
}
