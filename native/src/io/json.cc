// The JSON parser (recursive descent over a string_view, byte offsets in every error) and the
// serialiser.
#include "io/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <stdexcept>

namespace tiller::io {

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  Json parse_document() {
    skip_space();
    Json value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("unexpected trailing characters");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { fail_at(what, pos_); }
  [[noreturn]] static void fail_at(const std::string& what, size_t offset) {
    throw std::runtime_error("json: " + what + " at offset " + std::to_string(offset));
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }

  void skip_space() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) ++pos_;
  }

  void expect_literal(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) fail("invalid literal");
    pos_ += literal.size();
  }

  Json parse_value(int depth) {
    if (at_end()) fail("unexpected end of input");
    switch (peek()) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"': return Json(parse_string());
      case 't': expect_literal("true"); return Json(true);
      case 'f': expect_literal("false"); return Json(false);
      case 'n': expect_literal("null"); return Json(nullptr);
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
        fail(std::string("unexpected character '") + peek() + "'");
    }
  }

  Json parse_object(int depth) {
    if (depth > Json::kMaxDepth) fail("nesting deeper than " + std::to_string(Json::kMaxDepth));
    const size_t start = pos_;
    ++pos_;  // '{'
    Json out = Json::object();
    skip_space();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return out;
    }
    while (true) {
      skip_space();
      if (at_end() || peek() != '"') fail("expected a string key");
      std::string key = parse_string();
      skip_space();
      if (at_end() || peek() != ':') fail("expected ':'");
      ++pos_;
      skip_space();
      out.members_.emplace_back(std::move(key), parse_value(depth));
      skip_space();
      if (at_end()) fail("unterminated object");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        break;
      }
      fail("expected ',' or '}'");
    }
    check_unique_keys(out.members_, start);
    return out;
  }

  // A duplicated key would make a safetensors header define one tensor twice: refuse it.
  static void check_unique_keys(const std::vector<std::pair<std::string, Json>>& members, size_t offset) {
    std::vector<const std::string*> keys;
    keys.reserve(members.size());
    for (const auto& m : members) keys.push_back(&m.first);
    std::sort(keys.begin(), keys.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
    for (size_t i = 1; i < keys.size(); ++i) {
      if (*keys[i] == *keys[i - 1]) fail_at("duplicate key '" + *keys[i] + "' in the object", offset);
    }
  }

  Json parse_array(int depth) {
    if (depth > Json::kMaxDepth) fail("nesting deeper than " + std::to_string(Json::kMaxDepth));
    ++pos_;  // '['
    Json out = Json::array();
    skip_space();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return out;
    }
    while (true) {
      skip_space();
      out.elements_.push_back(parse_value(depth));
      skip_space();
      if (at_end()) fail("unterminated array");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        break;
      }
      fail("expected ',' or ']'");
    }
    return out;
  }

  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  Json parse_number() {
    const size_t start = pos_;
    auto digits = [&]() {
      const size_t from = pos_;
      while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
      return pos_ - from;
    };
    if (peek() == '-') ++pos_;
    if (at_end()) fail("expected a digit");
    if (peek() == '0') {
      ++pos_;
      if (!at_end() && peek() >= '0' && peek() <= '9') fail("leading zero in a number");
    } else if (digits() == 0) {
      fail("expected a digit");
    }
    bool integer = true;
    if (!at_end() && peek() == '.') {
      ++pos_;
      integer = false;
      if (digits() == 0) fail("expected a digit after '.'");
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      ++pos_;
      integer = false;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (digits() == 0) fail("expected a digit in the exponent");
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (integer) {
      int64_t value = 0;
      const auto result = std::from_chars(first, last, value);
      if (result.ec == std::errc() && result.ptr == last) return Json(value);
      // Beyond int64: fall through and keep it as a double, as Python's json would a float.
    }
    double value = 0;
    const auto result = std::from_chars(first, last, value);
    if (result.ec == std::errc::result_out_of_range) {
      // from_chars reports both overflow and underflow; only overflow is an error, and underflow
      // reads as 0 as in Python. Tell them apart by the decimal order of the leading digit.
      if (decimal_order(std::string_view(first, static_cast<size_t>(last - first))) > 0) {
        fail_at("number out of range", start);
      }
      return Json(0.0);
    }
    if (result.ec != std::errc() || result.ptr != last) fail_at("malformed number", start);
    return Json(value);
  }

  // The power of ten of the first non-zero digit of a well-formed number ("123.4e5" -> 7).
  static int64_t decimal_order(std::string_view number) {
    const size_t e = number.find_first_of("eE");
    const std::string_view mantissa = number.substr(0, e);
    int64_t exponent = 0;
    if (e != std::string_view::npos) {
      std::string_view digits = number.substr(e + 1);
      const bool negative = !digits.empty() && digits[0] == '-';
      if (!digits.empty() && (digits[0] == '+' || digits[0] == '-')) digits.remove_prefix(1);
      if (std::from_chars(digits.data(), digits.data() + digits.size(), exponent).ec != std::errc()) {
        exponent = INT64_MAX / 2;  // more digits than int64 holds: hugely out of range
      }
      if (negative) exponent = -exponent;
    }
    const size_t dot = mantissa.find('.');
    const int64_t int_digits = static_cast<int64_t>((dot == std::string_view::npos ? mantissa.size() : dot) -
                                                    (mantissa[0] == '-' ? 1 : 0));
    int64_t index = 0;  // position among the mantissa's digits
    for (const char c : mantissa) {
      if (c < '0' || c > '9') continue;
      if (c != '0') break;
      ++index;
    }
    return int_digits - index - 1 + exponent;
  }

  unsigned parse_hex4() {
    if (text_.size() - pos_ < 4) fail("truncated \\u escape");
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      value <<= 4;
      if (c >= '0' && c <= '9') value |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') value |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') value |= static_cast<unsigned>(c - 'A' + 10);
      else fail_at("invalid hex digit in \\u escape", pos_ - 1);
    }
    return value;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Copies one UTF-8 sequence starting at pos_, refusing overlong forms, surrogates and
  // code points beyond U+10FFFF, so that every string we hold is valid UTF-8.
  void copy_utf8_sequence(std::string& out) {
    const size_t start = pos_;
    const auto lead = static_cast<unsigned char>(text_[pos_]);
    int length = 0;
    unsigned cp = 0;
    if (lead >= 0xC2 && lead <= 0xDF) length = 2, cp = lead & 0x1F;
    else if (lead >= 0xE0 && lead <= 0xEF) length = 3, cp = lead & 0x0F;
    else if (lead >= 0xF0 && lead <= 0xF4) length = 4, cp = lead & 0x07;
    else fail("invalid UTF-8");
    if (text_.size() - pos_ < static_cast<size_t>(length)) fail("truncated UTF-8 sequence");
    for (int i = 1; i < length; ++i) {
      const auto c = static_cast<unsigned char>(text_[pos_ + i]);
      if ((c & 0xC0) != 0x80) fail("invalid UTF-8");
      cp = (cp << 6) | (c & 0x3F);
    }
    const bool overlong = (length == 3 && cp < 0x800) || (length == 4 && cp < 0x10000);
    if (overlong || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) fail("invalid UTF-8");
    out.append(text_.substr(start, length));
    pos_ += length;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) fail("unterminated string");
      const char c = peek();
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (static_cast<unsigned char>(c) >= 0x80) {
        copy_utf8_sequence(out);
        continue;
      }
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      ++pos_;
      if (at_end()) fail("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const size_t escape_at = pos_ - 2;
          unsigned cp = parse_hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at("lone low surrogate", escape_at);
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            // Code points above U+FFFF arrive as a high surrogate followed by a low one.
            if (text_.substr(pos_, 2) != "\\u") fail_at("high surrogate without a low surrogate", escape_at);
            pos_ += 2;
            const unsigned low = parse_hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail_at("high surrogate without a low surrogate", escape_at);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail_at(std::string("invalid escape '\\") + e + "'", pos_ - 2);
      }
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

