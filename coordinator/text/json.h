// A small JSON DOM: parser (RFC 8259, UTF-8) and a serializer that reproduces Python's
// json.dumps byte for byte (the form Hugging Face chat templates' `tojson` produces).
//
// - Objects keep insertion order. A duplicate key while parsing keeps the first position and
//   the last value (what Python's json.loads does).
// - Numbers: an integer literal that fits int64 is kInt, anything else (fraction, exponent,
//   out of range) is kDouble. Doubles print like Python's repr(float): shortest round-trip
//   digits, "1.0", "1e-05", "1e+16", "NaN", "Infinity".
// - Strings are UTF-8. \uXXXX escapes, including surrogate pairs, are decoded; a lone
//   surrogate escape is an error (it has no UTF-8 form). Raw control characters inside a string
//   are an error, as in Python's strict mode. Invalid UTF-8 in the input is an error.
//
// Thread safety: a const Json may be read from several threads at once (lookups never mutate;
// large objects keep a key index that is maintained on insertion).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rs::json {

class Json;
using Member = std::pair<std::string, Json>;

class Json {
 public:
  enum class Type { kNull, kBool, kInt, kDouble, kString, kArray, kObject };

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::kBool), b_(b) {}
  // Any integer type (unsigned values above INT64_MAX wrap; JSON from us never has them).
  template <typename T,
            std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Json(T v) : type_(Type::kInt), i_(static_cast<int64_t>(v)) {}
  Json(double v) : type_(Type::kDouble), d_(v) {}
  Json(std::string s) : type_(Type::kString), s_(std::move(s)) {}
  Json(std::string_view s) : type_(Type::kString), s_(s) {}
  Json(const char* s) : type_(Type::kString), s_(s) {}
  static Json Array(std::vector<Json> items = {});
  static Json Object();

  Json(const Json& o);
  Json(Json&& o) noexcept;
  Json& operator=(const Json& o);
  Json& operator=(Json&& o) noexcept;
  ~Json();

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_int() const { return type_ == Type::kInt; }
  bool is_double() const { return type_ == Type::kDouble; }
  bool is_number() const { return type_ == Type::kInt || type_ == Type::kDouble; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Accessors. Calling one on the wrong type aborts (a programming error): check type first.
  bool as_bool() const;
  int64_t as_int() const;
  double as_double() const;  // kInt converts
  const std::string& as_string() const;
  const std::vector<Json>& as_array() const;
  std::vector<Json>& mutable_array();

  // Arrays and objects: element count; strings: byte length; others 0.
  size_t size() const;
  void push_back(Json v);  // arrays only

  // Objects. find() returns nullptr when absent or when this is not an object.
  const Json* find(std::string_view key) const;
  Json* find(std::string_view key);
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  // Inserts (at the end) or replaces (in place); returns the stored value.
  Json& set(std::string_view key, Json v);
  // Inserts null if absent (object only; a null Json becomes an empty object first).
  Json& operator[](std::string_view key);
  bool erase(std::string_view key);
  const std::vector<Member>& items() const;

  // Deep equality. Like Python: 1 == 1.0 is true; object equality ignores key order.
  bool operator==(const Json& o) const;
  bool operator!=(const Json& o) const { return !(*this == o); }

 private:
  struct ObjectData;
  ObjectData& obj();
  const ObjectData& obj() const;

  Type type_ = Type::kNull;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0;
  std::string s_;
  std::vector<Json> arr_;
  std::unique_ptr<ObjectData> obj_;
};

// Objects up to this many members are searched linearly; larger ones keep a hash index.
inline constexpr size_t kJsonIndexThreshold = 12;

// Storage of an object (an implementation detail; use Json's object methods).
struct Json::ObjectData {
  std::vector<Member> items;
  absl::flat_hash_map<std::string, size_t> index;  // empty while items.size() <= threshold

  void Reindex() {
    index.clear();
    if (items.size() <= kJsonIndexThreshold) return;
    index.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) index.emplace(items[i].first, i);
  }
  ptrdiff_t Find(std::string_view key) const {
    if (!index.empty()) {
      auto it = index.find(absl::string_view(key.data(), key.size()));
      return it == index.end() ? -1 : static_cast<ptrdiff_t>(it->second);
    }
    for (size_t i = 0; i < items.size(); ++i)
      if (items[i].first == key) return static_cast<ptrdiff_t>(i);
    return -1;
  }
  Json& Append(std::string_view key, Json v) {
    items.emplace_back(std::string(key), std::move(v));
    if (!index.empty()) {
      index.emplace(items.back().first, items.size() - 1);
    } else if (items.size() > kJsonIndexThreshold) {
      Reindex();
    }
    return items.back().second;
  }
};

struct ParseOptions {
  // Accept NaN, Infinity and -Infinity literals (Python's json.loads does by default).
  bool allow_nan = true;
  // Nesting limit (arrays + objects), so hostile input cannot exhaust the stack.
  int max_depth = 512;
};

// Parses exactly one JSON value (surrounding whitespace allowed). Errors are InvalidArgument
// and name the line, column and byte offset.
absl::StatusOr<Json> Parse(std::string_view text, const ParseOptions& opts = {});

struct DumpOptions {
  // Python's json.dumps arguments. The defaults here are json.dumps' defaults except
  // ensure_ascii, which defaults to false (the form chat templates' `tojson` uses).
  bool ensure_ascii = false;
  int indent = -1;  // < 0: single line; >= 0: newline + that many spaces per level
  // Unset: ", " without indent and "," with indent (Python's rule).
  std::optional<std::string> item_separator;
  std::string key_separator = ": ";
  bool sort_keys = false;  // by code point (= UTF-8 byte order), as Python sorts str
  bool allow_nan = true;   // false: NaN/Infinity make Dump fail
};

// Serialises like Python's json.dumps(v, ensure_ascii=..., indent=..., separators=...,
// sort_keys=...). Fails only for NaN/Infinity with allow_nan = false.
absl::StatusOr<std::string> Dump(const Json& v, const DumpOptions& opts = {});
// Compact form: separators "," and ":", no indent, ensure_ascii false. Never fails (NaN and
// Infinity are written as Python writes them).
std::string DumpCompact(const Json& v);

// Python's repr(float) for a finite or non-finite double ("1.0", "1e-05", "inf" is "Infinity"
// as json.dumps writes it).
std::string FormatDouble(double d);

// Appends `s` as a JSON string literal (with quotes) the way json.dumps writes it.
void AppendQuoted(std::string* out, std::string_view s, bool ensure_ascii);

}  // namespace rs::json
