// Evaluator of the template engine: scopes, expressions, statements, and the jinja2 filters,
// tests, globals and Python str/dict/list methods that chat templates use.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/text/jinja.h"
#include "coordinator/text/jinja_ast.h"
#include "coordinator/text/jinja_utf8.h"

namespace rs::jinja {
namespace internal {
namespace {

// ---- helpers --------------------------------------------------------------------------------

std::string TypeName(const Value& v) {
  using K = Value::Kind;
  switch (v.kind()) {
    case K::kUndefined: return "Undefined";
    case K::kNone: return "NoneType";
    case K::kBool: return "bool";
    case K::kInt: return "int";
    case K::kFloat: return "float";
    case K::kString: return "str";
    case K::kList: return v.is_tuple() ? "tuple" : "list";
    case K::kDict: return "dict";
    case K::kFunction: return "function";
    case K::kNamespace: return "Namespace";
  }
  return "?";
}
// jinja2's object_type_repr, quoted as in its messages.
std::string ObjRepr(const Value& v) {
  if (v.is_none()) return "'None'";
  return "'" + TypeName(v) + " object'";
}

[[noreturn]] void FailUndefined(const Value& v) {
  Fail(v.name_or_hint().empty() ? "value is undefined" : v.name_or_hint());
}
void CheckDefined(const Value& v) {
  if (v.is_undefined()) FailUndefined(v);
}

// Iterates a value the way Python's iter() does: list items, dict keys, string characters.
std::vector<Value> Iterate(const Value& v) {
  using K = Value::Kind;
  switch (v.kind()) {
    case K::kUndefined: return {};
    case K::kList: return v.list();
    case K::kDict: {
      std::vector<Value> keys;
      for (const auto& kv : v.dict().items) keys.push_back(kv.first);
      return keys;
    }
    case K::kString: {
      std::vector<Value> chars;
      const std::string& s = v.str();
      size_t i = 0;
      while (i < s.size()) {
        size_t b = i;
        utf8::Decode(s, &i);
        chars.push_back(Value::String(s.substr(b, i - b)));
      }
      return chars;
    }
    default: Fail("'" + TypeName(v) + "' object is not iterable");
  }
}

int64_t Len(const Value& v) {
  using K = Value::Kind;
  switch (v.kind()) {
    case K::kUndefined: return 0;
    case K::kString: return static_cast<int64_t>(utf8::Length(v.str()));
    case K::kList: return static_cast<int64_t>(v.list().size());
    case K::kDict: return static_cast<int64_t>(v.dict().items.size());
    default: Fail("object of type '" + TypeName(v) + "' has no len()");
  }
}

bool IsIntLike(const Value& v) { return v.is_int() || v.is_bool(); }

// Python's slice.indices(len).
void SliceIndices(int64_t len, const Value& start, const Value& stop, const Value& step,
                  int64_t* b, int64_t* e, int64_t* s) {
  auto check = [](const Value& v) {
    if (!v.is_none() && !v.is_undefined() && !IsIntLike(v))
      Fail("slice indices must be integers or None");
  };
  check(start);
  check(stop);
  check(step);
  *s = (step.is_none() || step.is_undefined()) ? 1 : step.as_int();
  if (*s == 0) Fail("slice step cannot be zero");
  auto adjust = [&](const Value& v, int64_t dflt, bool is_start) {
    (void)is_start;
    if (v.is_none() || v.is_undefined()) return dflt;
    int64_t x = v.as_int();
    if (x < 0) {
      x += len;
      if (x < 0) x = *s < 0 ? -1 : 0;
    } else if (x >= len) {
      x = *s < 0 ? len - 1 : len;
    }
    return x;
  };
  *b = adjust(start, *s < 0 ? len - 1 : 0, true);
  *e = adjust(stop, *s < 0 ? -1 : len, false);
}

template <typename T>
std::vector<T> ApplySlice(const std::vector<T>& items, const Value& a, const Value& b, const Value& c) {
  int64_t st, en, sp;
  SliceIndices(static_cast<int64_t>(items.size()), a, b, c, &st, &en, &sp);
  std::vector<T> out;
  if (sp > 0)
    for (int64_t i = st; i < en; i += sp) out.push_back(items[i]);
  else
    for (int64_t i = st; i > en; i += sp) out.push_back(items[i]);
  return out;
}

std::vector<std::string> Chars(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t b = i;
    utf8::Decode(s, &i);
    out.push_back(s.substr(b, i - b));
  }
  return out;
}

// Python str.strip family. chars: None/undefined = whitespace.
std::string Strip(const std::string& s, const Value& chars, bool left, bool right) {
  std::vector<uint32_t> set;
  bool ws = chars.is_none() || chars.is_undefined();
  if (!ws) {
    if (!chars.is_string()) Fail("strip arg must be None or str");
    size_t i = 0;
    while (i < chars.str().size()) set.push_back(utf8::Decode(chars.str(), &i));
  }
  auto strip_cp = [&](uint32_t cp) {
    return ws ? utf8::IsSpace(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  std::vector<size_t> off = utf8::Offsets(s);
  size_t n = off.size() - 1, b = 0, e = n;
  auto cp_at = [&](size_t k) {
    size_t i = off[k];
    return utf8::Decode(s, &i);
  };
  if (left)
    while (b < e && strip_cp(cp_at(b))) ++b;
  if (right)
    while (e > b && strip_cp(cp_at(e - 1))) --e;
  return s.substr(off[b], off[e] - off[b]);
}

std::string MapCase(const std::string& s, bool upper) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = utf8::Decode(s, &i);
    utf8::Append(upper ? utf8::Upper(cp) : utf8::Lower(cp), &out);
  }
  return out;
}

bool IsCased(uint32_t cp) { return utf8::Upper(cp) != cp || utf8::Lower(cp) != cp; }

// Python str.title(): a cased character after an uncased one starts a word.
std::string PyTitle(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = utf8::Decode(s, &i);
    uint32_t m = prev_cased ? utf8::Lower(cp) : utf8::Upper(cp);
    utf8::Append(m, &out);
    prev_cased = IsCased(cp);
  }
  return out;
}

std::string Capitalize(const std::string& s) {
  std::string out;
  size_t i = 0;
  bool first = true;
  while (i < s.size()) {
    uint32_t cp = utf8::Decode(s, &i);
    utf8::Append(first ? utf8::Upper(cp) : utf8::Lower(cp), &out);
    first = false;
  }
  return out;
}

std::string Replace(const std::string& s, const std::string& old, const std::string& rep, int64_t count) {
  std::string out;
  if (old.empty()) {
    // Python inserts `rep` between characters (and at both ends).
    std::vector<std::string> ch = Chars(s);
    int64_t done = 0;
    for (size_t k = 0; k <= ch.size(); ++k) {
      if (count < 0 || done < count) {
        out += rep;
        ++done;
      }
      if (k < ch.size()) out += ch[k];
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t f = s.find(old, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += rep;
    pos = f + old.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

std::vector<Value> Split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep.is_none() || sep.is_undefined()) {
    // Runs of whitespace; leading/trailing whitespace ignored.
    std::vector<size_t> off = utf8::Offsets(s);
    size_t n = off.size() - 1;
    auto sp = [&](size_t k) {
      size_t i = off[k];
      return utf8::IsSpace(utf8::Decode(s, &i));
    };
    if (!from_right) {
      size_t k = 0;
      int64_t splits = 0;
      while (k < n) {
        while (k < n && sp(k)) ++k;
        if (k >= n) break;
        if (maxsplit >= 0 && splits >= maxsplit) {  // the rest, trailing whitespace kept
          parts.push_back(s.substr(off[k]));
          break;
        }
        size_t b = k;
        while (k < n && !sp(k)) ++k;
        parts.push_back(s.substr(off[b], off[k] - off[b]));
        ++splits;
      }
    } else {
      size_t k = n;
      int64_t splits = 0;
      while (k > 0) {
        while (k > 0 && sp(k - 1)) --k;
        if (k == 0) break;
        if (maxsplit >= 0 && splits >= maxsplit) {  // the rest, leading whitespace kept
          parts.insert(parts.begin(), s.substr(0, off[k]));
          break;
        }
        size_t e = k;
        while (k > 0 && !sp(k - 1)) --k;
        parts.insert(parts.begin(), s.substr(off[k], off[e] - off[k]));
        ++splits;
      }
    }
  } else {
    if (!sep.is_string()) Fail("must be str or None, not " + TypeName(sep));
    const std::string& d = sep.str();
    if (d.empty()) Fail("empty separator");
    if (!from_right) {
      size_t pos = 0;
      int64_t splits = 0;
      while (maxsplit < 0 || splits < maxsplit) {
        size_t f = s.find(d, pos);
        if (f == std::string::npos) break;
        parts.push_back(s.substr(pos, f - pos));
        pos = f + d.size();
        ++splits;
      }
      parts.push_back(s.substr(pos));
    } else {
      size_t end = s.size();
      int64_t splits = 0;
      std::vector<std::string> rev;
      while (maxsplit < 0 || splits < maxsplit) {
        if (end < d.size()) break;
        size_t f = s.rfind(d, end - d.size());
        if (f == std::string::npos) break;
        rev.push_back(s.substr(f + d.size(), end - f - d.size()));
        end = f;
        ++splits;
      }
      rev.push_back(s.substr(0, end));
      parts.assign(rev.rbegin(), rev.rend());
    }
  }
  std::vector<Value> out;
  for (auto& p : parts) out.push_back(Value::String(std::move(p)));
  return out;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Ordering (<, >) between values as Python does it; fails for unorderable types.
int Compare3(const Value& a, const Value& b, const char* op) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      double x = a.as_double(), y = b.as_double();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());  // UTF-8 byte order == code point order
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    const auto& x = a.list();
    const auto& y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (Equal(x[i], y[i])) continue;
      return Compare3(x[i], y[i], op);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  if (a.is_undefined()) FailUndefined(a);
  if (b.is_undefined()) FailUndefined(b);
  Fail(absl::StrCat("'", op, "' not supported between instances of '", TypeName(a), "' and '",
                    TypeName(b), "'"));
}

bool Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kString:
      if (!item.is_string()) {
        if (item.is_undefined()) FailUndefined(item);
        Fail("'in <string>' requires string as left operand, not " + TypeName(item));
      }
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::kList:
      for (const auto& v : container.list())
        if (Equal(v, item)) return true;
      return false;
    case Value::Kind::kDict: return container.dict().find(item) != nullptr;
    case Value::Kind::kUndefined: return false;
    default: Fail("argument of type '" + TypeName(container) + "' is not iterable");
  }
}

