// The task envelope, byte for byte in the layout of Celery 5.2's `AMQP.as_task_v2` and kombu
// 5.2's Redis `Channel._put` (see the wire reference): JSON written the way Python's json.dumps
// writes it (", " and ": " separators, ASCII only), headers and properties in Celery's order.

#include "task_message.hpp"

#include <array>
#include <charconv>
#include <cstdio>
#include <system_error>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <metro/error.hpp>

#include "../common/json_bounds.hpp"

namespace metro::celery {
namespace {

using Json = nlohmann::ordered_json;

/// Decodes one UTF-8 code point at `i` (advancing it); U+FFFD for an invalid sequence.
char32_t next_code_point(std::string_view text, std::size_t& i) {
  auto byte = [&](std::size_t at) { return static_cast<unsigned char>(text[at]); };
  unsigned char lead = byte(i);
  if (lead < 0x80) {
    ++i;
    return lead;
  }
  int length = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    cp = lead & 0x1F;
    min = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    cp = lead & 0x0F;
    min = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    cp = lead & 0x07;
    min = 0x10000;
  } else {
    ++i;
    return 0xFFFD;
  }
  if (i + static_cast<std::size_t>(length) > text.size()) {
    ++i;
    return 0xFFFD;
  }
  for (int k = 1; k < length; ++k) {
    unsigned char c = byte(i + static_cast<std::size_t>(k));
    if ((c & 0xC0) != 0x80) {
      ++i;
      return 0xFFFD;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++i;
    return 0xFFFD;
  }
  i += static_cast<std::size_t>(length);
  return cp;
}

std::size_t code_points(std::string_view text) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < text.size();) {
    next_code_point(text, i);
    ++n;
  }
  return n;
}

/// The first `n` code points of `text`.
std::string_view prefix_code_points(std::string_view text, std::size_t n) {
  std::size_t i = 0;
  while (n > 0 && i < text.size()) {
    next_code_point(text, i);
    --n;
  }
  return text.substr(0, i);
}

std::string base64(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(data.data()),
                          static_cast<int>(data.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string host_name() {
  std::array<char, 256> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0) return "localhost";
  return name.data();
}

Json parse_fragment(std::string_view text, const std::string& what) {
  if (auto problem = json_bounds::check(text)) {
    throw InvalidArgument(what + " cannot be sent: " + *problem);
  }
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    throw InvalidArgument(what + " is not JSON: " + e.what());
  }
}

/// Trims JSON whitespace so that an embedded fragment does not carry newlines around it.
std::string_view trimmed(std::string_view text) {
  auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && blank(text.front())) text.remove_prefix(1);
  while (!text.empty() && blank(text.back())) text.remove_suffix(1);
  return text;
}

/// Celery's saferepr (celery/utils/saferepr.py), over JSON values: the same tokens, the same
/// budget that shrinks by each token's length, the same ", ..." and dangling closers.
class SafeRepr {
 public:
  explicit SafeRepr(std::size_t maxlen) : budget_(static_cast<long>(maxlen)) {}

  void value(const Json& v, int level) {
    if (stopped_) return;
    if (v.is_object() || v.is_array()) {
      bool object = v.is_object();
      if (level >= kMaxLevels) {
        leaf(object ? "{...}" : "[...]");
        return;
      }
      open(object ? "{" : "[");
      std::size_t i = 0;
      for (auto it = v.begin(); it != v.end() && !stopped_; ++it, ++i) {
        if (i > 0) literal(", ");
        if (object) {
          quoted(it.key());
          literal(": ");
        }
        value(it.value(), level + 1);
      }
      close(object ? "}" : "]");
      return;
    }
    if (v.is_string()) {
      quoted(v.get_ref<const std::string&>());
    } else if (v.is_boolean()) {
      leaf(v.get<bool>() ? "True" : "False");
    } else if (v.is_null()) {
      leaf("None");
    } else if (v.is_number_float()) {
      leaf(python_float(v.get<double>()));
    } else {
      leaf(v.dump());
    }
  }

  /// A tuple of values, the way Celery shows `args`.
  void tuple(const std::vector<Json>& values) {
    open("(");
    for (std::size_t i = 0; i < values.size() && !stopped_; ++i) {
      if (i > 0) literal(", ");
      value(values[i], 1);
    }
    close(values.size() == 1 ? ",)" : ")");
  }

  /// A dict of named values, the way Celery shows `kwargs`.
  void dict(const std::vector<std::pair<std::string, Json>>& items) {
    open("{");
    for (std::size_t i = 0; i < items.size() && !stopped_; ++i) {
      if (i > 0) literal(", ");
      quoted(items[i].first);
      literal(": ");
      value(items[i].second, 1);
    }
    close("}");
  }

  std::string take() { return std::move(out_); }

 private:
  static constexpr int kMaxLevels = 3;

  /// celery.utils.text.truncate with the budget left.
  std::string truncate(std::string_view text) const {
    if (budget_ > 0 && code_points(text) >= static_cast<std::size_t>(budget_)) {
      auto head = prefix_code_points(text, static_cast<std::size_t>(budget_));
      auto space = head.rfind(' ');
      if (space != std::string_view::npos) head = head.substr(0, space);
      return std::string(head) + "...";
    }
    return std::string(text);
  }

