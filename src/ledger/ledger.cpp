// What every ledger shares: names of states, cursors, opening by URL, copying, redaction.

#include <metro/ledger/ledger.hpp>

#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include "ledger_impl.hpp"

namespace metro::ledger {

using namespace detail;

std::string_view to_string(State state) { return kStates[static_cast<std::size_t>(state)]; }

std::optional<State> state_from_string(std::string_view text) {
  for (std::size_t i = 0; i < kStates.size(); ++i) {
    if (kStates[i] == text) return static_cast<State>(i);
  }
  return std::nullopt;
}

std::string_view to_string(HandlerRun::Outcome outcome) {
  return kOutcomes[static_cast<std::size_t>(outcome)];
}

std::string_view to_string(JobAction action) {
  return kJobActions[static_cast<std::size_t>(action)];
}

std::optional<JobAction> job_action_from_string(std::string_view text) {
  for (std::size_t i = 0; i < kJobActions.size(); ++i) {
    if (kJobActions[i] == text) return static_cast<JobAction>(i);
  }
  return std::nullopt;
}

std::string_view to_string(JobState state) { return kJobStates[static_cast<std::size_t>(state)]; }

namespace detail {

std::optional<HandlerRun::Outcome> outcome_from_string(std::string_view text) {
  for (std::size_t i = 0; i < kOutcomes.size(); ++i) {
    if (kOutcomes[i] == text) return static_cast<HandlerRun::Outcome>(i);
  }
  return std::nullopt;
}

bool instance_alive(const std::string& host, std::int64_t pid, std::int64_t heartbeat_ms,
                    std::int64_t lease_ms, std::int64_t now_ms) {
  if (heartbeat_ms + lease_ms < now_ms) return false;
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  if (host != name) return true;  // Another host's process: its heartbeat is all there is.
  if (pid == static_cast<std::int64_t>(::getpid())) return false;
  return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
}

std::string in_use_by(const std::string& id, const std::string& host, std::int64_t pid,
                      std::int64_t heartbeat_age_ms) {
  return "metro instance '" + id + "' (pid " + std::to_string(pid) + " on " + host +
         ", last heartbeat " + std::to_string(std::max<std::int64_t>(0, heartbeat_age_ms) / 1000) +
         " s ago)";
}

}  // namespace detail

namespace {

bool is_postgres(const std::string& url) {
  return url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
}

}  // namespace

std::unique_ptr<Ledger> open_ledger(const std::string& url, const OpenOptions& options) {
  constexpr std::string_view kSqlite = "sqlite://";
  if (url.rfind(kSqlite, 0) == 0 && url.size() > kSqlite.size()) {
    return open_sqlite_ledger(url.substr(kSqlite.size()), options);
  }
  if (is_postgres(url)) return open_postgres_ledger(url, options);
  throw InvalidArgument("a ledger URL must be sqlite://<file> or postgresql://… (got '" +
                        redact_ledger_url(url) + "')");
}

std::vector<MigrationStatus> pending_migrations(const std::string& url) {
  OpenOptions options;
  options.migrate = false;
  options.connections = 1;
  auto all = open_ledger(url, options)->migrations();
  std::vector<MigrationStatus> pending;
  for (auto& m : all) {
    if (!m.applied) pending.push_back(std::move(m));
  }
  return pending;
}

std::size_t copy_ledger(Ledger& from, Ledger& to,
                        const std::function<void(std::size_t)>& progress) {
  constexpr std::size_t kBatch = 500;
  Query q;
  q.limit = kBatch;
  std::size_t copied = 0;
  while (true) {
    auto page = from.list(q);
    std::vector<std::pair<DeferredMessage, std::vector<HandlerRun>>> rows;
    rows.reserve(page.items.size());
    for (auto& m : page.items) {
      auto runs = from.runs(m.key);
      rows.emplace_back(std::move(m), std::move(runs));
    }
    if (!rows.empty()) to.restore(rows);
    copied += rows.size();
    if (progress) progress(copied);
    if (!page.next) break;
    q.after = page.next;
  }
  return copied;
}

std::string redact_ledger_url(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  auto lower_at = [&](std::size_t at, std::string_view word) {
    if (at + word.size() > text.size()) return false;
    for (std::size_t k = 0; k < word.size(); ++k) {
      if (std::tolower(static_cast<unsigned char>(text[at + k])) != word[k]) return false;
    }
    return true;
  };
  auto ends_value = [](char c) {
    return c == '&' || c == ' ' || c == '\n' || c == '\t' || c == ';' || c == '\'' || c == '"';
  };
  while (i < text.size()) {
    // postgresql://user:PASSWORD@host — the userinfo ends at the last '@' before the path.
    std::size_t scheme = 0;
    if (lower_at(i, "postgresql://")) scheme = 13;
    if (scheme == 0 && lower_at(i, "postgres://")) scheme = 11;
    if (scheme != 0) {
      auto start = i + scheme;
      auto end = start;
      while (end < text.size() && text[end] != '/' && text[end] != '?' && !ends_value(text[end])) {
        ++end;
      }
      auto authority = text.substr(start, end - start);
      auto at = authority.rfind('@');
      out.append(text.substr(i, scheme));
      if (at != std::string_view::npos) {
        auto userinfo = authority.substr(0, at);
        auto colon = userinfo.find(':');
        if (colon != std::string_view::npos) {
          out.append(userinfo.substr(0, colon + 1)).append("***");
        } else {
          out.append(userinfo);
        }
        out.append(authority.substr(at));
      } else {
        out.append(authority);
      }
      i = end;
      continue;
    }
    // password=VALUE, as a URL parameter or a keyword/value setting.
    if (lower_at(i, "password") && i + 8 < text.size()) {
      auto j = i + 8;
      while (j < text.size() && text[j] == ' ') ++j;
      if (j < text.size() && text[j] == '=') {
        ++j;
        while (j < text.size() && text[j] == ' ') ++j;
        out.append(text.substr(i, j - i));
        auto end = j;
        if (j < text.size() && (text[j] == '\'' || text[j] == '"')) {
          end = text.find(text[j], j + 1);  // A quoted value runs to its closing quote.
          end = end == std::string_view::npos ? text.size() : end + 1;
        } else {
          while (end < text.size() && !ends_value(text[end])) ++end;
        }
        if (end > j) out.append("***");
        i = end;
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

}  // namespace metro::ledger