Json Json::parse(std::string_view text) { return JsonParser(text).parse_document(); }

const char* Json::type_name(Type type) {
  switch (type) {
    case Type::Null: return "null";
    case Type::Bool: return "bool";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

void Json::expect(Type type) const {
  if (type_ != type) {
    throw std::runtime_error(std::string("json: expected ") + type_name(type) + ", found " + type_name(type_));
  }
}

// 2^63 as a double: the first value past int64's range.
static constexpr double kTwoPow63 = 9223372036854775808.0;

bool Json::is_integer() const {
  if (type_ != Type::Number) return false;
  if (integral_) return true;
  return std::isfinite(number_) && std::trunc(number_) == number_ && number_ >= -kTwoPow63 && number_ < kTwoPow63;
}

bool Json::has(const std::string& key) const {
  if (type_ != Type::Object) return false;
  return std::any_of(members_.begin(), members_.end(), [&](const auto& m) { return m.first == key; });
}

const Json& Json::at(const std::string& key) const {
  expect(Type::Object);
  for (const auto& m : members_) {
    if (m.first == key) return m.second;
  }
  throw std::runtime_error("missing field '" + key + "'");
}

const Json& Json::at(size_t index) const {
  expect(Type::Array);
  if (index >= elements_.size()) {
    throw std::runtime_error("json: index " + std::to_string(index) + " out of range (array of " +
                             std::to_string(elements_.size()) + ")");
  }
  return elements_[index];
}

size_t Json::size() const {
  if (type_ == Type::Array) return elements_.size();
  if (type_ == Type::Object) return members_.size();
  throw std::runtime_error(std::string("json: size() of a ") + type_name(type_));
}

double Json::as_number() const {
  expect(Type::Number);
  return number_;
}

int64_t Json::as_int() const {
  expect(Type::Number);
  if (integral_) return int_;
  if (!is_integer()) throw std::runtime_error("json: expected an integer, found " + dump());
  return static_cast<int64_t>(number_);
}

bool Json::as_bool() const {
  expect(Type::Bool);
  return bool_;
}

const std::string& Json::as_string() const {
  expect(Type::String);
  return string_;
}

const std::vector<std::pair<std::string, Json>>& Json::items() const {
  expect(Type::Object);
  return members_;
}

const std::vector<Json>& Json::elements() const {
  expect(Type::Array);
  return elements_;
}

Json& Json::push_back(Json value) {
  expect(Type::Array);
  elements_.push_back(std::move(value));
  return elements_.back();
}

Json& Json::set(const std::string& key, Json value) {
  expect(Type::Object);
  for (auto& m : members_) {
    if (m.first == key) {
      m.second = std::move(value);
      return m.second;
    }
  }
  members_.emplace_back(key, std::move(value));
  return members_.back().second;
}

Json& Json::append(std::string key, Json value) {
  expect(Type::Object);
  members_.emplace_back(std::move(key), std::move(value));
  return members_.back().second;
}

namespace {

void dump_string(std::string& out, const std::string& s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;  // UTF-8 passes through: the strings we hold are valid UTF-8
        }
    }
  }
  out += '"';
}

