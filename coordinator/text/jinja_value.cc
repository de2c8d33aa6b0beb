// Value, Python-style str()/repr(), json.dumps and a JSON reader for the template engine.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/text/jinja.h"
#include "coordinator/text/jinja_utf8.h"

namespace rs::jinja {

namespace {
const std::string& EmptyString() {
  static const std::string* s = new std::string();
  return *s;
}
const std::vector<Value>& EmptyList() {
  static const std::vector<Value>* l = new std::vector<Value>();
  return *l;
}
const Dict& EmptyDict() {
  static const Dict* d = new Dict();
  return *d;
}
}  // namespace

Value Value::Undefined(std::string hint) {
  Value v;
  if (!hint.empty()) v.s_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}
Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Float(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = f;
  return v;
}
Value Value::String(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.s_ = std::make_shared<const std::string>(std::move(s));
  return v;
}
Value Value::List(std::vector<Value> items) {
  Value v;
  v.kind_ = Kind::kList;
  v.l_ = std::make_shared<std::vector<Value>>(std::move(items));
  return v;
}
Value Value::Tuple(std::vector<Value> items) {
  Value v = List(std::move(items));
  v.tuple_ = true;
  return v;
}
Value Value::MakeDict() {
  Value v;
  v.kind_ = Kind::kDict;
  v.d_ = std::make_shared<Dict>();
  return v;
}
Value Value::MakeNamespace() {
  Value v = MakeDict();
  v.kind_ = Kind::kNamespace;
  return v;
}
Value Value::Func(Function f, std::string name) {
  Value v;
  v.kind_ = Kind::kFunction;
  v.fn_ = std::make_shared<Function>(std::move(f));
  v.s_ = std::make_shared<const std::string>(std::move(name));
  return v;
}

double Value::as_double() const {
  switch (kind_) {
    case Kind::kFloat: return f_;
    case Kind::kInt: return static_cast<double>(i_);
    case Kind::kBool: return b_ ? 1.0 : 0.0;
    default: return 0;
  }
}
const std::string& Value::str() const {
  return kind_ == Kind::kString ? *s_ : EmptyString();
}
const std::string& Value::name_or_hint() const { return s_ ? *s_ : EmptyString(); }
const std::vector<Value>& Value::list() const { return l_ ? *l_ : EmptyList(); }
std::vector<Value>& Value::mutable_list() { return *l_; }
const Dict& Value::dict() const { return d_ ? *d_ : EmptyDict(); }
Dict& Value::mutable_dict() { return *d_; }

bool Value::truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool: return b_;
    case Kind::kInt: return i_ != 0;
    case Kind::kFloat: return f_ != 0.0;
    case Kind::kString: return !s_->empty();
    case Kind::kList: return !l_->empty();
    case Kind::kDict: return !d_->items.empty();
    case Kind::kFunction:
    case Kind::kNamespace: return true;
  }
  return false;
}

// ---- Dict -----------------------------------------------------------------------------------

const Value* Dict::find(const Value& key) const {
  if (key.is_string()) return find(std::string_view(key.str()));
  for (const auto& kv : items)
    if (Equal(kv.first, key)) return &kv.second;
  return nullptr;
}
const Value* Dict::find(std::string_view key) const {
  for (const auto& kv : items)
    if (kv.first.is_string() && kv.first.str() == key) return &kv.second;
  return nullptr;
}
void Dict::set(Value key, Value value) {
  for (auto& kv : items) {
    if (Equal(kv.first, key)) {
      kv.second = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}
void Dict::set(std::string_view key, Value value) {
  for (auto& kv : items) {
    if (kv.first.is_string() && kv.first.str() == key) {
      kv.second = std::move(value);
      return;
    }
  }
  items.emplace_back(Value::String(std::string(key)), std::move(value));
}

// ---- equality -------------------------------------------------------------------------------

bool Equal(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone: return true;
    case K::kString: return a.str() == b.str();
    case K::kList: {
      if (a.is_tuple() != b.is_tuple()) return false;
      const auto& x = a.list();
      const auto& y = b.list();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!Equal(x[i], y[i])) return false;
      return true;
    }
    case K::kDict: {
      const auto& x = a.dict().items;
      const auto& y = b.dict();
      if (x.size() != y.items.size()) return false;
      for (const auto& kv : x) {
        const Value* o = y.find(kv.first);
        if (!o || !Equal(kv.second, *o)) return false;
      }
      return true;
    }
    case K::kNamespace: return &a.dict() == &b.dict();
    case K::kFunction: return &a.func() == &b.func();
    default: return false;
  }
}

