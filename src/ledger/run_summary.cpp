#include "run_summary.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <map>
#include <optional>
#include <tuple>

#include "ledger_impl.hpp"

namespace metro::ledger::detail {

namespace {

void put_number(std::string& out, std::int64_t v) {
  out += std::to_string(v);
  out += ',';
}

void put_text(std::string& out, std::string_view text) {
  out += std::to_string(text.size());
  out += ':';
  out += text;
}

/// Reads what `put_number` and `put_text` wrote, never past the end.
class Reader {
 public:
  explicit Reader(std::string_view text) : text_(text) {}
  bool at_end() const { return pos_ >= text_.size(); }

  std::optional<std::int64_t> number(char end) {
    auto stop = text_.find(end, pos_);
    if (stop == std::string_view::npos) return std::nullopt;
    std::int64_t v = 0;
    auto [ptr, ec] = std::from_chars(text_.data() + pos_, text_.data() + stop, v);
    if (ec != std::errc() || ptr != text_.data() + stop) return std::nullopt;
    pos_ = stop + 1;
    return v;
  }

  std::optional<std::string> text() {
    auto size = number(':');
    if (!size || *size < 0 || static_cast<std::size_t>(*size) > text_.size() - pos_) {
      return std::nullopt;
    }
    std::string out(text_.substr(pos_, static_cast<std::size_t>(*size)));
    pos_ += static_cast<std::size_t>(*size);
    return out;
  }

 private:
  std::string_view text_;
  std::size_t pos_ = 0;
};

/// Milliseconds a time point holds without overflow (its nanoseconds fit in 64 bits).
constexpr std::int64_t kLatest = 9'000'000'000'000;

bool in_range(std::int64_t v, std::int64_t low, std::int64_t high) { return v >= low && v <= high; }

}  // namespace

std::vector<HandlerRun> runs_to_keep(std::vector<HandlerRun> runs) {
  // As the runs table lists them.
  auto by_start = [](const HandlerRun& a, const HandlerRun& b) {
    return std::tie(a.started, a.handler, a.attempt) < std::tie(b.started, b.handler, b.attempt);
  };
  std::stable_sort(runs.begin(), runs.end(), by_start);
  if (runs.size() <= kKeptRuns) return runs;
  // The last run of each handler stays; then the latest others, as room allows.
  std::map<std::string, std::size_t> last;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    auto [it, added] = last.try_emplace(runs[i].handler, i);
    if (!added && runs[i].attempt >= runs[it->second].attempt) it->second = i;
  }
  std::vector<bool> keep(runs.size(), false);
  std::size_t kept = 0;
  for (const auto& [handler, i] : last) {
    keep[i] = true;
    ++kept;
  }
  for (std::size_t i = runs.size(); i-- > 0 && kept < kKeptRuns;) {
    if (!keep[i]) {
      keep[i] = true;
      ++kept;
    }
  }
  std::vector<HandlerRun> out;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    if (keep[i]) out.push_back(std::move(runs[i]));
  }
  return out;
}

std::string encode_runs(const std::vector<HandlerRun>& runs) {
  std::string out;
  for (const auto& r : runs) {
    put_text(out, r.handler);
    put_number(out, r.attempt);
    put_number(out, static_cast<std::int64_t>(r.outcome));
    put_number(out, to_ms(r.started));
    put_number(out, r.finished ? to_ms(*r.finished) - to_ms(r.started) : -1);
    put_number(out, r.retries);
    put_text(out, r.error);
    put_text(out, r.task_id);
  }
  return out;
}

std::vector<HandlerRun> decode_runs(std::string_view text) {
  std::vector<HandlerRun> out;
  Reader in(text);
  while (!in.at_end()) {
    HandlerRun r;
    auto handler = in.text();
    auto attempt = in.number(',');
    auto outcome = in.number(',');
    auto started = in.number(',');
    auto took = in.number(',');
    auto retries = in.number(',');
    auto error = in.text();
    auto task_id = in.text();
    if (!handler || !attempt || !outcome || !started || !took || !retries || !error || !task_id ||
        *outcome < 0 || *outcome >= static_cast<std::int64_t>(kOutcomes.size()) ||
        !in_range(*attempt, 0, INT32_MAX) || !in_range(*retries, 0, INT32_MAX) ||
        !in_range(*started, -kLatest, kLatest) || !in_range(*took, -1, kLatest - *started)) {
      break;  // Damaged: what was read so far.
    }
    r.handler = std::move(*handler);
    r.attempt = static_cast<int>(*attempt);
    r.outcome = static_cast<HandlerRun::Outcome>(*outcome);
    r.started = from_ms(*started);
    if (*took >= 0) r.finished = from_ms(*started + *took);
    r.retries = static_cast<int>(*retries);
    r.error = std::move(*error);
    r.task_id = std::move(*task_id);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace metro::ledger::detail
