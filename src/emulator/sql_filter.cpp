// Subscription SQL filters: the subset of Service Bus's SQL filter language (comparisons,
// arithmetic, AND/OR/NOT, IN, LIKE, EXISTS, IS [NOT] NULL over `sys.*` and application
// properties): a tokenizer, a bounded recursive-descent parser and the three-valued evaluator it
// builds. The grammar, its evaluation and its limits read best together.

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <metro/error.hpp>

#include "filter.hpp"
#include "filter_support.hpp"

namespace metro::emulator {
namespace {

using amqp::Value;
using namespace detail;

// ---- SQL subset ---------------------------------------------------------------------------

struct Token {
  enum Kind { kEnd, kIdent, kString, kInteger, kFloat, kOp, kLParen, kRParen, kComma } kind;
  std::string text;
  std::size_t position;
};

std::vector<Token> tokenize(const std::string& s) {
  std::vector<Token> tokens;
  std::size_t i = 0;
  auto fail = [&](const std::string& what) {
    throw InvalidArgument("SQL filter: " + what + " at position " + std::to_string(i + 1));
  };
  while (i < s.size()) {
    char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (c == '\'') {
      std::string text;
      std::size_t start = i++;
      while (true) {
        if (i >= s.size()) {
          i = start;
          fail("unterminated string");
        }
        if (s[i] == '\'') {
          if (i + 1 < s.size() && s[i + 1] == '\'') {
            text += '\'';
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        text += s[i++];
      }
      tokens.push_back({Token::kString, text, start});
    } else if (std::isdigit(static_cast<unsigned char>(c)) ||
               (c == '.' && i + 1 < s.size() &&
                std::isdigit(static_cast<unsigned char>(s[i + 1])))) {
      std::size_t start = i;
      bool is_float = false;
      while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.' ||
                              s[i] == 'e' || s[i] == 'E')) {
        if (s[i] == '.' || s[i] == 'e' || s[i] == 'E') is_float = true;
        ++i;
      }
      tokens.push_back(
          {is_float ? Token::kFloat : Token::kInteger, s.substr(start, i - start), start});
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == '[') {
      std::size_t start = i;
      std::string text;
      while (i < s.size()) {
        if (s[i] == '[') {
          auto close = s.find(']', i);
          if (close == std::string::npos) fail("unterminated [name]");
          text += s.substr(i + 1, close - i - 1);
          i = close + 1;
        } else if (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '_' || s[i] == '.' ||
                   s[i] == '-') {
          text += s[i++];
        } else {
          break;
        }
      }
      tokens.push_back({Token::kIdent, text, start});
    } else if (c == '(') {
      tokens.push_back({Token::kLParen, "(", i++});
    } else if (c == ')') {
      tokens.push_back({Token::kRParen, ")", i++});
    } else if (c == ',') {
      tokens.push_back({Token::kComma, ",", i++});
    } else {
      static const char* kOps[] = {"<>", "!=", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "%"};
      bool found = false;
      for (const char* op : kOps) {
        std::string_view o(op);
        if (s.compare(i, o.size(), o) == 0) {
          tokens.push_back({Token::kOp, std::string(o), i});
          i += o.size();
          found = true;
          break;
        }
      }
      if (!found) fail(std::string("unexpected character '") + c + "'");
    }
  }
  tokens.push_back({Token::kEnd, "", s.size()});
  return tokens;
}

/// Three-valued: a value, or null for unknown.
using Eval = std::function<Scalar(const amqp::Message&)>;

std::optional<bool> truth(const Scalar& s) {
  if (auto* b = std::get_if<bool>(&s)) return *b;
  return std::nullopt;
}

std::optional<double> number(const Scalar& s) {
  if (auto* i = std::get_if<std::int64_t>(&s)) return static_cast<double>(*i);
  if (auto* d = std::get_if<double>(&s)) return *d;
  return std::nullopt;
}

// LIKE: % any run, _ one character, with an optional escape character.
bool like(std::string_view text, std::string_view pattern, std::optional<char> escape) {
  std::size_t t = 0, p = 0, star_p = std::string_view::npos, star_t = 0;
  while (t < text.size()) {
    if (p < pattern.size() && escape && pattern[p] == *escape && p + 1 < pattern.size()) {
      if (pattern[p + 1] == text[t]) {
        p += 2;
        ++t;
        continue;
      }
    } else if (p < pattern.size() && pattern[p] == '%') {
      star_p = p++;
      star_t = t;
      continue;
    } else if (p < pattern.size() && (pattern[p] == '_' || pattern[p] == text[t])) {
      ++p;
      ++t;
      continue;
    }
    if (star_p == std::string_view::npos) return false;
    p = star_p + 1;
    t = ++star_t;
  }
  while (p < pattern.size() && pattern[p] == '%') ++p;
  return p == pattern.size();
}

// Service Bus limits a SQL filter to 1024 characters; within that, parentheses, NOT and unary
// minus nest at most this deep. Together they bound the parser's recursion and the depth of the
// evaluator it builds (a chain of 512 operators at most).
constexpr std::size_t kMaxExpressionLength = 1024;
constexpr int kMaxNesting = 32;

class Parser {
 public:
  explicit Parser(const std::string& text) : tokens_(tokenize(text)) {}