// ---- str / repr -----------------------------------------------------------------------------

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string sign;
  size_t p = 0;
  if (sci[0] == '-') {
    sign = "-";
    p = 1;
  }
  size_t epos = sci.find('e');
  std::string mant = sci.substr(p, epos - p);
  int exp10 = std::atoi(sci.c_str() + epos + 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits.push_back(c);
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  int decpt = exp10 + 1;  // value = 0.DIGITS * 10^decpt
  int nd = static_cast<int>(digits.size());
  std::string out = sign;
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0.";
      out.append(static_cast<size_t>(-decpt), '0');
      out += digits;
    } else if (decpt >= nd) {
      out += digits;
      out.append(static_cast<size_t>(decpt - nd), '0');
      out += ".0";
    } else {
      out += digits.substr(0, decpt);
      out += ".";
      out += digits.substr(decpt);
    }
  } else {
    out += digits.substr(0, 1);
    if (nd > 1) {
      out += ".";
      out += digits.substr(1);
    }
    int e = decpt - 1;
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    out += eb;
  }
  return out;
}

namespace {

// Python's str.isprintable() for one code point: everything except categories Cc, Cf, Cs, Co,
// Cn, Zl, Zp and Zs other than the ASCII space.
bool PyPrintable(uint32_t cp) {
  if (cp == ' ') return true;
  if (cp < 0x20 || cp == 0x7f) return false;
  if (cp < 0x7f) return true;
  return utf8::IsPrintable(cp);
}

std::string StrRepr(const std::string& s) {
  char quote = '\'';
  if (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) quote = '"';
  std::string out(1, quote);
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    uint32_t cp = utf8::Decode(s, &i);
    if (cp == '\\') {
      out += "\\\\";
    } else if (cp == static_cast<uint32_t>(quote)) {
      out += '\\';
      out += quote;
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (PyPrintable(cp)) {
      out.append(s, start, i - start);
    } else {
      char b[16];
      if (cp < 0x100)
        std::snprintf(b, sizeof b, "\\x%02x", cp);
      else if (cp < 0x10000)
        std::snprintf(b, sizeof b, "\\u%04x", cp);
      else
        std::snprintf(b, sizeof b, "\\U%08x", cp);
      out += b;
    }
  }
  out += quote;
  return out;
}

void ReprInto(const Value& v, std::string* out) {
  using K = Value::Kind;
  switch (v.kind()) {
    case K::kUndefined: *out += "Undefined"; return;
    case K::kString: *out += StrRepr(v.str()); return;
    case K::kList: {
      const auto& l = v.list();
      *out += v.is_tuple() ? '(' : '[';
      for (size_t i = 0; i < l.size(); ++i) {
        if (i) *out += ", ";
        ReprInto(l[i], out);
      }
      if (v.is_tuple() && l.size() == 1) *out += ',';
      *out += v.is_tuple() ? ')' : ']';
      return;
    }
    case K::kDict:
    case K::kNamespace: {
      if (v.is_namespace()) *out += "<Namespace ";
      *out += '{';
      bool first = true;
      for (const auto& kv : v.dict().items) {
        if (!first) *out += ", ";
        first = false;
        ReprInto(kv.first, out);
        *out += ": ";
        ReprInto(kv.second, out);
      }
      *out += '}';
      if (v.is_namespace()) *out += '>';
      return;
    }
    default: *out += ToStr(v); return;
  }
}

}  // namespace