// ---- call argument binding ------------------------------------------------------------------

// Binds positional/keyword arguments to named parameters (Python rules); missing ones are
// left undefined so callers apply their defaults.
std::vector<Value> Bind(const char* fname, CallArgs& args, const std::vector<std::string>& params,
                        size_t skip_first = 0) {
  std::vector<Value> out(params.size());
  if (args.pos.size() > params.size() - skip_first)
    Fail(absl::StrCat(fname, "() takes at most ", params.size() - skip_first, " argument(s) (",
                      args.pos.size(), " given)"));
  for (size_t i = 0; i < args.pos.size(); ++i) out[i + skip_first] = args.pos[i];
  for (auto& [k, v] : args.kw) {
    auto it = std::find(params.begin(), params.end(), k);
    if (it == params.end() || static_cast<size_t>(it - params.begin()) < skip_first)
      Fail(absl::StrCat(fname, "() got an unexpected keyword argument '", k, "'"));
    size_t idx = it - params.begin();
    if (idx < args.pos.size() + skip_first)
      Fail(absl::StrCat(fname, "() got multiple values for argument '", k, "'"));
    out[idx] = v;
  }
  return out;
}

int64_t ToIntArg(const Value& v, const char* what) {
  if (!IsIntLike(v)) Fail(absl::StrCat(what, " must be an integer, not ", TypeName(v)));
  return v.as_int();
}

const std::string& StrArg(const Value& v, const char* what) {
  if (!v.is_string()) {
    if (v.is_undefined()) FailUndefined(v);
    Fail(absl::StrCat(what, " must be str, not ", TypeName(v)));
  }
  return v.str();
}

// Wraps a native lambda as a Function value; internal errors become statuses.
Value NativeFunc(std::string name, std::function<Value(CallArgs&)> f) {
  return Value::Func(
      [f = std::move(f)](CallArgs& a) -> absl::StatusOr<Value> {
        try {
          return f(a);
        } catch (const Error& e) {
          return absl::InvalidArgumentError(e.msg);
        }
      },
      std::move(name));
}

Value CallValue(const Value& fn, CallArgs& args) {
  if (fn.is_undefined()) FailUndefined(fn);
  if (!fn.is_function()) Fail("'" + TypeName(fn) + "' object is not callable");
  absl::StatusOr<Value> r = fn.func()(args);
  if (!r.ok()) Fail(std::string(r.status().message()));
  return std::move(*r);
}

// ---- methods --------------------------------------------------------------------------------

Value StrMethod(const Value& self, const std::string& name, bool* found);
Value DictMethod(const Value& self, const std::string& name, bool* found);
Value ListMethod(const Value& self, const std::string& name, bool* found);

std::string PyFormat(const std::string& fmt, CallArgs& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '{') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
        out += '{';
        ++i;
        continue;
      }
      size_t e = fmt.find('}', i);
      if (e == std::string::npos) Fail("Single '{' encountered in format string");
      std::string field = fmt.substr(i + 1, e - i - 1);
      if (field.find_first_of(":!.[") != std::string::npos)
        Fail("unsupported str.format field '{" + field + "}'");
      const Value* v = nullptr;
      if (field.empty()) {
        if (auto_idx >= a.pos.size()) Fail("Replacement index out of range for positional args");
        v = &a.pos[auto_idx++];
      } else if (std::all_of(field.begin(), field.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
        size_t k = std::stoul(field);
        if (k >= a.pos.size()) Fail("Replacement index out of range for positional args");
        v = &a.pos[k];
      } else {
        for (auto& [kn, kv] : a.kw)
          if (kn == field) v = &kv;
        if (!v) Fail("KeyError: '" + field + "'");
      }
      out += ToStr(*v);
      i = e;
    } else if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') ++i;
      else Fail("Single '}' encountered in format string");
      out += '}';
    } else {
      out += c;
    }
  }
  return out;
}

