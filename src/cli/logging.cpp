#include "logging.hpp"

#include <cstdio>
#include <cstdlib>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <metro/ledger/ledger.hpp>
#include <metro/sb/connection_string.hpp>

#include "log_escape.hpp"

namespace metro::cli {
namespace {

std::string redacted(std::string_view payload) {
  std::string out(payload);
  if (payload.find("SharedAccess") != std::string_view::npos ||
      payload.find("sig=") != std::string_view::npos) {
    out = sb::redact_connection_string(out);
  }
  // A ledger URL's password (postgresql://user:password@…, password=…).
  if (out.find("postgres") != std::string::npos || out.find("assword") != std::string::npos) {
    out = ledger::redact_ledger_url(out);
  }
  return out;
}

void append(spdlog::memory_buf_t& dest, std::string_view text) {
  dest.append(text.data(), text.data() + text.size());
}

/// `%*`: the message, redacted, with control characters escaped and its length capped
/// (log_escape.hpp), so that no value inside it can start a line of its own.
template <log_escape::Style kStyle>
class SafeMessage : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm& /*tm*/,
              spdlog::memory_buf_t& dest) override {
    std::string text;
    log_escape::append(text, redacted(std::string_view(msg.payload.data(), msg.payload.size())),
                       kStyle);
    append(dest, text);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<SafeMessage>();
  }
};

/// True when stderr is the journal: systemd then sets JOURNAL_STREAM to its "device:inode".
bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long device = 0, inode = 0;
  char trailing = 0;
  if (std::sscanf(stream, "%llu:%llu%c", &device, &inode, &trailing) != 2) return false;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  return st.st_dev == device && st.st_ino == inode;
}

/// `%&` for the journal: the level as a syslog priority prefix (`<6>` for info), which journald
/// reads and strips; journald adds the time itself.
class SyslogPriority : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm& /*tm*/,
              spdlog::memory_buf_t& dest) override {
    constexpr std::string_view kPrefix[] = {"<7>", "<7>", "<6>", "<4>", "<3>", "<2>", "<6>"};
    auto level = static_cast<std::size_t>(msg.level);
    append(dest, kPrefix[level < std::size(kPrefix) ? level : 6]);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<SyslogPriority>();
  }
};

}  // namespace

std::optional<std::string> setup_logging(std::string_view level, LogFormat format) {
  auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    return "unknown log level '" + std::string(level) +
           "' (expected trace, debug, info, warn, error, critical or off)";
  }
  std::shared_ptr<spdlog::logger> logger;
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  if (format == LogFormat::kJson) {
    logger = spdlog::stderr_logger_mt("metro");
    formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
    formatter->add_flag<SafeMessage<log_escape::Style::kJson>>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","thread":%t,"message":"%*"})");
  } else if (stderr_is_journal()) {
    logger = spdlog::stderr_logger_mt("metro");
    // Escaped as in text logs: a newline would start an entry of its own in the journal.
    formatter->add_flag<SafeMessage<log_escape::Style::kText>>('*')
        .add_flag<SyslogPriority>('&')
        .set_pattern("%&%*");
  } else {
    logger = spdlog::stderr_color_mt("metro");
    formatter->add_flag<SafeMessage<log_escape::Style::kText>>('*').set_pattern(
        "%Y-%m-%d %H:%M:%S.%e %^%-5l%$ %*");
  }
  logger->set_formatter(std::move(formatter));
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
  return std::nullopt;
}

}  // namespace metro::cli