std::string Repr(const Value& v) {
  std::string out;
  ReprInto(v, &out);
  return out;
}

std::string ToStr(const Value& v) {
  using K = Value::Kind;
  switch (v.kind()) {
    case K::kUndefined: return "";
    case K::kNone: return "None";
    case K::kBool: return v.as_bool() ? "True" : "False";
    case K::kInt: return std::to_string(v.as_int());
    case K::kFloat: return FloatRepr(v.as_double());
    case K::kString: return v.str();
    case K::kFunction: return "<function " + v.name_or_hint() + ">";
    default: return Repr(v);
  }
}

// ---- json.dumps -----------------------------------------------------------------------------

namespace {

void JsonString(const std::string& s, bool ensure_ascii, std::string* out) {
  *out += '"';
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    uint32_t cp = utf8::Decode(s, &i);
    char b[16];
    switch (cp) {
      case '"': *out += "\\\""; continue;
      case '\\': *out += "\\\\"; continue;
      case '\n': *out += "\\n"; continue;
      case '\r': *out += "\\r"; continue;
      case '\t': *out += "\\t"; continue;
      case '\b': *out += "\\b"; continue;
      case '\f': *out += "\\f"; continue;
      default: break;
    }
    if (cp < 0x20) {
      std::snprintf(b, sizeof b, "\\u%04x", cp);
      *out += b;
    } else if (ensure_ascii && cp > 0x7f) {
      if (cp >= 0x10000) {
        uint32_t c = cp - 0x10000;
        std::snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
      } else {
        std::snprintf(b, sizeof b, "\\u%04x", cp);
      }
      *out += b;
    } else {
      out->append(s, start, i - start);
    }
  }
  *out += '"';
}

absl::Status JsonInto(const Value& v, const JsonOptions& o, int level, std::string* out) {
  using K = Value::Kind;
  const std::string item_sep = !o.item_sep.empty() ? o.item_sep : (o.indent >= 0 ? "," : ", ");
  const std::string key_sep = !o.key_sep.empty() ? o.key_sep : ": ";
  auto newline = [&](int lvl) {
    *out += '\n';
    out->append(static_cast<size_t>(o.indent) * lvl, ' ');
  };
  switch (v.kind()) {
    case K::kNone: *out += "null"; return absl::OkStatus();
    case K::kBool: *out += v.as_bool() ? "true" : "false"; return absl::OkStatus();
    case K::kInt: *out += std::to_string(v.as_int()); return absl::OkStatus();
    case K::kFloat: {
      double d = v.as_double();
      if (std::isnan(d)) *out += "NaN";
      else if (std::isinf(d)) *out += d < 0 ? "-Infinity" : "Infinity";
      else *out += FloatRepr(d);
      return absl::OkStatus();
    }
    case K::kString: JsonString(v.str(), o.ensure_ascii, out); return absl::OkStatus();
    case K::kList: {
      const auto& l = v.list();
      if (l.empty()) {
        *out += "[]";
        return absl::OkStatus();
      }
      *out += '[';
      for (size_t i = 0; i < l.size(); ++i) {
        if (i) *out += item_sep;
        if (o.indent >= 0) newline(level + 1);
        if (auto st = JsonInto(l[i], o, level + 1, out); !st.ok()) return st;
      }
      if (o.indent >= 0) newline(level);
      *out += ']';
      return absl::OkStatus();
    }
    case K::kDict: {
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : v.dict().items) items.push_back(&kv);
      if (items.empty()) {
        *out += "{}";
        return absl::OkStatus();
      }
      if (o.sort_keys) {
        for (auto* kv : items)
          if (!kv->first.is_string())
            return absl::InvalidArgumentError("tojson: sort_keys needs string keys");
        std::stable_sort(items.begin(), items.end(),
                         [](auto* a, auto* b) { return a->first.str() < b->first.str(); });
      }
      *out += '{';
      bool first = true;
      for (auto* kv : items) {
        if (!first) *out += item_sep;
        first = false;
        if (o.indent >= 0) newline(level + 1);
        const Value& k = kv->first;
        if (k.is_string()) JsonString(k.str(), o.ensure_ascii, out);
        else if (k.is_none()) *out += "\"null\"";
        else if (k.is_bool()) *out += k.as_bool() ? "\"true\"" : "\"false\"";
        else if (k.is_int() || k.is_float()) *out += "\"" + ToStr(k) + "\"";
        else return absl::InvalidArgumentError("tojson: keys must be str, int, float, bool or None");
        *out += key_sep;
        if (auto st = JsonInto(kv->second, o, level + 1, out); !st.ok()) return st;
      }
      if (o.indent >= 0) newline(level);
      *out += '}';
      return absl::OkStatus();
    }
    case K::kUndefined:
      return absl::InvalidArgumentError("tojson: Object of type Undefined is not JSON serializable");
    case K::kNamespace:
      return absl::InvalidArgumentError("tojson: Object of type Namespace is not JSON serializable");
    case K::kFunction:
      return absl::InvalidArgumentError("tojson: a function is not JSON serializable");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& opts) {
  std::string out;
  if (auto st = JsonInto(v, opts, 0, &out); !st.ok()) return st;
  return out;
}

