#pragma once

// The subcommands of `metro`. Each returns the process exit code.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <metro/dispatch/service.hpp>

namespace metro::cli {

/// Exit codes shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;  ///< Bad arguments or an invalid config.

/// `metro check --config FILE`: validates a config, prints a summary or every error.
int run_check(const std::string& config_path);

struct RunCommand {
  std::string config_path;
  bool emulator = false;
  std::uint16_t emulator_port = 5672;
  std::string emulator_data_dir;
};

/// `metro run`: the service, until SIGINT or SIGTERM; then a graceful stop.
int run_service(const RunCommand& command,
                const std::map<std::string, dispatch::Function>& functions);

struct DeferredCommand {
  /// list, show, retry, complete, dead-letter, groups, jobs, job, cancel. retry, complete and
  /// dead-letter without a sequence number act in bulk on what the filters match (a job).
  std::string action;
  bool bulk = false;
  std::string group;  ///< A failure group's id (bulk actions, list).
  bool dry_run = false;
  bool detach = false;  ///< Bulk: print the job and return instead of following it.
  std::string job_id;   ///< job, cancel.
  std::string url = "http://127.0.0.1:8080";
  std::string token;
  bool json = false;
  std::string topic;  ///< A filter for list; the message's for the others.
  std::string subscription;
  std::int64_t sequence_number = 0;
  std::string state;
  std::string subject;
  std::string older_than;
  int limit = 50;
  std::string after;
  std::string reason = "DeadLetteredByOperator";
  std::string description;
};

/// `metro deferred …`: the deferred-message API of a running metro.
int run_deferred(const DeferredCommand& command);

struct EmulatorCommand {
  std::string config_path;
  std::string host = "127.0.0.1";
  std::uint16_t port = 5672;
  std::optional<std::uint16_t> tls_port;
  std::string certificate_file;
  std::string private_key_file;
  std::string data_dir;
  std::string latency;  ///< A duration ("2ms"); empty: none.
};

struct PublishCommand {
  std::string config_path;
  std::string connection_string;
  std::string topic;
  std::string subject;
  std::string body;
  std::string correlation_id;
  std::string traceparent;  ///< Empty: each message starts a trace.
  int count = 1;
};

/// `metro publish`: sends a message to a topic, with the connection string of the config's
/// subscription on it (or a given one).
int run_publish(const PublishCommand& command);

struct LedgerCommand {
  std::string action;  ///< migrate, copy
  std::string config_path;
  bool dry_run = false;
  std::string from;  ///< copy: ledger URLs (`${VAR}` allowed)
  std::string to;
};

/// `metro ledger migrate|copy`: the ledger's schema migrations, and copying a whole ledger.
int run_ledger(const LedgerCommand& command);

/// `metro import-django settings.json`: the original's METRO settings (as JSON) as a metro config
/// on stdout; notes on stderr.
int run_import_django(const std::string& settings_path);

/// `metro emulator`: runs the local Service Bus until SIGINT or SIGTERM.
int run_emulator(const EmulatorCommand& command);

}  // namespace metro::cli