  Eval parse() {
    auto e = parse_or();
    if (peek().kind != Token::kEnd) fail("unexpected '" + peek().text + "'");
    return e;
  }

 private:
  const Token& peek() const { return tokens_[pos_]; }
  const Token& next() { return tokens_[pos_++]; }
  bool keyword(std::string_view word) {
    if (peek().kind == Token::kIdent && lower(peek().text) == word) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool op(std::string_view o) {
    if (peek().kind == Token::kOp && peek().text == o) {
      ++pos_;
      return true;
    }
    return false;
  }
  [[noreturn]] void fail(const std::string& what) const { fail_at(peek().position, what); }
  [[noreturn]] static void fail_at(std::size_t position, const std::string& what) {
    throw InvalidArgument("SQL filter: " + what + " at position " + std::to_string(position + 1));
  }
  void expect(Token::Kind kind, std::string_view what) {
    if (peek().kind != kind) fail("expected " + std::string(what));
    ++pos_;
  }

  Eval parse_or() {
    auto left = parse_and();
    while (keyword("or")) {
      auto right = parse_and();
      left = [left, right](const amqp::Message& m) -> Scalar {
        auto a = truth(left(m));
        if (a == true) return true;
        auto b = truth(right(m));
        if (b == true) return true;
        if (a == false && b == false) return false;
        return std::monostate{};
      };
    }
    return left;
  }

  Eval parse_and() {
    auto left = parse_not();
    while (keyword("and")) {
      auto right = parse_not();
      left = [left, right](const amqp::Message& m) -> Scalar {
        auto a = truth(left(m));
        if (a == false) return false;
        auto b = truth(right(m));
        if (b == false) return false;
        if (a == true && b == true) return true;
        return std::monostate{};
      };
    }
    return left;
  }

  /// Counts one level of nesting for its scope.
  struct Nested {
    explicit Nested(Parser& p) : parser(p) {
      if (++parser.nesting_ > kMaxNesting) {
        parser.fail("the expression is nested more than " + std::to_string(kMaxNesting) +
                    " levels deep");
      }
    }
    ~Nested() { --parser.nesting_; }
    Nested(const Nested&) = delete;
    Nested& operator=(const Nested&) = delete;
    Parser& parser;
  };

  Eval parse_not() {
    if (keyword("not")) {
      Nested nested(*this);
      auto inner = parse_not();
      return [inner](const amqp::Message& m) -> Scalar {
        auto a = truth(inner(m));
        if (!a) return std::monostate{};
        return !*a;
      };
    }
    return parse_predicate();
  }

  Eval parse_predicate() {
    if (keyword("exists")) {
      expect(Token::kLParen, "'(' after EXISTS");
      if (peek().kind != Token::kIdent) fail("expected a property name in EXISTS");
      auto position = peek().position;
      auto name = next().text;
      expect(Token::kRParen, "')'");
      return [lookup = property_lookup(name, position)](const amqp::Message& m) -> Scalar {
        return !std::holds_alternative<std::monostate>(lookup(m));
      };
    }
    auto left = parse_additive();
    if (keyword("is")) {
      bool negate = keyword("not");
      if (!keyword("null")) fail("expected NULL after IS");
      return [left, negate](const amqp::Message& m) -> Scalar {
        bool is_null = std::holds_alternative<std::monostate>(left(m));
        return negate ? !is_null : is_null;
      };
    }
    bool negate = keyword("not");
    if (keyword("in")) {
      expect(Token::kLParen, "'(' after IN");
      std::vector<Eval> items;
      do {
        items.push_back(parse_additive());
      } while (peek().kind == Token::kComma && (++pos_, true));
      expect(Token::kRParen, "')' after the IN list");
      return [left, items, negate](const amqp::Message& m) -> Scalar {
        auto v = left(m);
        if (std::holds_alternative<std::monostate>(v)) return std::monostate{};
        bool found = std::any_of(items.begin(), items.end(),
                                 [&](const Eval& e) { return scalar_equal(v, e(m)); });
        return negate ? !found : found;
      };
    }
    if (keyword("like")) {
      if (peek().kind != Token::kString) fail("expected a 'pattern' after LIKE");
      auto pattern = next().text;
      std::optional<char> escape;
      if (keyword("escape")) {
        if (peek().kind != Token::kString || peek().text.size() != 1) {
          fail("expected one character in quotes after ESCAPE");
        }
        escape = next().text[0];
      }
      return [left, pattern, escape, negate](const amqp::Message& m) -> Scalar {
        auto v = left(m);
        auto* s = std::get_if<std::string>(&v);
        if (s == nullptr) return std::monostate{};
        bool result = like(*s, pattern, escape);
        return negate ? !result : result;
      };
    }
    if (negate) fail("expected IN or LIKE after NOT");
    static const char* kComparisons[] = {"=", "<>", "!=", "<=", ">=", "<", ">"};
    for (const char* c : kComparisons) {
      if (op(c)) {
        auto right = parse_additive();
        std::string o(c);
        return [left, right, o](const amqp::Message& m) -> Scalar {
          auto a = left(m);
          auto b = right(m);
          if (std::holds_alternative<std::monostate>(a) ||
              std::holds_alternative<std::monostate>(b)) {
            return std::monostate{};
          }
          if (o == "=") return scalar_equal(a, b);
          if (o == "<>" || o == "!=") return !scalar_equal(a, b);
          auto x = number(a);
          auto y = number(b);
          if (x && y) {
            if (o == "<") return *x < *y;
            if (o == "<=") return *x <= *y;
            if (o == ">") return *x > *y;
            return *x >= *y;
          }
          auto* s = std::get_if<std::string>(&a);
          auto* t = std::get_if<std::string>(&b);
          if (s && t) {
            if (o == "<") return *s < *t;
            if (o == "<=") return *s <= *t;
            if (o == ">") return *s > *t;
            return *s >= *t;
          }
          return std::monostate{};
        };
      }
    }
    return left;
  }

  Eval parse_additive() {
    auto left = parse_term();
    while (peek().kind == Token::kOp && (peek().text == "+" || peek().text == "-")) {
      char o = next().text[0];
      auto right = parse_term();
      left = arithmetic(left, right, o);
    }
    return left;
  }

  Eval parse_term() {
    auto left = parse_factor();
    while (peek().kind == Token::kOp &&
           (peek().text == "*" || peek().text == "/" || peek().text == "%")) {
      char o = next().text[0];
      auto right = parse_factor();
      left = arithmetic(left, right, o);
    }
    return left;
  }

  static Eval arithmetic(Eval left, Eval right, char o) {
    return [left, right, o](const amqp::Message& m) -> Scalar {
      auto a = left(m);
      auto b = right(m);
      auto* i = std::get_if<std::int64_t>(&a);
      auto* j = std::get_if<std::int64_t>(&b);
      if (i && j) {
        switch (o) {
          case '+':
            return *i + *j;
          case '-':
            return *i - *j;
          case '*':
            return *i * *j;
          case '/':
            return *j == 0 ? Scalar{} : Scalar{*i / *j};
          default:
            return *j == 0 ? Scalar{} : Scalar{*i % *j};
        }
      }
      auto x = number(a);
      auto y = number(b);
      if (!x || !y) return std::monostate{};
      switch (o) {
        case '+':
          return *x + *y;
        case '-':
          return *x - *y;
        case '*':
          return *x * *y;
        case '/':
          return *y == 0 ? Scalar{} : Scalar{*x / *y};
        default:
          return *y == 0 ? Scalar{} : Scalar{std::fmod(*x, *y)};
      }
    };
  }

  Eval parse_factor() {
    const auto& t = peek();
    if (t.kind == Token::kOp && t.text == "-") {
      ++pos_;
      Nested nested(*this);
      auto inner = parse_factor();
      return [inner](const amqp::Message& m) -> Scalar {
        auto v = inner(m);
        if (auto* i = std::get_if<std::int64_t>(&v)) return -*i;
        if (auto* d = std::get_if<double>(&v)) return -*d;
        return std::monostate{};
      };
    }
    if (t.kind == Token::kLParen) {
      ++pos_;
      Nested nested(*this);
      auto inner = parse_or();
      expect(Token::kRParen, "')'");
      return inner;
    }
    if (t.kind == Token::kString) {
      Scalar s = next().text;
      return [s](const amqp::Message&) { return s; };
    }
    if (t.kind == Token::kInteger) {
      Scalar s;
      try {
        s = std::int64_t{std::stoll(t.text)};
      } catch (const std::exception&) {
        fail("integer out of range");
      }
      ++pos_;
      return [s](const amqp::Message&) { return s; };
    }
    if (t.kind == Token::kFloat) {
      Scalar s;
      try {
        s = std::stod(t.text);
      } catch (const std::exception&) {
        fail("invalid number '" + t.text + "'");
      }
      ++pos_;
      return [s](const amqp::Message&) { return s; };
    }
    if (t.kind == Token::kIdent) {
      auto word = lower(t.text);
      if (word == "true" || word == "false") {
        ++pos_;
        Scalar s = word == "true";
        return [s](const amqp::Message&) { return s; };
      }
      if (word == "null") {
        ++pos_;
        return [](const amqp::Message&) { return Scalar{}; };
      }
      static const char* kReserved[] = {"and", "or", "not", "in", "like", "is", "exists", "escape"};
      for (const char* r : kReserved) {
        if (word == r) fail("unexpected keyword '" + t.text + "'");
      }
      auto position = t.position;
      auto name = next().text;
      return property_lookup(name, position);
    }
    if (t.kind == Token::kEnd) fail("unexpected end of the expression");
    fail("unexpected '" + t.text + "'");
  }

  Eval property_lookup(const std::string& name, std::size_t position) {
    auto dot = name.find('.');
    auto scope = dot == std::string::npos ? std::string() : lower(name.substr(0, dot));
    if (scope == "sys") {
      auto field = name.substr(dot + 1);
      amqp::Message probe;
      if (!system_property(probe, field)) {
        fail_at(position, "unknown system property '" + name + "'");
      }
      return [field](const amqp::Message& m) { return *system_property(m, field); };
    }
    auto key = scope == "user" ? name.substr(dot + 1) : name;
    return [key](const amqp::Message& m) -> Scalar {
      const auto* v = user_property(m, key);
      return v == nullptr ? Scalar{} : to_scalar(*v);
    };
  }

  std::vector<Token> tokens_;
  std::size_t pos_ = 0;
  int nesting_ = 0;
};

class SqlFilter : public Filter {
 public:
  explicit SqlFilter(std::string expression)
      : expression_(std::move(expression)), eval_(Parser(expression_).parse()) {}
  bool matches(const amqp::Message& m) const override { return truth(eval_(m)) == true; }
  Value describe() const override { return sql_like(kSqlFilterCode, expression_); }

 private:
  std::string expression_;
  Eval eval_;
};
}  // namespace

std::shared_ptr<const Filter> sql_filter(const std::string& expression) {
  if (expression.size() > kMaxExpressionLength) {
    throw InvalidArgument("SQL filter: the expression is " + std::to_string(expression.size()) +
                          " characters long; Service Bus allows at most " +
                          std::to_string(kMaxExpressionLength));
  }
  auto trimmed = expression;
  trimmed.erase(std::remove_if(trimmed.begin(), trimmed.end(),
                               [](unsigned char c) { return std::isspace(c); }),
                trimmed.end());
  if (trimmed == "1=1") return true_filter();
  if (trimmed == "1=0") return false_filter();
  return std::make_shared<SqlFilter>(expression);
}

}  // namespace metro::emulator
