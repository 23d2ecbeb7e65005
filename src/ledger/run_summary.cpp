#include "run_summary.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <map>
#include <optional>

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

}  // namespace

std::vector<HandlerRun> last_run_of_each(const std::vector<HandlerRun>& runs) {
  std::map<std::string, const HandlerRun*> last;
  for (const auto& r : runs) {
    auto& kept = last[r.handler];
    if (kept == nullptr || r.attempt > kept->attempt ||
        (r.attempt == kept->attempt && r.started >= kept->started)) {
      kept = &r;
    }
  }
  std::vector<HandlerRun> out;
  for (const auto& [handler, run] : last) out.push_back(*run);
  std::stable_sort(out.begin(), out.end(),
                   [](const HandlerRun& a, const HandlerRun& b) { return a.started < b.started; });
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
    if (!handler || !attempt || !outcome || !started || !took || !retries || !error ||
        !task_id || *outcome < 0 || *outcome >= static_cast<std::int64_t>(kOutcomes.size())) {
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