Value StrMethod(const Value& self, const std::string& name, bool* found) {
  *found = true;
  const std::string s = self.str();
  auto F = [&](std::function<Value(CallArgs&)> f) { return NativeFunc("str." + name, std::move(f)); };
  if (name == "startswith" || name == "endswith") {
    bool starts = name == "startswith";
    return F([s, starts, name](CallArgs& a) {
      auto v = Bind(name.c_str(), a, {"prefix", "start", "end"});
      std::string sub = s;
      if (!v[1].is_undefined() || !v[2].is_undefined()) {
        std::vector<std::string> ch = Chars(s);
        auto part = ApplySlice(ch, v[1].is_undefined() ? Value::None() : v[1],
                               v[2].is_undefined() ? Value::None() : v[2], Value::None());
        sub.clear();
        for (auto& c : part) sub += c;
      }
      auto test = [&](const Value& p) {
        const std::string& x = StrArg(p, name.c_str());
        if (x.size() > sub.size()) return false;
        return starts ? sub.compare(0, x.size(), x) == 0
                      : sub.compare(sub.size() - x.size(), x.size(), x) == 0;
      };
      if (v[0].is_tuple()) {
        for (const auto& p : v[0].list())
          if (test(p)) return Value::Bool(true);
        return Value::Bool(false);
      }
      return Value::Bool(test(v[0]));
    });
  }
  if (name == "split" || name == "rsplit") {
    bool right = name == "rsplit";
    return F([s, right, name](CallArgs& a) {
      auto v = Bind(name.c_str(), a, {"sep", "maxsplit"});
      int64_t maxsplit = v[1].is_undefined() ? -1 : ToIntArg(v[1], "maxsplit");
      return Value::List(Split(s, v[0], maxsplit, right));
    });
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    bool l = name != "rstrip", r = name != "lstrip";
    return F([s, l, r, name](CallArgs& a) {
      auto v = Bind(name.c_str(), a, {"chars"});
      return Value::String(Strip(s, v[0], l, r));
    });
  }
  if (name == "replace") {
    return F([s](CallArgs& a) {
      auto v = Bind("replace", a, {"old", "new", "count"});
      int64_t count = v[2].is_undefined() ? -1 : ToIntArg(v[2], "count");
      return Value::String(Replace(s, StrArg(v[0], "replace() old"), StrArg(v[1], "replace() new"), count));
    });
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize" ||
      name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isupper" ||
      name == "islower" || name == "splitlines") {
    return F([s, name](CallArgs& a) {
      Bind(name.c_str(), a, {});
      if (name == "upper") return Value::String(MapCase(s, true));
      if (name == "lower") return Value::String(MapCase(s, false));
      if (name == "title") return Value::String(PyTitle(s));
      if (name == "capitalize") return Value::String(Capitalize(s));
      if (name == "splitlines") {
        std::vector<Value> lines;
        size_t b = 0;
        for (size_t i = 0; i < s.size(); ++i) {
          if (s[i] == '\n' || s[i] == '\r') {
            lines.push_back(Value::String(s.substr(b, i - b)));
            if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
            b = i + 1;
          }
        }
        if (b < s.size()) lines.push_back(Value::String(s.substr(b)));
        return Value::List(std::move(lines));
      }
      if (s.empty()) return Value::Bool(false);
      size_t i = 0;
      bool any_cased = false, all = true;
      while (i < s.size()) {
        uint32_t cp = utf8::Decode(s, &i);
        if (name == "isdigit") all &= cp >= '0' && cp <= '9';
        else if (name == "isalpha") all &= utf8::IsAlpha(cp);
        else if (name == "isspace") all &= utf8::IsSpace(cp);
        else if (IsCased(cp)) {
          any_cased = true;
          if (name == "isupper") all &= utf8::Upper(cp) == cp;
          else all &= utf8::Lower(cp) == cp;
        }
      }
      if (name == "isupper" || name == "islower") return Value::Bool(all && any_cased);
      return Value::Bool(all);
    });
  }
  if (name == "find" || name == "rfind" || name == "count" || name == "index" || name == "rindex") {
    return F([s, name](CallArgs& a) {
      auto v = Bind(name.c_str(), a, {"sub"});
      const std::string& sub = StrArg(v[0], name.c_str());
      if (name == "count") {
        if (sub.empty()) return Value::Int(static_cast<int64_t>(utf8::Length(s)) + 1);
        int64_t n = 0;
        for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
        return Value::Int(n);
      }
      size_t p = (name == "find" || name == "index") ? s.find(sub) : s.rfind(sub);
      if (p == std::string::npos) {
        if (name == "index" || name == "rindex") Fail("substring not found");
        return Value::Int(-1);
      }
      return Value::Int(static_cast<int64_t>(utf8::Length(std::string_view(s).substr(0, p))));
    });
  }
  if (name == "join") {
    return F([s](CallArgs& a) {
      auto v = Bind("join", a, {"iterable"});
      std::string out;
      bool first = true;
      for (const auto& it : Iterate(v[0])) {
        if (!first) out += s;
        first = false;
        out += StrArg(it, "sequence item");
      }
      return Value::String(std::move(out));
    });
  }
  if (name == "removeprefix" || name == "removesuffix") {
    bool pre = name == "removeprefix";
    return F([s, pre, name](CallArgs& a) {
      auto v = Bind(name.c_str(), a, {"affix"});
      const std::string& x = StrArg(v[0], name.c_str());
      if (pre && s.compare(0, x.size(), x) == 0 && x.size() <= s.size()) return Value::String(s.substr(x.size()));
      if (!pre && x.size() <= s.size() && s.compare(s.size() - x.size(), x.size(), x) == 0)
        return Value::String(s.substr(0, s.size() - x.size()));
      return Value::String(s);
    });
  }
  if (name == "format") {
    return F([s](CallArgs& a) { return Value::String(PyFormat(s, a)); });
  }
  static const char* kOtherStrMethods[] = {
      "casefold", "center", "encode", "expandtabs", "format_map", "isalnum", "isascii",
      "isdecimal", "isidentifier", "isnumeric", "isprintable", "istitle", "ljust", "maketrans",
      "partition", "rjust", "rpartition", "swapcase", "translate", "zfill"};
  for (const char* m : kOtherStrMethods) {
    if (name == m)
      return F([name](CallArgs&) -> Value { Fail("unsupported string method '" + name + "'"); });
  }
  *found = false;
  return Value();
}

Value DictMethod(const Value& self, const std::string& name, bool* found) {
  *found = true;
  auto F = [&](std::function<Value(CallArgs&)> f) { return NativeFunc("dict." + name, std::move(f)); };
  if (name == "get") {
    return F([self](CallArgs& a) {
      auto v = Bind("get", a, {"key", "default"});
      const Value* r = self.dict().find(v[0]);
      if (r) return *r;
      return v[1].is_undefined() ? Value::None() : v[1];
    });
  }
  if (name == "items" || name == "keys" || name == "values") {
    return F([self, name](CallArgs& a) {
      Bind(name.c_str(), a, {});
      std::vector<Value> out;
      for (const auto& kv : self.dict().items) {
        if (name == "items") out.push_back(Value::Tuple({kv.first, kv.second}));
        else out.push_back(name == "keys" ? kv.first : kv.second);
      }
      return Value::List(std::move(out));
    });
  }
  if (name == "copy") {
    return F([self](CallArgs& a) {
      Bind("copy", a, {});
      Value d = Value::MakeDict();
      d.mutable_dict() = self.dict();
      return d;
    });
  }
  static const char* kMutators[] = {"pop", "popitem", "setdefault", "update", "clear"};
  for (const char* m : kMutators) {
    if (name == m)
      return F([name](CallArgs&) -> Value {
        Fail("access to attribute '" + name + "' of 'dict' object is unsafe.");
      });
  }
  if (name == "fromkeys") return F([](CallArgs&) -> Value { Fail("unsupported dict method 'fromkeys'"); });
  *found = false;
  return Value();
}

Value ListMethod(const Value& self, const std::string& name, bool* found) {
  *found = true;
  auto F = [&](std::function<Value(CallArgs&)> f) { return NativeFunc("list." + name, std::move(f)); };
  if (name == "count") {
    return F([self](CallArgs& a) {
      auto v = Bind("count", a, {"value"});
      int64_t n = 0;
      for (const auto& x : self.list()) n += Equal(x, v[0]);
      return Value::Int(n);
    });
  }
  if (name == "index") {
    return F([self](CallArgs& a) {
      auto v = Bind("index", a, {"value"});
      const auto& l = self.list();
      for (size_t i = 0; i < l.size(); ++i)
        if (Equal(l[i], v[0])) return Value::Int(static_cast<int64_t>(i));
      Fail(Repr(v[0]) + " is not in list");
    });
  }
  static const char* kMutators[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};
  for (const char* m : kMutators) {
    if (name == m && !self.is_tuple())
      return F([name](CallArgs&) -> Value {
        Fail("access to attribute '" + name + "' of 'list' object is unsafe.");
      });
  }
  if (name == "copy" && !self.is_tuple()) return F([self](CallArgs&) { return Value::List(self.list()); });
  *found = false;
  return Value();
}

// jinja2 Environment.getattr: Python attribute first, then item.
Value GetAttr(const Value& obj, const std::string& name) {
  bool found = false;
  Value m;
  switch (obj.kind()) {
    case Value::Kind::kUndefined: FailUndefined(obj);
    case Value::Kind::kString: m = StrMethod(obj, name, &found); break;
    case Value::Kind::kDict: m = DictMethod(obj, name, &found); break;
    case Value::Kind::kList: m = ListMethod(obj, name, &found); break;
    default: break;
  }
  if (found) return m;
  if (obj.kind() == Value::Kind::kDict || obj.is_namespace()) {
    const Value* v = obj.dict().find(std::string_view(name));
    if (v) return *v;
  }
  if (obj.is_namespace())
    return Value::Undefined("'jinja2.utils.Namespace object' has no attribute '" + name + "'");
  return Value::Undefined(ObjRepr(obj) + " has no attribute '" + name + "'");
}