void dump_number(std::string& out, double value) {
  if (!std::isfinite(value)) throw std::runtime_error("json: cannot serialise NaN or infinity");
  char buffer[32];
  // A float with an integral value prints as digits plus ".0" below 1e16 (1000000.0, not 1e+06),
  // as Python's json.dumps does: readers that check types (transformers 5's strict configs refuse
  // 0 for a float field) must read a float back.
  if (std::trunc(value) == value && std::abs(value) < 1e16) {
    const auto r = std::to_chars(buffer, buffer + sizeof buffer, static_cast<int64_t>(value));
    out.append(buffer, r.ptr);
    out += ".0";
    return;
  }
  const auto r = std::to_chars(buffer, buffer + sizeof buffer, value);  // shortest round-trip form
  out.append(buffer, r.ptr);
}

void newline(std::string& out, int indent, int depth) {
  out += '\n';
  out.append(static_cast<size_t>(indent) * static_cast<size_t>(depth), ' ');
}

}  // namespace

void Json::dump_to(std::string& out, int indent, int depth) const {
  switch (type_) {
    case Type::Null: out += "null"; return;
    case Type::Bool: out += bool_ ? "true" : "false"; return;
    case Type::Number:
      if (integral_) {
        out += std::to_string(int_);
      } else {
        dump_number(out, number_);
      }
      return;
    case Type::String: dump_string(out, string_); return;
    case Type::Array:
      if (elements_.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < elements_.size(); ++i) {
        if (i > 0) out += ',';
        if (indent >= 0) newline(out, indent, depth + 1);
        elements_[i].dump_to(out, indent, depth + 1);
      }
      if (indent >= 0) newline(out, indent, depth);
      out += ']';
      return;
    case Type::Object:
      if (members_.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      for (size_t i = 0; i < members_.size(); ++i) {
        if (i > 0) out += ',';
        if (indent >= 0) newline(out, indent, depth + 1);
        dump_string(out, members_[i].first);
        out += indent < 0 ? ":" : ": ";
        members_[i].second.dump_to(out, indent, depth + 1);
      }
      if (indent >= 0) newline(out, indent, depth);
      out += '}';
      return;
  }
}

std::string Json::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

}  // namespace tiller::io
