// metro::App: the `metro` command line (parses arguments, sets up logging, runs one
// subcommand), with the C++ handlers a program registered.

#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <metro/app.hpp>
#include <metro/version.hpp>

#include "../common/json_bounds.hpp"
#include "commands.hpp"
#include "logging.hpp"

namespace metro {

App& App::handle(std::string name, std::function<void(Task&)> function) {
  functions_[std::move(name)] = [function = std::move(function)](const dispatch::Task& task) {
    Task full;
    static_cast<dispatch::Task&>(full) = task;
    // Within json_bounds only: a body nested deeper would be walked recursively when the
    // function copies or prints it. Otherwise, and when it is not JSON, it is the text.
    full.message = json_bounds::check(task.body)
                       ? nlohmann::json(nlohmann::json::value_t::discarded)
                       : nlohmann::json::parse(task.body, nullptr, false);
    if (full.message.is_discarded()) full.message = task.body;
    function(full);
  };
  return *this;
}

int App::main(int argc, char** argv) {
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
  // Options may follow the subcommand that does not define them: `metro deferred list --json`,
  // `metro deferred show T S N --url U`, `metro check --config F --log-level debug`. Subcommands
  // inherit this from their parent when they are added.
  app.fallthrough();

  std::string config_path;
  auto* check = app.add_subcommand("check", "Validate a config file and summarise it");
  check->add_option("-c,--config", config_path, "The config file (metro.toml)")
      ->required()
      ->envname("METRO_CONFIG");

  metro::cli::RunCommand run_command;
  auto* run = app.add_subcommand(
      "run", "Consume every subscription of the config: route, defer, run handlers, complete");
  run->add_option("-c,--config", run_command.config_path, "The config file (metro.toml)")
      ->required()
      ->envname("METRO_CONFIG");
  run->add_flag("--emulator", run_command.emulator,
                "Host the config's topics and subscriptions in an embedded emulator and use it");
  run->add_option("--emulator-port", run_command.emulator_port,
                  "Plain AMQP port of the embedded emulator; 0 picks one (default 5672)");
  run->add_option("--emulator-data-dir", run_command.emulator_data_dir,
                  "Folder for the embedded emulator's durable state (default: in memory)");

  metro::cli::DeferredCommand deferred_command;
  auto* deferred = app.add_subcommand(
      "deferred",
      "List, show, retry, complete or dead-letter deferred messages of a running metro");
  deferred->require_subcommand(1);
  deferred
      ->add_option("--url", deferred_command.url,
                   "metro's admin API (default http://127.0.0.1:8080)")
      ->envname("METRO_URL");
  deferred->add_option("--token", deferred_command.token, "A bearer token of [admin] tokens")
      ->envname("METRO_TOKEN");
  deferred->add_flag("--json", deferred_command.json, "Print the API's JSON instead of a table");
  auto* list = deferred->add_subcommand("list", "Deferred messages, filtered, a page at a time");
  list->add_option("--topic", deferred_command.topic, "Only this topic");
  list->add_option("--subscription", deferred_command.subscription, "Only this subscription");
  list->add_option("--state", deferred_command.state,
                   "deferring, deferred, running, retrying, failed, completed, dead-lettered or "
                   "orphaned");
  list->add_option("--subject", deferred_command.subject, "A subject prefix, or a glob with * ?");
  list->add_option("--older-than", deferred_command.older_than,
                   "Recorded longer ago than (10m, 2h)");
  list->add_option("--limit", deferred_command.limit, "Messages per page (1-1000, default 50)");
  list->add_option("--after", deferred_command.after, "The cursor the previous page printed");
  list->add_option("--group", deferred_command.group, "Only this failure group's messages");
  auto* show = deferred->add_subcommand("show", "One message: body, handler runs, errors");
  show->add_option("topic", deferred_command.topic, "Topic")->required();
  show->add_option("subscription", deferred_command.subscription, "Subscription")->required();
  show->add_option("sequence-number", deferred_command.sequence_number, "Sequence number")
      ->required();
  // With a sequence number: that message. Without: every message the filters match, as a job
  // (TOPIC and SUBSCRIPTION, when given, filter too).
  std::vector<std::pair<CLI::App*, CLI::Option*>> sequence_options;
  for (auto [name, help] :
       {std::pair{"retry",
                  "Run the handlers that have not succeeded again (one message, or in "
                  "bulk by filter or failure group)"},
        std::pair{"complete", "Complete the message(s) in Service Bus"},
        std::pair{"dead-letter", "Move the message(s) to the dead-letter queue"}}) {
    auto* sub = deferred->add_subcommand(name, help);
    sub->add_option("topic", deferred_command.topic, "Topic (in bulk: a filter)");
    sub->add_option("subscription", deferred_command.subscription,
                    "Subscription (in bulk: a filter)");
    sequence_options.emplace_back(
        sub, sub->add_option("sequence-number", deferred_command.sequence_number,
                             "Sequence number; without it, every message the filters match"));
    sub->add_option("--state", deferred_command.state,
                    "Bulk: deferred, retrying, failed or orphaned (default: all four)");
    sub->add_option("--subject", deferred_command.subject,
                    "Bulk: a subject prefix, or a glob with * ?");
    sub->add_option("--older-than", deferred_command.older_than,
                    "Bulk: recorded longer ago than this (10m, 2h)");
    sub->add_option("--group", deferred_command.group,
                    "Bulk: a failure group's id (metro deferred groups)");
    sub->add_flag("--dry-run", deferred_command.dry_run,
                  "Bulk: count the messages it would act on, and do nothing");
    sub->add_flag("--detach", deferred_command.detach,
                  "Bulk: print the job and return (metro deferred job ID follows it)");
    if (std::string(name) == "dead-letter") {
      sub->add_option("--reason", deferred_command.reason, "Dead-letter reason");
      sub->add_option("--description", deferred_command.description, "Dead-letter description");
    }
  }
  auto* groups = deferred->add_subcommand(
      "groups", "Failure groups: failed and retrying messages by subscription, handler and error");
  groups->add_option("--topic", deferred_command.topic, "Only this topic");
  groups->add_option("--subscription", deferred_command.subscription, "Only this subscription");
  deferred->add_subcommand("jobs", "Bulk jobs, newest first");
  auto* job = deferred->add_subcommand("job", "One bulk job: its progress and failures");
  job->add_option("id", deferred_command.job_id, "The job's id")->required();
  auto* cancel = deferred->add_subcommand("cancel", "Cancel a bulk job");
  cancel->add_option("id", deferred_command.job_id, "The job's id")->required();

  metro::cli::EmulatorCommand emulator_command;
  auto* emulator = app.add_subcommand(
      "emulator", "Run the local Service Bus emulator (plain AMQP, and TLS with --tls-port)");
  emulator->add_option("-c,--config", emulator_command.config_path,
                       "bus.toml: keys, queues, topics, subscriptions and rules");
  emulator->add_option("--host", emulator_command.host, "Address to listen on (default 127.0.0.1)");
  emulator->add_option("--port", emulator_command.port,
                       "Plain AMQP port; 0 picks one (default 5672)");
  emulator->add_option("--tls-port", emulator_command.tls_port, "AMQP over TLS port; 0 picks one");
  emulator->add_option("--cert", emulator_command.certificate_file,
                       "PEM certificate for TLS (default: a self-signed one is generated)");
  emulator->add_option("--key", emulator_command.private_key_file, "PEM private key for --cert");
  emulator->add_option("--data-dir", emulator_command.data_dir,
                       "Folder for durable state (default: in memory)");
  emulator->add_option("--latency", emulator_command.latency,
                       "Delay every frame the emulator sends by this much, e.g. 2ms (a cloud-like "
                       "round trip; default none)");

  metro::cli::PublishCommand publish_command;
  auto* publish = app.add_subcommand("publish", "Send a message to a topic");
  publish
      ->add_option("-c,--config", publish_command.config_path,
                   "metro.toml: the connection string of a subscription on the topic is used")
      ->envname("METRO_CONFIG");
  publish->add_option("--connection-string", publish_command.connection_string,
                      "Use this connection string instead of the config's");
  publish->add_option("-t,--topic", publish_command.topic, "The topic")->required();
  publish->add_option("-s,--subject", publish_command.subject, "The AMQP subject property");
  publish->add_option("-b,--body", publish_command.body, "The body (JSON text)")->required();
  publish->add_option("--correlation-id", publish_command.correlation_id, "The correlation id");
  publish->add_option("--traceparent", publish_command.traceparent,
                      "A W3C traceparent the message continues (default: a new trace each)");
  publish->add_option("-n,--count", publish_command.count, "How many copies to send (default 1)")
      ->check(CLI::Range(1, 1000000));

  metro::cli::LedgerCommand ledger_command;
  auto* ledger = app.add_subcommand(
      "ledger", "The ledger's schema migrations; copying a ledger (SQLite to PostgreSQL)");
  ledger->require_subcommand(1);
  auto* migrate = ledger->add_subcommand(
      "migrate", "Print the pending schema migrations of the config's ledger and apply them");
  migrate->add_option("-c,--config", ledger_command.config_path, "The config file (metro.toml)")
      ->required()
      ->envname("METRO_CONFIG");
  migrate->add_flag("--dry-run", ledger_command.dry_run, "Only print what is pending");
  auto* copy = ledger->add_subcommand(
      "copy", "Copy every message record, generation and handler run from one ledger to another");
  copy->add_option("--from", ledger_command.from, "sqlite://FILE or postgresql://… (${VAR} allowed)")
      ->required();
  copy->add_option("--to", ledger_command.to, "sqlite://FILE or postgresql://… (${VAR} allowed)")
      ->required();

  std::string django_settings;
  auto* import_django = app.add_subcommand(
      "import-django",
      "Convert the original's METRO settings (dumped as JSON) into a metro config on stdout");
  import_django
      ->add_option("settings", django_settings,
                   "settings.json: python manage.py shell -c \"from metro.django_settings import "
                   "dump; dump()\" > settings.json")
      ->required();

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
    if (run->parsed()) return metro::cli::run_service(run_command, functions_);
    if (deferred->parsed()) {
      for (auto* sub : deferred->get_subcommands()) deferred_command.action = sub->get_name();
      for (auto [sub, option] : sequence_options) {
        if (sub->parsed() && option->count() == 0) deferred_command.bulk = true;
      }
      return metro::cli::run_deferred(deferred_command);
    }
    if (ledger->parsed()) {
      for (auto* sub : ledger->get_subcommands()) ledger_command.action = sub->get_name();
      return metro::cli::run_ledger(ledger_command);
    }
    if (emulator->parsed()) return metro::cli::run_emulator(emulator_command);
    if (publish->parsed()) return metro::cli::run_publish(publish_command);
    if (import_django->parsed()) return metro::cli::run_import_django(django_settings);
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return metro::cli::kExitFailure;
  }
  return metro::cli::kExitUsage;
}

}  // namespace metro