// ---- JSON reader ----------------------------------------------------------------------------

namespace {

class JsonReader {
 public:
  explicit JsonReader(std::string_view t) : t_(t) {}

  absl::StatusOr<Value> ParseAll() {
    auto v = ParseValue(0);
    if (!v.ok()) return v;
    SkipWs();
    if (p_ != t_.size()) return Err("trailing characters after the JSON value");
    return v;
  }

 private:
  absl::Status Err(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("JSON: ", what, " at byte ", p_));
  }
  void SkipWs() {
    while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\n' || t_[p_] == '\r'))
      ++p_;
  }
  bool Lit(std::string_view w) {
    if (t_.substr(p_, w.size()) == w) {
      p_ += w.size();
      return true;
    }
    return false;
  }

  absl::StatusOr<Value> ParseValue(int depth) {
    if (depth > 512) return Err("nesting deeper than 512");
    SkipWs();
    if (p_ >= t_.size()) return Err("unexpected end of input");
    char c = t_[p_];
    if (c == '{') {
      ++p_;
      Value d = Value::MakeDict();
      SkipWs();
      if (p_ < t_.size() && t_[p_] == '}') {
        ++p_;
        return d;
      }
      while (true) {
        SkipWs();
        if (p_ >= t_.size() || t_[p_] != '"') return Err("expected a string key");
        auto k = ParseString();
        if (!k.ok()) return k.status();
        SkipWs();
        if (p_ >= t_.size() || t_[p_] != ':') return Err("expected ':'");
        ++p_;
        auto v = ParseValue(depth + 1);
        if (!v.ok()) return v;
        d.mutable_dict().set(Value::String(std::move(*k)), std::move(*v));  // later key wins
        SkipWs();
        if (p_ < t_.size() && t_[p_] == ',') {
          ++p_;
          continue;
        }
        if (p_ < t_.size() && t_[p_] == '}') {
          ++p_;
          return d;
        }
        return Err("expected ',' or '}' in an object");
      }
    }
    if (c == '[') {
      ++p_;
      std::vector<Value> items;
      SkipWs();
      if (p_ < t_.size() && t_[p_] == ']') {
        ++p_;
        return Value::List(std::move(items));
      }
      while (true) {
        auto v = ParseValue(depth + 1);
        if (!v.ok()) return v;
        items.push_back(std::move(*v));
        SkipWs();
        if (p_ < t_.size() && t_[p_] == ',') {
          ++p_;
          continue;
        }
        if (p_ < t_.size() && t_[p_] == ']') {
          ++p_;
          return Value::List(std::move(items));
        }
        return Err("expected ',' or ']' in an array");
      }
    }
    if (c == '"') {
      auto s = ParseString();
      if (!s.ok()) return s.status();
      return Value::String(std::move(*s));
    }
    if (Lit("true")) return Value::Bool(true);
    if (Lit("false")) return Value::Bool(false);
    if (Lit("null")) return Value::None();
    if (Lit("NaN")) return Value::Float(NAN);
    if (Lit("Infinity")) return Value::Float(INFINITY);
    if (Lit("-Infinity")) return Value::Float(-INFINITY);
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber();
    return Err(absl::StrCat("unexpected character '", std::string(1, c), "'"));
  }