// jinja2 Environment.getitem: item first, then (for string keys) attribute.
Value GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) FailUndefined(obj);
  if (obj.kind() == Value::Kind::kDict) {
    const Value* v = obj.dict().find(key);
    if (v) return *v;
  } else if (obj.is_list() && IsIntLike(key)) {
    int64_t i = key.as_int(), n = static_cast<int64_t>(obj.list().size());
    if (i < 0) i += n;
    if (i >= 0 && i < n) return obj.list()[i];
  } else if (obj.is_string() && IsIntLike(key)) {
    std::vector<std::string> ch = Chars(obj.str());
    int64_t i = key.as_int(), n = static_cast<int64_t>(ch.size());
    if (i < 0) i += n;
    if (i >= 0 && i < n) return Value::String(ch[i]);
  }
  if (key.is_string()) {
    Value a = GetAttr(obj, key.str());
    if (!a.is_undefined()) return a;
    return Value::Undefined(ObjRepr(obj) + " has no attribute '" + key.str() + "'");
  }
  return Value::Undefined(ObjRepr(obj) + " has no element " + Repr(key));
}

// ---- arithmetic -----------------------------------------------------------------------------

double FloorDivD(double a, double b) { return std::floor(a / b); }

Value Arith(const std::string& op, const Value& l, const Value& r) {
  if (l.is_undefined()) FailUndefined(l);
  if (r.is_undefined()) FailUndefined(r);
  auto unsupported = [&]() -> Value {
    Fail(absl::StrCat("unsupported operand type(s) for ", op, ": '", TypeName(l), "' and '",
                      TypeName(r), "'"));
  };
  if (l.is_number() && r.is_number()) {
    bool fl = l.is_float() || r.is_float();
    if (op == "/") {
      if (r.as_double() == 0) Fail("division by zero");
      return Value::Float(l.as_double() / r.as_double());
    }
    if (fl) {
      double a = l.as_double(), b = r.as_double();
      if (op == "+") return Value::Float(a + b);
      if (op == "-") return Value::Float(a - b);
      if (op == "*") return Value::Float(a * b);
      if (op == "//") {
        if (b == 0) Fail("float floor division by zero");
        return Value::Float(FloorDivD(a, b));
      }
      if (op == "%") {
        if (b == 0) Fail("float modulo");
        double m = std::fmod(a, b);
        if (m != 0 && ((m < 0) != (b < 0))) m += b;
        return Value::Float(m);
      }
      if (op == "**") return Value::Float(std::pow(a, b));
    } else {
      int64_t a = l.as_int(), b = r.as_int(), out;
      if (op == "+") {
        if (__builtin_add_overflow(a, b, &out)) Fail("integer overflow");
        return Value::Int(out);
      }
      if (op == "-") {
        if (__builtin_sub_overflow(a, b, &out)) Fail("integer overflow");
        return Value::Int(out);
      }
      if (op == "*") {
        if (__builtin_mul_overflow(a, b, &out)) Fail("integer overflow");
        return Value::Int(out);
      }
      if (op == "//" || op == "%") {
        if (b == 0) Fail("integer division or modulo by zero");
        int64_t q = a / b, m = a % b;
        if (m != 0 && ((m < 0) != (b < 0))) {
          --q;
          m += b;
        }
        return Value::Int(op == "//" ? q : m);
      }
      if (op == "**") {
        if (b < 0) return Value::Float(std::pow(static_cast<double>(a), static_cast<double>(b)));
        int64_t res = 1;
        for (int64_t k = 0; k < b; ++k)
          if (__builtin_mul_overflow(res, a, &res)) Fail("integer overflow");
        return Value::Int(res);
      }
    }
    return unsupported();
  }
  if (op == "+") {
    if (l.is_string() && r.is_string()) return Value::String(l.str() + r.str());
    if (l.is_list() && r.is_list() && l.is_tuple() == r.is_tuple()) {
      std::vector<Value> out = l.list();
      out.insert(out.end(), r.list().begin(), r.list().end());
      return l.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
    }
    if (l.is_string() || r.is_string()) {
      if (l.is_string()) Fail("can only concatenate str (not \"" + TypeName(r) + "\") to str");
    }
    return unsupported();
  }
  if (op == "*") {
    const Value* seq = nullptr;
    const Value* n = nullptr;
    if ((l.is_string() || l.is_list()) && IsIntLike(r)) {
      seq = &l;
      n = &r;
    } else if ((r.is_string() || r.is_list()) && IsIntLike(l)) {
      seq = &r;
      n = &l;
    }
    if (!seq) return unsupported();
    int64_t k = std::max<int64_t>(0, n->as_int());
    if (seq->is_string()) {
      if (k * seq->str().size() > (1u << 26)) Fail("string repetition too large");
      std::string out;
      for (int64_t i = 0; i < k; ++i) out += seq->str();
      return Value::String(std::move(out));
    }
    std::vector<Value> out;
    for (int64_t i = 0; i < k; ++i) out.insert(out.end(), seq->list().begin(), seq->list().end());
    return seq->is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
  }
  if (op == "%" && l.is_string()) Fail("unsupported: printf-style '%' string formatting");
  return unsupported();
}

// ---- runtime --------------------------------------------------------------------------------

struct Frame {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Frame> parent;

  Value* FindLocal(const std::string& n) {
    for (auto& kv : vars)
      if (kv.first == n) return &kv.second;
    return nullptr;
  }
  void Set(const std::string& n, Value v) {
    if (Value* p = FindLocal(n)) *p = std::move(v);
    else vars.emplace_back(n, std::move(v));
  }
};
using FramePtr = std::shared_ptr<Frame>;

enum class Flow { kNormal, kBreak, kContinue };

class Renderer;
Value FilterCall(Renderer& r, const std::string& name, const Value& v, CallArgs& args);
bool TestCall(Renderer& r, const std::string& name, const Value& v, CallArgs& args);

class Renderer {
 public:
  Renderer(const Value& ctx, std::shared_ptr<const Template::Impl> keep) : ctx_(ctx), keep_(std::move(keep)) {
    root_ = std::make_shared<Frame>();
  }

  void Run(const Body& body, std::string* out) {
    Flow f = Exec(body, root_, out);
    (void)f;
  }

  Value Lookup(const std::string& name, const FramePtr& frame) {
    for (Frame* f = frame.get(); f; f = f->parent.get())
      if (Value* v = f->FindLocal(name)) return *v;
    if (ctx_.is_dict())
      if (const Value* v = ctx_.dict().find(std::string_view(name))) return *v;
    Value g = Global(name);
    if (!g.is_undefined()) return g;
    if (name == "self") Fail("unsupported: 'self' (template blocks)");
    return Value::Undefined("'" + name + "' is undefined");
  }

