// A small JSON value with a strict parser (RFC 8259) and a serialiser. It reads HF config.json,
// safetensors headers and index files, and writes them back; objects keep document order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace tiller::io {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  // Nesting deeper than this is refused by parse(): no config needs it, and it bounds recursion.
  static constexpr int kMaxDepth = 512;

  // Throws std::runtime_error("json: <what> at offset N"); N counts bytes from the start of text.
  // Refuses trailing garbage, duplicate object keys, lone surrogates and invalid UTF-8.
  static Json parse(std::string_view text);

  Json() = default;
  Json(std::nullptr_t) {}  // NOLINT(google-explicit-constructor): Json(nullptr) reads as null
  Json(bool value) : type_(Type::Bool), bool_(value) {}
  Json(double value) : type_(Type::Number), number_(value) {}
  // Every integer type, so that Json(3) or Json(size_t) is neither ambiguous nor a bool.
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Json(T value) : Json(static_cast<int64_t>(value), IntegerTag{}) {}
  Json(std::string value) : type_(Type::String), string_(std::move(value)) {}
  Json(const char* value) : Json(std::string(value)) {}
  static Json array() { return Json(Type::Array); }
  static Json object() { return Json(Type::Object); }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  // True when the number holds an integer exactly (as_int() will not throw).
  bool is_integer() const;

  // Object access. has() is false for non-objects; at() throws "missing field 'key'".
  bool has(const std::string& key) const;
  const Json& at(const std::string& key) const;
  // Array access; throws when out of range or not an array. size(): elements or members.
  const Json& at(size_t index) const;
  size_t size() const;

  // Typed reads; each throws std::runtime_error naming the expected and the actual type.
  double as_number() const;
  int64_t as_int() const;  // also throws when the number is not an integer in int64 range
  bool as_bool() const;
  const std::string& as_string() const;
  const std::vector<std::pair<std::string, Json>>& items() const;  // document order
  const std::vector<Json>& elements() const;

  // Builders. push_back needs an array; set needs an object and replaces an existing key.
  Json& push_back(Json value);
  Json& set(const std::string& key, Json value);
  // Adds a member without looking for an existing one (set() is linear in the object's size):
  // for building large objects whose keys the caller knows to be unique.
  Json& append(std::string key, Json value);

  // indent < 0: compact ("{"a":1}"); otherwise one member a line, `indent` spaces a level, like
  // Python's json.dumps(indent=n). Integers print as written; floats in the shortest form that
  // reads back to the same double, with ".0" when integral (1.0, as Python). NaN and infinities
  // throw (JSON has none).
  std::string dump(int indent = -1) const;

  static const char* type_name(Type type);

 private:
  struct IntegerTag {};
  explicit Json(Type type) : type_(type) {}
  Json(int64_t value, IntegerTag) : type_(Type::Number), number_(static_cast<double>(value)), int_(value), integral_(true) {}
  void expect(Type type) const;
  void dump_to(std::string& out, int indent, int depth) const;
  friend class JsonParser;

  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0;
  // Integers written without fraction or exponent (or built from an integer) keep all 64 bits
  // here, since a double holds only 53: byte offsets and token ids stay exact.
  int64_t int_ = 0;
  bool integral_ = false;
  std::string string_;
  std::vector<Json> elements_;
  std::vector<std::pair<std::string, Json>> members_;
};

}  // namespace tiller::io
