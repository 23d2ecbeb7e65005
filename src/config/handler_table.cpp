#include "handler_table.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <string>

namespace metro::config {

using settings::line_of;
using settings::TableReader;
using settings::type_name;

bool is_celery_name(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(),
                                      [](unsigned char c) { return c > 0x20 && c != 0x7f; });
}

namespace {

std::string default_handler_name(const HandlerOptions& h) {
  switch (h.kind) {
    case HandlerKind::kFunction:
      return h.function;
    case HandlerKind::kExec:
      return std::filesystem::path(h.exec.front()).filename().string();
    case HandlerKind::kHttp:
      return h.http;
    case HandlerKind::kPython:
      return h.python;
    case HandlerKind::kCelery:
      return h.celery;
  }
  return h.function;
}

void report_ways(TableReader& r, int ways) {
  if (ways == 0) {
    r.context().error(r.line(), r.key_path("handler"),
                      "a handler needs one way to run: handler = \"function\", exec = [\"cmd\"], "
                      "http = \"http://…\", python = \"module.function\" or celery = "
                      "\"task.name\"");
  } else {
    r.context().error(r.line(), r.key_path("handler"),
                      "a handler runs exactly one way, but this one sets " + std::to_string(ways) +
                          " of handler, exec, http, python and celery");
  }
}

/// A dotted Python path to a function: `package.module.function`.
bool is_python_path(std::string_view path) {
  bool start = true;
  int parts = 1;
  for (char c : path) {
    if (c == '.') {
      if (start) return false;
      start = true;
      ++parts;
      continue;
    }
    bool letter = std::isalpha(static_cast<unsigned char>(c)) != 0 || c == '_';
    if (!letter && (start || std::isdigit(static_cast<unsigned char>(c)) == 0)) return false;
    start = false;
  }
  return !start && parts >= 2;
}

/// `python`, `celery`, and the keys only they take (`queue`, `priority`); counts `ways`.
bool read_celery_kinds(TableReader& r, HandlerOptions& h, int& ways) {
  bool ok = true;
  if (auto path = r.string("python")) {
    ++ways;
    h.kind = HandlerKind::kPython;
    h.python = *path;
    if (!is_python_path(*path)) {
      r.invalid("python",
                "expected the dotted path of a Python function such as "
                "\"myapp.handlers.my_func\", got \"" +
                    *path + "\"");
      ok = false;
    }
  }
  if (auto name = r.string("celery")) {
    ++ways;
    h.kind = HandlerKind::kCelery;
    h.celery = *name;
    if (!is_celery_name(*name)) {
      r.invalid("celery",
                "expected the name a Celery task is registered under such as "
                "\"myapp.tasks.handle\" (no spaces), got \"" +
                    *name + "\"");
      ok = false;
    }
  }
  bool sends_tasks = h.kind == HandlerKind::kPython || h.kind == HandlerKind::kCelery;
  if (auto queue = r.string("queue")) {
    h.queue = *queue;
    if (!is_celery_name(*queue)) {
      r.invalid("queue", "expected a Celery queue name (no spaces), got \"" + *queue + "\"");
      ok = false;
    } else if (!sends_tasks) {
      r.invalid("queue", "only python and celery handlers send to a Celery queue");
      ok = false;
    }
  }
  if (auto priority = r.integer("priority", 0, 9)) {
    h.priority = static_cast<int>(*priority);
    if (!sends_tasks) {
      r.invalid("priority", "only python and celery handlers send Celery messages with a priority");
      ok = false;
    }
  }
  return ok;
}

}  // namespace