  absl::StatusOr<Value> ParseNumber() {
    size_t s = p_;
    if (t_[p_] == '-') ++p_;
    auto digits = [&] {
      size_t b = p_;
      while (p_ < t_.size() && t_[p_] >= '0' && t_[p_] <= '9') ++p_;
      return p_ - b;
    };
    if (p_ < t_.size() && t_[p_] == '0') {
      ++p_;
    } else if (digits() == 0) {
      return Err("malformed number");
    }
    bool is_float = false;
    if (p_ < t_.size() && t_[p_] == '.') {
      ++p_;
      is_float = true;
      if (digits() == 0) return Err("malformed number (no digits after '.')");
    }
    if (p_ < t_.size() && (t_[p_] == 'e' || t_[p_] == 'E')) {
      ++p_;
      is_float = true;
      if (p_ < t_.size() && (t_[p_] == '+' || t_[p_] == '-')) ++p_;
      if (digits() == 0) return Err("malformed number (no exponent digits)");
    }
    std::string num(t_.substr(s, p_ - s));
    if (!is_float) {
      int64_t v = 0;
      auto r = std::from_chars(num.data(), num.data() + num.size(), v);
      if (r.ec == std::errc() && r.ptr == num.data() + num.size()) return Value::Int(v);
    }
    return Value::Float(std::strtod(num.c_str(), nullptr));
  }

  absl::StatusOr<uint32_t> Hex4() {
    if (p_ + 4 > t_.size()) return Err("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = t_[p_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else return Err("bad hex digit in \\u escape");
    }
    return v;
  }

  absl::StatusOr<std::string> ParseString() {
    ++p_;  // opening quote
    std::string out;
    while (true) {
      if (p_ >= t_.size()) return Err("unterminated string");
      char c = t_[p_];
      if (c == '"') {
        ++p_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) return Err("control character in string");
      if (c != '\\') {
        out.push_back(c);
        ++p_;
        continue;
      }
      ++p_;
      if (p_ >= t_.size()) return Err("unterminated escape");
      char e = t_[p_++];
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
          auto hi = Hex4();
          if (!hi.ok()) return hi.status();
          uint32_t cp = *hi;
          if (cp >= 0xd800 && cp < 0xdc00 && t_.substr(p_, 2) == "\\u") {
            size_t save = p_;
            p_ += 2;
            auto lo = Hex4();
            if (!lo.ok()) return lo.status();
            if (*lo >= 0xdc00 && *lo < 0xe000) cp = 0x10000 + ((cp - 0xd800) << 10) + (*lo - 0xdc00);
            else p_ = save;
          }
          utf8::Append(cp, &out);
          break;
        }
        default: return Err(absl::StrCat("bad escape '\\", std::string(1, e), "'"));
      }
    }
  }

  std::string_view t_;
  size_t p_ = 0;
};

}  // namespace

absl::StatusOr<Value> ParseJson(std::string_view text) { return JsonReader(text).ParseAll(); }

}  // namespace rs::jinja
