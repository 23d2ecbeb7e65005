#pragma once

// The subcommands of `metro`. Each returns the process exit code.

#include <string>

namespace metro::cli {

/// Exit codes shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;  ///< Bad arguments or an invalid config.

/// `metro check --config FILE`: validates a config, prints a summary or every error.
int run_check(const std::string& config_path);

}  // namespace metro::cli