std::optional<HandlerOptions> read_handler(TableReader& r) {
  HandlerOptions h;
  h.line = r.line();
  bool ok = true;
  auto subject = r.string("subject", true);
  auto regex = r.boolean("regex").value_or(false);
  auto glob = r.boolean("glob").value_or(false);
  if (regex && glob) {
    r.invalid("glob", "regex and glob are mutually exclusive (choose one way to match)");
    ok = false;
  }
  h.match = regex ? routing::MatchKind::kRegex
                  : (glob ? routing::MatchKind::kGlob : routing::MatchKind::kExact);
  if (subject) {
    h.subject = *subject;
    if (subject->empty()) {
      r.invalid("subject", "expected a non-empty subject");
      ok = false;
    } else if (h.match != routing::MatchKind::kExact) {
      try {
        routing::SubjectMatcher matcher(h.match, h.subject);
      } catch (const InvalidArgument& e) {
        r.invalid("subject", e.what());
        ok = false;
      }
    }
  } else {
    ok = false;
  }

  int ways = 0;
  if (auto f = r.string("handler")) {
    ++ways;
    h.kind = HandlerKind::kFunction;
    h.function = *f;
    if (f->empty()) {
      r.invalid("handler", "expected the name of a registered function, got \"\"");
      ok = false;
    }
  }
  if (const auto* a = r.array("exec", "an array of strings (command and arguments)")) {
    ++ways;
    h.kind = HandlerKind::kExec;
    if (a->empty()) {
      r.invalid("exec", "expected a command and its arguments, got an empty array");
      ok = false;
    }
    for (std::size_t i = 0; i < a->size(); ++i) {
      const auto* s = (*a)[i].as_string();
      auto key = "exec[" + std::to_string(i) + "]";
      if (s == nullptr) {
        r.context().error(line_of((*a)[i]), r.key_path(key),
                          "expected a string, got " + type_name((*a)[i]));
        ok = false;
      } else if (auto v = r.interpolated(key, s->get(), line_of((*a)[i]))) {
        h.exec.push_back(*v);
      } else {
        ok = false;
      }
    }
    if (!h.exec.empty() && h.exec.front().empty()) {
      r.invalid("exec", "expected a command, got \"\" as its first element");
      ok = false;
    }
  } else if (r.node("exec") != nullptr) {
    ++ways;
    ok = false;
  }
  if (auto url = r.string("http")) {
    ++ways;
    h.kind = HandlerKind::kHttp;
    h.http = *url;
    if (url->rfind("http://", 0) != 0 && url->rfind("https://", 0) != 0) {
      r.invalid("http", "expected an http:// or https:// URL, got \"" + *url + "\"");
      ok = false;
    }
  }
  if (!read_celery_kinds(r, h, ways)) ok = false;
  if (ways != 1) {
    report_ways(r, ways);
    ok = false;
  }

  if (auto name = r.string("name")) {
    if (name->empty()) {
      r.invalid("name", "expected a non-empty name");
      ok = false;
    }
    h.name = *name;
  }
  read_choice(r, "completion", {"auto", "explicit"}, {Completion::kAuto, Completion::kExplicit},
              h.completion);
  read_choice(r, "on_failure", {"park", "dead-letter"},
              {FailurePolicy::kPark, FailurePolicy::kDeadLetter}, h.on_failure);
  if (auto v = r.duration("timeout")) {
    if (v->count() == 0) {
      r.invalid("timeout", "expected a timeout above zero");
      ok = false;
    }
    h.timeout = *v;
  }
  if (auto v = r.integer("max_attempts", 1, 1000)) h.retry.max_attempts = static_cast<int>(*v);
  if (auto v = r.integer("immediate_retries", 0, 1000)) {
    h.retry.immediate_retries = static_cast<int>(*v);
  }
  if (auto v = r.duration("backoff")) h.retry.backoff = *v;
  if (auto v = r.duration("max_backoff")) h.retry.max_backoff = *v;
  if (h.retry.max_backoff < h.retry.backoff) {
    r.invalid("max_backoff", "expected max_backoff to be at least backoff");
    ok = false;
  }
  r.finish();
  if (ok && h.name.empty()) h.name = default_handler_name(h);
  return ok ? std::optional<HandlerOptions>(std::move(h)) : std::nullopt;
}

}  // namespace metro::config