  /// Emits one token; false (after ", ...") once the budget is spent.
  bool emit(const std::string& text) {
    if (stopped_) return false;
    if (budget_ <= 0) {
      out_ += ", ...";
      stopped_ = true;
      return false;
    }
    out_ += text;
    budget_ -= static_cast<long>(code_points(text));
    return true;
  }
  void literal(const std::string& text) { emit(text); }
  void leaf(std::string_view text) {
    if (!stopped_) emit(truncate(text));
  }
  void quoted(std::string_view text) {
    if (stopped_) return;
    std::string body;
    for (char c : truncate(text)) {
      if (c == '\'') body += '\\';
      body += c;
    }
    emit("'" + body + "'");
  }
  void open(const std::string& text) { emit(text); }
  void close(const std::string& text) {
    // A container left open when the budget ran out still gets its closer, as in Celery; one
    // whose closer was the token that ran out does not.
    if (stopped_) {
      out_ += text;
    } else {
      emit(text);
    }
  }

  long budget_;
  bool stopped_ = false;
  std::string out_;
};

/// JSON written the way Python's json.dumps writes it.
class PyJsonWriter {
 public:
  PyJsonWriter& begin_object() {
    separate();
    out_ += '{';
    first_ = true;
    return *this;
  }
  PyJsonWriter& end_object() {
    out_ += '}';
    first_ = false;
    return *this;
  }
  PyJsonWriter& begin_array() {
    separate();
    out_ += '[';
    first_ = true;
    return *this;
  }
  PyJsonWriter& end_array() {
    out_ += ']';
    first_ = false;
    return *this;
  }
  PyJsonWriter& key(std::string_view name) {
    separate();
    out_ += python_json_string(name);
    out_ += ": ";
    after_key_ = true;
    return *this;
  }
  PyJsonWriter& string(std::string_view text) { return raw(python_json_string(text)); }
  PyJsonWriter& null() { return raw("null"); }
  PyJsonWriter& boolean(bool b) { return raw(b ? "true" : "false"); }
  PyJsonWriter& integer(long long n) { return raw(std::to_string(n)); }
  /// A JSON value as it is.
  PyJsonWriter& raw(std::string_view json) {
    separate();
    out_ += json;
    return *this;
  }
  std::string take() { return std::move(out_); }

 private:
  void separate() {
    if (after_key_) {
      after_key_ = false;
    } else if (!first_) {
      out_ += ", ";
    }
    first_ = false;
  }

  std::string out_;
  bool first_ = true;
  bool after_key_ = false;
};

/// A caller's JSON fragment (already checked), embedded as it is but for surrounding whitespace:
/// a message body reaches the worker byte for byte.
std::string fragment(std::string_view json) { return std::string(trimmed(json)); }

}  // namespace

std::string python_json_string(std::string_view text) {
  constexpr std::string_view kHex = "0123456789abcdef";
  std::string out = "\"";
  auto escape16 = [&](char32_t unit) {
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(unit >> shift) & 0xF];
  };
  for (std::size_t i = 0; i < text.size();) {
    char32_t cp = next_code_point(text, i);
    switch (cp) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (cp < 0x20 || cp > 0x7E) {
          if (cp == 0x7F) {
            out += static_cast<char>(cp);  // Python leaves DEL as it is.
          } else if (cp >= 0x10000) {
            char32_t v = cp - 0x10000;
            escape16(0xD800 + (v >> 10));
            escape16(0xDC00 + (v & 0x3FF));
          } else {
            escape16(cp);
          }
        } else {
          out += static_cast<char>(cp);
        }
    }
  }
  out += '"';
  return out;
}

std::string python_float(double value) {
  std::array<char, 64> buffer{};
  auto [end, ec] = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value,
                                 std::chars_format::scientific);
  if (ec != std::errc()) return "0.0";
  std::string_view text(buffer.data(), static_cast<std::size_t>(end - buffer.data()));
  if (text == "inf" || text == "-inf") return text[0] == '-' ? "-inf" : "inf";
  if (text.find("nan") != std::string_view::npos) return "nan";
  std::string sign;
  if (text.front() == '-') {
    sign = "-";
    text.remove_prefix(1);
  }
  auto e = text.find('e');
  std::string digits;
  for (char c : text.substr(0, e)) {
    if (c != '.') digits += c;
  }
  int exponent = std::stoi(std::string(text.substr(e + 1)));
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out = sign;
  if (exponent >= -4 && exponent < 16) {
    if (exponent >= 0) {
      auto integer_digits = static_cast<std::size_t>(exponent) + 1;
      if (digits.size() <= integer_digits) {
        out += digits + std::string(integer_digits - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, integer_digits) + "." + digits.substr(integer_digits);
      }
    } else {
      out += "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  out += exponent < 0 ? "e-" : "e+";
  auto magnitude = std::to_string(exponent < 0 ? -exponent : exponent);
  if (magnitude.size() < 2) magnitude = "0" + magnitude;
  return out + magnitude;
}

std::string python_saferepr(std::string_view json, std::size_t maxlen) {
  SafeRepr repr(maxlen);
  repr.value(parse_fragment(json, "the value"), 0);
  return repr.take();
}

std::string new_task_id() {
  std::array<unsigned char, 16> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    throw Error("cannot draw random bytes for a task id", true);
  }
  bytes[6] = static_cast<unsigned char>((bytes[6] & 0x0F) | 0x40);
  bytes[8] = static_cast<unsigned char>((bytes[8] & 0x3F) | 0x80);
  std::array<char, 37> text{};
  std::snprintf(text.data(), text.size(),
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", bytes[0],
                bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8],
                bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]);
  return text.data();
}