  Value Global(const std::string& name) {
    if (name == "range") {
      return NativeFunc("range", [](CallArgs& a) {
        if (!a.kw.empty()) Fail("range() takes no keyword arguments");
        if (a.pos.empty() || a.pos.size() > 3)
          Fail(absl::StrCat("range expected 1 to 3 arguments, got ", a.pos.size()));
        int64_t start = 0, stop, step = 1;
        if (a.pos.size() == 1) stop = ToIntArg(a.pos[0], "range() argument");
        else {
          start = ToIntArg(a.pos[0], "range() argument");
          stop = ToIntArg(a.pos[1], "range() argument");
          if (a.pos.size() == 3) step = ToIntArg(a.pos[2], "range() argument");
        }
        if (step == 0) Fail("range() arg 3 must not be zero");
        std::vector<Value> out;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
          out.push_back(Value::Int(i));
          if (out.size() > 100000) Fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        }
        return Value::List(std::move(out));
      });
    }
    if (name == "namespace" || name == "dict") {
      bool ns = name == "namespace";
      return NativeFunc(name, [ns](CallArgs& a) {
        Value d = ns ? Value::MakeNamespace() : Value::MakeDict();
        if (a.pos.size() > 1) Fail("expected at most 1 positional argument");
        if (a.pos.size() == 1) {
          if (!a.pos[0].is_dict()) Fail("namespace()/dict() positional argument must be a mapping");
          for (const auto& kv : a.pos[0].dict().items) d.mutable_dict().set(kv.first, kv.second);
        }
        for (auto& [k, v] : a.kw) d.mutable_dict().set(k, v);
        return d;
      });
    }
    if (name == "raise_exception") {
      return NativeFunc("raise_exception", [](CallArgs& a) -> Value {
        auto v = Bind("raise_exception", a, {"message"});
        Fail("raise_exception: " + ToStr(v[0]));
      });
    }
    if (name == "strftime_now") {
      return NativeFunc("strftime_now", [](CallArgs& a) {
        auto v = Bind("strftime_now", a, {"format"});
        std::time_t t = std::time(nullptr);
        std::tm tm{};
        localtime_r(&t, &tm);
        char buf[256];
        size_t n = std::strftime(buf, sizeof buf, StrArg(v[0], "format").c_str(), &tm);
        return Value::String(std::string(buf, n));
      });
    }
    return Value();
  }

  // Evaluates an expression; errors without a location get this node's.
  Value Eval(const Expr& e, const FramePtr& f) {
    try {
      return EvalInner(e, f);
    } catch (Error& err) {
      if (err.line == 0) {
        err.line = e.line;
        err.col = e.col;
      }
      throw;
    }
  }

  CallArgs EvalArgs(const Expr& e, const FramePtr& f, size_t first) {
    CallArgs args;
    for (size_t i = first; i < e.a.size(); ++i) args.pos.push_back(Eval(*e.a[i], f));
    for (const auto& [k, x] : e.kw) args.kw.emplace_back(k, Eval(*x, f));
    return args;
  }

  Value EvalInner(const Expr& e, const FramePtr& f) {
    switch (e.kind) {
      case ExprKind::kConst: return e.value;
      case ExprKind::kName: return Lookup(e.name, f);
      case ExprKind::kList:
      case ExprKind::kTuple: {
        std::vector<Value> items;
        for (const auto& x : e.a) items.push_back(Eval(*x, f));
        return e.kind == ExprKind::kList ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
      }
      case ExprKind::kDict: {
        Value d = Value::MakeDict();
        for (size_t i = 0; i + 1 < e.a.size(); i += 2) {
          Value k = Eval(*e.a[i], f);
          if (k.is_list() && !k.is_tuple()) Fail("unhashable type: 'list'");
          if (k.is_dict()) Fail("unhashable type: 'dict'");
          d.mutable_dict().set(std::move(k), Eval(*e.a[i + 1], f));
        }
        return d;
      }
      case ExprKind::kGetattr: return GetAttr(Eval(*e.a[0], f), e.name);
      case ExprKind::kGetitem: {
        Value obj = Eval(*e.a[0], f);
        const Expr& idx = *e.a[1];
        if (idx.kind == ExprKind::kSlice) {
          Value s[3];
          for (int k = 0; k < 3; ++k) s[k] = idx.a[k] ? Eval(*idx.a[k], f) : Value::None();
          if (obj.is_undefined()) FailUndefined(obj);
          if (obj.is_string()) {
            auto part = ApplySlice(Chars(obj.str()), s[0], s[1], s[2]);
            std::string out;
            for (auto& c : part) out += c;
            return Value::String(std::move(out));
          }
          if (obj.is_list()) {
            auto part = ApplySlice(obj.list(), s[0], s[1], s[2]);
            return obj.is_tuple() ? Value::Tuple(std::move(part)) : Value::List(std::move(part));
          }
          return Value::Undefined(ObjRepr(obj) + " has no element slice");
        }
        return GetItem(obj, Eval(idx, f));
      }
      case ExprKind::kSlice: Fail("slice outside of a subscript");
      case ExprKind::kCall: {
        Value fn = Eval(*e.a[0], f);
        CallArgs args = EvalArgs(e, f, 1);
        return CallValue(fn, args);
      }
      case ExprKind::kFilter: {
        Value v = Eval(*e.a[0], f);
        CallArgs args = EvalArgs(e, f, 1);
        return FilterCall(*this, e.name, v, args);
      }
      case ExprKind::kTest: {
        Value v = Eval(*e.a[0], f);
        CallArgs args = EvalArgs(e, f, 1);
        return Value::Bool(TestCall(*this, e.name, v, args));
      }
      case ExprKind::kNot: return Value::Bool(!Eval(*e.a[0], f).truthy());
      case ExprKind::kNeg:
      case ExprKind::kPos: {
        Value v = Eval(*e.a[0], f);
        if (v.is_undefined()) FailUndefined(v);
        if (!v.is_number()) Fail("bad operand type for unary " + std::string(e.kind == ExprKind::kNeg ? "-" : "+") + ": '" + TypeName(v) + "'");
        if (e.kind == ExprKind::kPos) return v.is_bool() ? Value::Int(v.as_int()) : v;
        if (v.is_float()) return Value::Float(-v.as_double());
        return Value::Int(-v.as_int());
      }
      case ExprKind::kBinary: return Arith(e.name, Eval(*e.a[0], f), Eval(*e.a[1], f));
      case ExprKind::kAnd: {
        Value l = Eval(*e.a[0], f);
        return l.truthy() ? Eval(*e.a[1], f) : l;
      }
      case ExprKind::kOr: {
        Value l = Eval(*e.a[0], f);
        return l.truthy() ? l : Eval(*e.a[1], f);
      }
      case ExprKind::kConcat: {
        std::string out;
        for (const auto& x : e.a) out += ToStr(Eval(*x, f));
        return Value::String(std::move(out));
      }
      case ExprKind::kCompare: {
        Value l = Eval(*e.a[0], f);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value r = Eval(*e.a[i + 1], f);
          const std::string& op = e.ops[i];
          bool ok;
          if (op == "eq") ok = Equal(l, r);
          else if (op == "ne") ok = !Equal(l, r);
          else if (op == "in") ok = Contains(r, l);
          else if (op == "notin") ok = !Contains(r, l);
          else if (op == "lt") ok = Compare3(l, r, "<") < 0;
          else if (op == "lteq") ok = Compare3(l, r, "<=") <= 0;
          else if (op == "gt") ok = Compare3(l, r, ">") > 0;
          else ok = Compare3(l, r, ">=") >= 0;
          if (!ok) return Value::Bool(false);
          l = std::move(r);
        }
        return Value::Bool(true);
      }
      case ExprKind::kCondExpr: {
        if (Eval(*e.a[0], f).truthy()) return Eval(*e.a[1], f);
        if (e.a[2]) return Eval(*e.a[2], f);
        return Value::Undefined("the inline if-expression on line " + std::to_string(e.line) +
                                " evaluated to false and no else section was defined.");
      }
    }
    Fail("internal: unknown expression kind");
  }

  void Assign(const Stmt& s, const FramePtr& f, Value v) {
    if (!s.ns_attr.empty()) {
      Value ns = Lookup(s.targets[0], f);
      if (!ns.is_namespace()) Fail("cannot assign attribute on non-namespace object", s.line, s.col);
      ns.mutable_dict().set(s.ns_attr, std::move(v));
      return;
    }
    if (!s.target_tuple) {
      f->Set(s.targets[0], std::move(v));
      return;
    }
    std::vector<Value> items;
    try {
      items = Iterate(v);
    } catch (Error& err) {
      Fail("cannot unpack non-iterable " + TypeName(v) + " object", s.line, s.col);
    }
    if (items.size() != s.targets.size())
      Fail(absl::StrCat(items.size() < s.targets.size() ? "not enough values to unpack (expected "
                                                         : "too many values to unpack (expected ",
                        s.targets.size(), ", got ", items.size(), ")"),
           s.line, s.col);
    for (size_t i = 0; i < items.size(); ++i) f->Set(s.targets[i], items[i]);
  }

  Flow Exec(const Body& body, const FramePtr& f, std::string* out) {
    for (const auto& sp : body) {
      Flow fl = ExecOne(*sp, f, out);
      if (fl != Flow::kNormal) return fl;
    }
    return Flow::kNormal;
  }

  Flow ExecOne(const Stmt& s, const FramePtr& f, std::string* out) {
    switch (s.kind) {
      case StmtKind::kData: *out += s.text; return Flow::kNormal;
      case StmtKind::kOutput: *out += ToStr(Eval(*s.expr, f)); return Flow::kNormal;
      case StmtKind::kIf:
        for (size_t i = 0; i < s.conds.size(); ++i)
          if (Eval(*s.conds[i], f).truthy()) return Exec(s.bodies[i], f, out);
        return Exec(s.else_body, f, out);
      case StmtKind::kFor: return ExecFor(s, f, out);
      case StmtKind::kSet: Assign(s, f, Eval(*s.expr, f)); return Flow::kNormal;
      case StmtKind::kSetBlock: {
        std::string buf;
        auto inner = std::make_shared<Frame>();
        inner->parent = f;
        Exec(s.body, inner, &buf);
        Assign(s, f, Value::String(std::move(buf)));
        return Flow::kNormal;
      }
      case StmtKind::kMacro: f->Set(s.name, MakeMacro(s, f)); return Flow::kNormal;
      case StmtKind::kBreak: return Flow::kBreak;
      case StmtKind::kContinue: return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  Flow ExecFor(const Stmt& s, const FramePtr& f, std::string* out) {
    Value seq = Eval(*s.expr, f);
    std::vector<Value> items;
    try {
      items = Iterate(seq);
    } catch (Error& err) {
      err.line = s.expr->line;
      err.col = s.expr->col;
      throw;
    }
    if (s.filter) {
      std::vector<Value> kept;
      for (auto& it : items) {
        auto fr = std::make_shared<Frame>();
        fr->parent = f;
        BindTargets(s, fr, it);
        if (Eval(*s.filter, fr).truthy()) kept.push_back(std::move(it));
      }
      items = std::move(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      auto fr = std::make_shared<Frame>();
      fr->parent = f;
      BindTargets(s, fr, items[i]);
      Value loop = Value::MakeDict();
      Dict& d = loop.mutable_dict();
      d.set("index", Value::Int(i + 1));
      d.set("index0", Value::Int(i));
      d.set("revindex", Value::Int(n - i));
      d.set("revindex0", Value::Int(n - i - 1));
      d.set("first", Value::Bool(i == 0));
      d.set("last", Value::Bool(i == n - 1));
      d.set("length", Value::Int(n));
      d.set("depth", Value::Int(1));
      d.set("depth0", Value::Int(0));
      d.set("previtem", i > 0 ? items[i - 1] : Value::Undefined("there is no previous item"));
      d.set("nextitem", i + 1 < n ? items[i + 1] : Value::Undefined("there is no next item"));
      d.set("cycle", NativeFunc("loop.cycle", [i](CallArgs& a) {
              if (a.pos.empty()) Fail("no items for cycling given");
              return a.pos[static_cast<size_t>(i) % a.pos.size()];
            }));
      fr->Set("loop", std::move(loop));
      Flow fl = Exec(s.body, fr, out);
      if (fl == Flow::kBreak) break;
    }
    if (n == 0) {
      auto fr = std::make_shared<Frame>();
      fr->parent = f;
      Exec(s.else_body, fr, out);
    }
    return Flow::kNormal;
  }

  void BindTargets(const Stmt& s, const FramePtr& fr, const Value& item) {
    if (!s.target_tuple) {
      fr->Set(s.targets[0], item);
      return;
    }
    std::vector<Value> parts;
    try {
      parts = Iterate(item);
    } catch (Error&) {
      Fail("cannot unpack non-iterable " + TypeName(item) + " object", s.line, s.col);
    }
    if (parts.size() != s.targets.size())
      Fail(absl::StrCat(parts.size() < s.targets.size() ? "not enough values to unpack (expected "
                                                         : "too many values to unpack (expected ",
                        s.targets.size(), ", got ", parts.size(), ")"),
           s.line, s.col);
    for (size_t k = 0; k < parts.size(); ++k) fr->Set(s.targets[k], parts[k]);
  }

  Value MakeMacro(const Stmt& s, const FramePtr& def_frame) {
    const Stmt* sp = &s;
    // The macro keeps its defining frame alive; the renderer outlives every call.
    Renderer* self = this;
    return Value::Func(
        [self, sp, def_frame](CallArgs& a) -> absl::StatusOr<Value> {
          try {
            if (++self->depth_ > 100) Fail("macro recursion deeper than 100");
            auto fr = std::make_shared<Frame>();
            fr->parent = def_frame;
            std::vector<Value> v = Bind(sp->name.c_str(), a, sp->params);
            for (size_t i = 0; i < sp->params.size(); ++i) {
              if (v[i].is_undefined() && sp->defaults[i]) v[i] = self->Eval(*sp->defaults[i], fr);
              else if (v[i].is_undefined())
                v[i] = Value::Undefined("'" + sp->params[i] + "' is undefined");
              fr->Set(sp->params[i], v[i]);
            }
            // jinja2 gives every macro `varargs` and `kwargs`; extra arguments are refused
            // above (jinja2 would collect them when the body uses these names).
            if (!fr->FindLocal("varargs")) fr->Set("varargs", Value::Tuple({}));
            if (!fr->FindLocal("kwargs")) fr->Set("kwargs", Value::MakeDict());
            std::string buf;
            self->Exec(sp->body, fr, &buf);
            --self->depth_;
            return Value::String(std::move(buf));
          } catch (...) {
            --self->depth_;  // errors keep the location inside the macro body
            throw;
          }
        },
        s.name);
  }

  Value ctx_;
  std::shared_ptr<const Template::Impl> keep_;
  FramePtr root_;
  int depth_ = 0;
};

// ---- filters --------------------------------------------------------------------------------

JsonOptions TojsonOptions(CallArgs& args) {
  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  auto v = Bind("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions o;
  if (!v[0].is_undefined()) o.ensure_ascii = v[0].truthy();
  if (!v[1].is_undefined() && !v[1].is_none()) {
    if (IsIntLike(v[1])) o.indent = static_cast<int>(std::max<int64_t>(0, v[1].as_int()));
    else Fail("tojson: unsupported indent " + Repr(v[1]));
  }
  if (!v[2].is_undefined() && !v[2].is_none()) {
    if (!v[2].is_list() || v[2].list().size() != 2 || !v[2].list()[0].is_string() ||
        !v[2].list()[1].is_string())
      Fail("tojson: separators must be a (item_sep, key_sep) pair of strings");
    o.item_sep = v[2].list()[0].str();
    o.key_sep = v[2].list()[1].str();
    if (o.item_sep.empty() || o.key_sep.empty()) Fail("tojson: empty separators are unsupported");
  }
  if (!v[3].is_undefined()) o.sort_keys = v[3].truthy();
  return o;
}

const char* const kFilters[] = {
    "tojson", "trim", "length", "count", "items", "default", "d", "upper", "lower", "capitalize",
    "title", "string", "int", "float", "join", "first", "last", "list", "reverse", "replace",
    "safe", "e", "escape", "map", "selectattr", "rejectattr", "select", "reject", "abs", "attr",
    "unique", "min", "max", "sum", "indent", "wordcount", "dictsort", "sort", "center", "round",
    "batch", "truncate", "format", "pprint", "urlencode", "xmlattr", "striptags", "wordwrap",
    "filesizeformat", "forceescape", "groupby", "random", "slice", "urlize"};
const char* const kUnsupportedFilters[] = {
    "dictsort", "sort", "center", "round", "batch", "truncate", "format", "pprint", "urlencode",
    "xmlattr", "striptags", "wordwrap", "filesizeformat", "forceescape", "groupby", "random",
    "slice", "urlize", "wordcount", "indent"};

std::string SoftStr(const Value& v) { return ToStr(v); }

Value GetAttrPath(const Value& item, const std::string& path) {
  // jinja2 make_attrgetter: dotted path, integer parts as indexes, via environment.getitem.
  Value cur = item;
  size_t b = 0;
  while (true) {
    size_t e = path.find('.', b);
    std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = GetItem(cur, digits ? Value::Int(std::stoll(part)) : Value::String(part));
    if (e == std::string::npos) return cur;
    b = e + 1;
  }
}

Value FilterCall(Renderer& r, const std::string& name, const Value& v, CallArgs& args) {
  for (const char* u : kUnsupportedFilters)
    if (name == u) Fail("unsupported filter '" + name + "'");
  if (name == "tojson") {
    JsonOptions o = TojsonOptions(args);
    auto s = ToJson(v, o);
    if (!s.ok()) Fail(std::string(s.status().message()));
    return Value::String(std::move(*s));
  }
  if (name == "safe") {
    Bind("safe", args, {});
    return v;
  }
  if (name == "trim") {
    auto a = Bind("trim", args, {"chars"});
    return Value::String(Strip(SoftStr(v), a[0], true, true));
  }
  if (name == "length" || name == "count") {
    Bind(name.c_str(), args, {});
    return Value::Int(Len(v));
  }
  if (name == "items") {
    Bind("items", args, {});
    if (v.is_undefined()) return Value::List({});
    if (!v.is_mapping()) Fail("Can only get item pairs from a mapping.");
    std::vector<Value> out;
    for (const auto& kv : v.dict().items) out.push_back(Value::Tuple({kv.first, kv.second}));
    return Value::List(std::move(out));
  }
  if (name == "default" || name == "d") {
    auto a = Bind("default", args, {"default_value", "boolean"});
    Value dflt = a[0].is_undefined() ? Value::String("") : a[0];
    bool boolean = a[1].truthy();
    if (v.is_undefined() || (boolean && !v.truthy())) return dflt;
    return v;
  }
  if (name == "upper" || name == "lower") {
    Bind(name.c_str(), args, {});
    return Value::String(MapCase(SoftStr(v), name == "upper"));
  }
  if (name == "capitalize") {
    Bind(name.c_str(), args, {});
    return Value::String(Capitalize(SoftStr(v)));
  }
  if (name == "title") {
    // jinja2 do_title: words split at runs of [-\s({[<]; each piece: first char upper, rest lower.
    Bind(name.c_str(), args, {});
    std::string s = SoftStr(v), out;
    auto is_sep = [](uint32_t cp) { return cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || utf8::IsSpace(cp); };
    size_t i = 0;
    bool at_start = true;
    while (i < s.size()) {
      uint32_t cp = utf8::Decode(s, &i);
      if (is_sep(cp)) {
        utf8::Append(cp, &out);
        at_start = true;
      } else {
        utf8::Append(at_start ? utf8::Upper(cp) : utf8::Lower(cp), &out);
        at_start = false;
      }
    }
    return Value::String(std::move(out));
  }
  if (name == "string") {
    Bind(name.c_str(), args, {});
    return Value::String(SoftStr(v));
  }
  if (name == "int") {
    auto a = Bind("int", args, {"default", "base"});
    Value dflt = a[0].is_undefined() ? Value::Int(0) : a[0];
    int base = a[1].is_undefined() ? 10 : static_cast<int>(ToIntArg(a[1], "base"));
    if (IsIntLike(v)) return Value::Int(v.as_int());
    if (v.is_float()) {
      if (!std::isfinite(v.as_double())) return dflt;
      return Value::Int(static_cast<int64_t>(v.as_double()));
    }
    if (v.is_string()) {
      std::string s = Strip(v.str(), Value::None(), true, true), t;
      for (char c : s)
        if (c != '_') t.push_back(c);
      if (!t.empty()) {
        char* end = nullptr;
        errno = 0;
        long long x = std::strtoll(t.c_str(), &end, base);
        if (*end == 0 && errno == 0 && !(t.size() > 1 && (t[0] == '+' || t[0] == '-') && (t[1] == ' ')))
          return Value::Int(x);
        double d = std::strtod(t.c_str(), &end);
        if (*end == 0 && std::isfinite(d)) return Value::Int(static_cast<int64_t>(d));
      }
      return dflt;
    }
    return dflt;
  }
  if (name == "float") {
    auto a = Bind("float", args, {"default"});
    Value dflt = a[0].is_undefined() ? Value::Float(0.0) : a[0];
    if (v.is_number()) return Value::Float(v.as_double());
    if (v.is_string()) {
      std::string s = Strip(v.str(), Value::None(), true, true);
      if (!s.empty()) {
        char* end = nullptr;
        double d = std::strtod(s.c_str(), &end);
        if (*end == 0) return Value::Float(d);
      }
    }
    return dflt;
  }
  if (name == "join") {
    auto a = Bind("join", args, {"d", "attribute"});
    std::string sep = a[0].is_undefined() ? "" : SoftStr(a[0]), out;
    bool first = true;
    for (const auto& it : Iterate(v)) {
      if (!first) out += sep;
      first = false;
      out += SoftStr(a[1].is_undefined() ? it : GetAttrPath(it, SoftStr(a[1])));
    }
    return Value::String(std::move(out));
  }
  if (name == "first" || name == "last") {
    Bind(name.c_str(), args, {});
    std::vector<Value> items = Iterate(v);
    if (items.empty()) return Value::Undefined(name == "first" ? "No first item, sequence was empty." : "No last item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    Bind(name.c_str(), args, {});
    return Value::List(Iterate(v));
  }
  if (name == "reverse") {
    Bind(name.c_str(), args, {});
    if (v.is_string()) {
      std::vector<std::string> ch = Chars(v.str());
      std::string out;
      for (auto it = ch.rbegin(); it != ch.rend(); ++it) out += *it;
      return Value::String(std::move(out));
    }
    std::vector<Value> items = Iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::List(std::move(items));
  }
  if (name == "replace") {
    auto a = Bind("replace", args, {"old", "new", "count"});
    int64_t count = a[2].is_undefined() || a[2].is_none() ? -1 : ToIntArg(a[2], "count");
    return Value::String(Replace(SoftStr(v), SoftStr(a[0]), SoftStr(a[1]), count));
  }
  if (name == "e" || name == "escape") {
    Bind(name.c_str(), args, {});
    return Value::String(HtmlEscape(SoftStr(v)));
  }
  if (name == "abs") {
    Bind(name.c_str(), args, {});
    if (v.is_float()) return Value::Float(std::fabs(v.as_double()));
    if (IsIntLike(v)) return Value::Int(std::llabs(v.as_int()));
    Fail("bad operand type for abs(): '" + TypeName(v) + "'");
  }
  if (name == "attr") {
    // jinja2's attr looks up Python attributes only (methods here), never items.
    auto a = Bind("attr", args, {"name"});
    const std::string& an = StrArg(a[0], "attr name");
    bool found = false;
    Value m;
    if (v.is_string()) m = StrMethod(v, an, &found);
    else if (v.is_mapping()) m = DictMethod(v, an, &found);
    else if (v.is_list()) m = ListMethod(v, an, &found);
    else if (v.is_namespace()) {
      if (const Value* x = v.dict().find(std::string_view(an))) return *x;
    }
    if (found) return m;
    return Value::Undefined(ObjRepr(v) + " has no attribute '" + an + "'");
  }
  if (name == "unique") {
    auto a = Bind("unique", args, {"case_sensitive", "attribute"});
    if (!a[1].is_undefined()) Fail("unsupported: unique(attribute=...)");
    bool cs = a[0].truthy();
    std::vector<Value> out, seen;
    for (const auto& it : Iterate(v)) {
      Value key = (!cs && it.is_string()) ? Value::String(MapCase(it.str(), false)) : it;
      bool dup = false;
      for (const auto& s : seen) dup |= Equal(s, key);
      if (!dup) {
        seen.push_back(key);
        out.push_back(it);
      }
    }
    return Value::List(std::move(out));
  }
  if (name == "min" || name == "max") {
    auto a = Bind(name.c_str(), args, {"case_sensitive", "attribute"});
    if (!a[1].is_undefined()) Fail("unsupported: min/max(attribute=...)");
    std::vector<Value> items = Iterate(v);
    if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
    bool cs = a[0].truthy();
    auto key = [&](const Value& x) { return (!cs && x.is_string()) ? Value::String(MapCase(x.str(), false)) : x; };
    size_t best = 0;
    for (size_t i = 1; i < items.size(); ++i) {
      int c = Compare3(key(items[i]), key(items[best]), "<");
      if (name == "min" ? c < 0 : c > 0) best = i;
    }
    return items[best];
  }
  if (name == "sum") {
    auto a = Bind("sum", args, {"attribute", "start"});
    Value acc = a[1].is_undefined() ? Value::Int(0) : a[1];
    for (const auto& it : Iterate(v))
      acc = Arith("+", acc, a[0].is_undefined() ? it : GetAttrPath(it, SoftStr(a[0])));
    return acc;
  }
  if (name == "map") {
    std::vector<Value> out;
    std::vector<Value> items = Iterate(v);
    bool has_attr = false;
    Value attr, dflt;
    for (auto& [k, x] : args.kw) {
      if (k == "attribute") { has_attr = true; attr = x; }
      else if (k == "default") dflt = x;
      else if (args.pos.empty()) Fail("map() got an unexpected keyword argument '" + k + "'");
    }
    if (has_attr) {
      if (!args.pos.empty()) Fail("map(attribute=...) takes no positional arguments");
      for (const auto& it : items) {
        Value x = GetAttrPath(it, SoftStr(attr));
        if (x.is_undefined() && !dflt.is_undefined()) x = dflt;
        out.push_back(x);
      }
      return Value::List(std::move(out));
    }
    if (args.pos.empty()) Fail("map requires a filter argument");
    std::string fname = StrArg(args.pos[0], "map filter name");
    if (!IsKnownFilter(fname)) Fail("No filter named '" + fname + "'.");
    CallArgs rest;
    rest.pos.assign(args.pos.begin() + 1, args.pos.end());
    rest.kw = args.kw;
    for (const auto& it : items) {
      CallArgs copy = rest;
      out.push_back(FilterCall(r, fname, it, copy));
    }
    return Value::List(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    bool by_attr = name == "selectattr" || name == "rejectattr";
    bool want = name == "select" || name == "selectattr";
    if (!args.kw.empty()) Fail(name + "() takes no keyword arguments");
    size_t k = 0;
    std::string attr;
    if (by_attr) {
      if (args.pos.empty()) Fail("Missing parameter for attribute name");
      attr = StrArg(args.pos[0], "attribute name");
      k = 1;
    }
    std::string test;
    CallArgs targs;
    if (args.pos.size() > k) {
      test = StrArg(args.pos[k], "test name");
      if (!IsKnownTest(test)) Fail("No test named '" + test + "'.");
      targs.pos.assign(args.pos.begin() + k + 1, args.pos.end());
    }
    std::vector<Value> out;
    for (const auto& it : Iterate(v)) {
      Value x = by_attr ? GetAttrPath(it, attr) : it;
      bool ok;
      if (test.empty()) ok = x.truthy();
      else {
        CallArgs copy = targs;
        ok = TestCall(r, test, x, copy);
      }
      if (ok == want) out.push_back(it);
    }
    return Value::List(std::move(out));
  }
  Fail("No filter named '" + name + "'.");
}

// ---- tests ----------------------------------------------------------------------------------

const char* const kTests[] = {
    "defined", "undefined", "none", "boolean", "false", "true", "integer", "float", "number",
    "string", "mapping", "iterable", "sequence", "callable", "sameas", "eq", "equalto", "==",
    "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "in",
    "odd", "even", "divisibleby", "lower", "upper", "escaped", "filter", "test"};

bool TestCall(Renderer& r, const std::string& name, const Value& v, CallArgs& args) {
  (void)r;
  auto one = [&]() -> Value {
    auto a = Bind(name.c_str(), args, {"other"});
    return a[0];
  };
  auto none = [&]() { Bind(name.c_str(), args, {}); };
  if (name == "defined") { none(); return !v.is_undefined(); }
  if (name == "undefined") { none(); return v.is_undefined(); }
  if (name == "none") { none(); return v.is_none(); }
  if (name == "boolean") { none(); return v.is_bool(); }
  if (name == "false") { none(); return v.is_bool() && !v.as_bool(); }
  if (name == "true") { none(); return v.is_bool() && v.as_bool(); }
  if (name == "integer") { none(); return v.is_int(); }
  if (name == "float") { none(); return v.is_float(); }
  if (name == "number") { none(); return v.is_number(); }
  if (name == "string") { none(); return v.is_string(); }
  if (name == "mapping") { none(); return v.is_mapping(); }
  if (name == "iterable") { none(); return v.is_undefined() || v.is_string() || v.is_list() || v.is_mapping(); }
  if (name == "sequence") { none(); return v.is_undefined() || v.is_string() || v.is_list() || v.is_mapping(); }
  if (name == "callable") { none(); return v.is_function() || v.is_undefined(); }  // Undefined has __call__
  if (name == "escaped") { none(); return false; }
  if (name == "lower" || name == "upper") {
    none();
    if (!v.is_string()) return name == "lower" ? false : false;
    std::string s = v.str();
    return MapCase(s, name == "upper") == s;
  }
  if (name == "odd" || name == "even") {
    none();
    if (!IsIntLike(v)) Fail("odd/even test needs an integer, got " + TypeName(v));
    int64_t m = ((v.as_int() % 2) + 2) % 2;
    return name == "odd" ? m == 1 : m == 0;
  }
  if (name == "divisibleby") {
    Value o = one();
    if (!IsIntLike(v) || !IsIntLike(o)) Fail("divisibleby needs integers");
    if (o.as_int() == 0) Fail("integer division or modulo by zero");
    return v.as_int() % o.as_int() == 0;
  }
  if (name == "sameas") {
    Value o = one();
    if (v.is_none() || v.is_bool() || v.is_undefined()) return v.kind() == o.kind() && Equal(v, o);
    if (v.is_list() || v.is_dict()) return v.kind() == o.kind() && (&v.list() == &o.list()) && (&v.dict() == &o.dict());
    return false;
  }
  if (name == "eq" || name == "equalto" || name == "==") return Equal(v, one());
  if (name == "ne" || name == "!=") return !Equal(v, one());
  if (name == "lt" || name == "lessthan" || name == "<") return Compare3(v, one(), "<") < 0;
  if (name == "le" || name == "<=") return Compare3(v, one(), "<=") <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return Compare3(v, one(), ">") > 0;
  if (name == "ge" || name == ">=") return Compare3(v, one(), ">=") >= 0;
  if (name == "in") return Contains(one(), v);
  if (name == "filter" || name == "test") {
    none();
    return v.is_string() && (name == "filter" ? IsKnownFilter(v.str()) : IsKnownTest(v.str()));
  }
  Fail("No test named '" + name + "'.");
}

}  // namespace

bool IsKnownFilter(const std::string& name) {
  for (const char* f : kFilters)
    if (name == f) return true;
  return false;
}
bool IsKnownTest(const std::string& name) {
  for (const char* t : kTests)
    if (name == t) return true;
  return false;
}

}  // namespace internal

absl::StatusOr<std::string> Template::Render(const Value& context) const {
  if (!impl_) return absl::FailedPreconditionError("Render on an empty Template");
  if (!context.is_dict() && !context.is_undefined())
    return absl::InvalidArgumentError("template context must be a dict");
  std::string out;
  try {
    internal::Renderer r(context, impl_);
    r.Run(impl_->body, &out);
  } catch (const internal::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("template render error: line ", e.line, ", column ", e.col, ": ", e.msg));
  }
  return out;
}

}  // namespace rs::jinja
