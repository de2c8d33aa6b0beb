// A Jinja2 interpreter for the subset chat templates use (Qwen3 / Qwen3.5 and similar).
//
// The goal is byte-identical output with python3-jinja2 configured the way Hugging Face's
// apply_chat_template configures it: ImmutableSandboxedEnvironment, trim_blocks=True,
// lstrip_blocks=True, the loopcontrols extension, keep_trailing_newline=False, a `tojson`
// filter that is json.dumps(x, ensure_ascii=False, ...) and a raise_exception(msg) global.
// Values follow Python semantics (truthiness, str() / repr() spelling, int/float arithmetic,
// code-point string indexing) and jinja2's default Undefined (prints as nothing, iterates as
// empty, but any attribute, item, call or arithmetic on it is an error).
//
// Anything outside the supported subset is a parse or render error naming line and column;
// the interpreter never silently renders something jinja2 would render differently.
//
// Thread safety: a parsed Template is immutable; Render may be called from several threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace rs::jinja {

class Value;

// Positional and keyword arguments of a call (filters, tests, methods, macros, globals).
struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

// A callable value (global function, bound method, macro). It reports errors by returning a
// non-OK status; the interpreter adds the line and column of the call.
using Function = std::function<absl::StatusOr<Value>(CallArgs&)>;

struct Dict;

class Value {
 public:
  enum class Kind : uint8_t {
    kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction, kNamespace
  };

  Value() = default;  // undefined
  static Value Undefined(std::string hint = {});  // hint: the jinja2 error text, e.g. "'x' is undefined"
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value String(std::string s);
  static Value List(std::vector<Value> items);
  static Value Tuple(std::vector<Value> items);  // a list that prints as a Python tuple
  static Value MakeDict();                        // empty, insertion ordered
  static Value MakeNamespace();                   // a mutable dict (namespace())
  static Value Func(Function f, std::string name);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kList && tuple_; }
  bool is_dict() const { return kind_ == Kind::kDict || kind_ == Kind::kNamespace; }
  bool is_mapping() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_function() const { return kind_ == Kind::kFunction; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }
  double as_double() const;  // int, bool or float
  const std::string& str() const;  // strings; "" otherwise
  const std::vector<Value>& list() const;
  std::vector<Value>& mutable_list();
  const Dict& dict() const;
  Dict& mutable_dict();  // dicts are shared: only the builder and namespaces mutate
  const Function& func() const { return *fn_; }
  const std::string& name_or_hint() const;  // function name, or the undefined hint

  // Python truthiness (undefined is false).
  bool truthy() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  bool tuple_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;  // string, or undefined hint, or function name
  std::shared_ptr<std::vector<Value>> l_;
  std::shared_ptr<Dict> d_;
  std::shared_ptr<Function> fn_;
};

// Insertion-ordered mapping with Python dict semantics for keys (1 == 1.0 == True).
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);            // replaces in place, or appends
  void set(std::string_view key, Value value);
};

// Python equality (==) between values: numbers across int/float/bool, strings, lists/tuples
// element-wise, dicts by content, undefined == undefined.
bool Equal(const Value& a, const Value& b);

// Python str() of a value as jinja2 prints it ({{ x }}): None, True, 1.5, [1, 'a'], {'k': 2}...
// Undefined prints as "".
std::string ToStr(const Value& v);
// Python repr().
std::string Repr(const Value& v);
// Python float repr (shortest round trip; 1.0, 1e+16, inf, nan).
std::string FloatRepr(double d);

// json.dumps(v, ensure_ascii, indent, separators, sort_keys) with Python's defaults:
// indent < 0 means None; item_sep/key_sep empty means the default for that indent.
struct JsonOptions {
  bool ensure_ascii = false;
  int indent = -1;
  std::string item_sep;  // default ", " (or "," with indent)
  std::string key_sep;   // default ": "
  bool sort_keys = false;
};
absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& opts = {});

// Parses JSON text (RFC 8259, UTF-8) into a Value: objects keep key order, integers that fit
// int64 become ints, other numbers floats. Errors name the byte offset.
absl::StatusOr<Value> ParseJson(std::string_view text);

class Template {
 public:
  // Parses template source. Errors: InvalidArgument "line L, column C: ...".
  static absl::StatusOr<Template> Parse(std::string_view source);

  // Renders with `context` (a dict) as the top-level variables. Globals available in every
  // template: range, dict, namespace, raise_exception, strftime_now. Errors (including
  // raise_exception) come back as InvalidArgument "line L, column C: ...".
  absl::StatusOr<std::string> Render(const Value& context) const;

  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace rs::jinja