std::string queue_key(std::string_view queue, int priority) {
  // kombu: steps [0, 3, 6, 9], the step is the largest one not above the priority.
  int step = priority >= 9 ? 9 : priority >= 6 ? 6 : priority >= 3 ? 3 : 0;
  std::string key(queue);
  if (step != 0) {
    key += "\x06\x16";
    key += static_cast<char>('0' + step);
  }
  return key;
}

Envelope encode_task_message(const TaskMessage& message) {
  auto printable = [](std::string_view text) {
    if (text.empty()) return false;
    for (unsigned char c : text) {
      if (c <= 0x20 || c == 0x7F) return false;
    }
    return true;
  };
  if (!printable(message.task)) {
    throw InvalidArgument("a Celery task name must be printable, without spaces, and not empty");
  }
  if (!printable(message.queue)) {
    throw InvalidArgument("a Celery queue name must be printable, without spaces, and not empty");
  }
  if (message.priority < 0 || message.priority > 9) {
    throw InvalidArgument("a Celery priority is 0 to 9, not " + std::to_string(message.priority));
  }
  Envelope out;
  out.task_id = message.id.empty() ? new_task_id() : message.id;
  if (!printable(out.task_id)) throw InvalidArgument("a task id must be printable, without spaces");
  out.key = queue_key(message.queue, message.priority);

  // Every fragment is checked (bounded, then parsed) before anything is written.
  std::vector<Json> args;
  for (std::size_t i = 0; i < message.args.size(); ++i) {
    args.push_back(parse_fragment(message.args[i], "argument " + std::to_string(i)));
  }
  std::vector<std::pair<std::string, Json>> kwargs;
  for (const auto& [name, value] : message.kwargs) {
    kwargs.emplace_back(name, parse_fragment(value, "keyword argument '" + name + "'"));
  }
  for (const auto& [name, value] : message.headers) {
    parse_fragment(value, "header '" + name + "'");
  }

  PyJsonWriter body;
  body.begin_array().begin_array();
  for (const auto& a : message.args) body.raw(fragment(a));
  body.end_array().begin_object();
  for (const auto& [name, value] : message.kwargs) body.key(name).raw(fragment(value));
  body.end_object().begin_object();
  body.key("callbacks").null().key("errbacks").null().key("chain").null().key("chord").null();
  body.end_object().end_array();

  SafeRepr args_repr(1024);
  args_repr.tuple(args);
  SafeRepr kwargs_repr(1024);
  kwargs_repr.dict(kwargs);
  auto origin = message.origin.empty() ? "metro" + std::to_string(::getpid()) + "@" + host_name()
                                       : message.origin;

  PyJsonWriter envelope;
  envelope.begin_object();
  envelope.key("body").string(base64(body.take()));
  envelope.key("content-encoding").string("utf-8");
  envelope.key("content-type").string("application/json");
  envelope.key("headers").begin_object();
  envelope.key("lang").string("py");
  envelope.key("task").string(message.task);
  envelope.key("id").string(out.task_id);
  envelope.key("shadow").null();
  envelope.key("eta").null();
  envelope.key("expires").null();
  envelope.key("group").null();
  envelope.key("group_index").null();
  envelope.key("retries").integer(0);
  envelope.key("timelimit").begin_array().null().null().end_array();
  envelope.key("root_id").string(out.task_id);
  envelope.key("parent_id").null();
  envelope.key("argsrepr").string(args_repr.take());
  envelope.key("kwargsrepr").string(kwargs_repr.take());
  envelope.key("origin").string(origin);
  envelope.key("ignore_result").boolean(false);
  for (const auto& [name, value] : message.headers) envelope.key(name).raw(fragment(value));
  envelope.end_object();
  envelope.key("properties").begin_object();
  envelope.key("correlation_id").string(out.task_id);
  envelope.key("reply_to").string("");
  envelope.key("delivery_mode").integer(2);
  envelope.key("delivery_info").begin_object();
  envelope.key("exchange").string("");
  envelope.key("routing_key").string(message.queue);
  envelope.end_object();
  envelope.key("priority").integer(message.priority);
  envelope.key("body_encoding").string("base64");
  envelope.key("delivery_tag").string(new_task_id());
  envelope.end_object();
  envelope.end_object();
  out.payload = envelope.take();
  return out;
}

}  // namespace metro::celery
