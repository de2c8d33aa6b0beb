#include "coordinator/text/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace rs::json {

namespace {
[[noreturn]] void TypeAbort(const char* want, Json::Type got) {
  std::fprintf(stderr, "rs::json: value is not %s (type %d)\n", want, static_cast<int>(got));
  std::abort();
}
}  // namespace

Json Json::Array(std::vector<Json> items) {
  Json j;
  j.type_ = Type::kArray;
  j.arr_ = std::move(items);
  return j;
}

Json Json::Object() {
  Json j;
  j.type_ = Type::kObject;
  j.obj_ = std::make_unique<ObjectData>();
  return j;
}

Json::Json(const Json& o)
    : type_(o.type_), b_(o.b_), i_(o.i_), d_(o.d_), s_(o.s_), arr_(o.arr_),
      obj_(o.obj_ ? std::make_unique<ObjectData>(*o.obj_) : nullptr) {}
Json::Json(Json&& o) noexcept = default;
Json& Json::operator=(const Json& o) {
  if (this != &o) {
    Json tmp(o);
    *this = std::move(tmp);
  }
  return *this;
}
Json& Json::operator=(Json&& o) noexcept = default;
Json::~Json() = default;

Json::ObjectData& Json::obj() {
  if (type_ != Type::kObject) TypeAbort("an object", type_);
  return *obj_;
}
const Json::ObjectData& Json::obj() const {
  if (type_ != Type::kObject) TypeAbort("an object", type_);
  return *obj_;
}

bool Json::as_bool() const {
  if (type_ != Type::kBool) TypeAbort("a bool", type_);
  return b_;
}
int64_t Json::as_int() const {
  if (type_ != Type::kInt) TypeAbort("an integer", type_);
  return i_;
}
double Json::as_double() const {
  if (type_ == Type::kInt) return static_cast<double>(i_);
  if (type_ != Type::kDouble) TypeAbort("a number", type_);
  return d_;
}
const std::string& Json::as_string() const {
  if (type_ != Type::kString) TypeAbort("a string", type_);
  return s_;
}
const std::vector<Json>& Json::as_array() const {
  if (type_ != Type::kArray) TypeAbort("an array", type_);
  return arr_;
}
std::vector<Json>& Json::mutable_array() {
  if (type_ != Type::kArray) TypeAbort("an array", type_);
  return arr_;
}

size_t Json::size() const {
  switch (type_) {
    case Type::kArray: return arr_.size();
    case Type::kObject: return obj_->items.size();
    case Type::kString: return s_.size();
    default: return 0;
  }
}

void Json::push_back(Json v) {
  if (type_ != Type::kArray) TypeAbort("an array", type_);
  arr_.push_back(std::move(v));
}

const Json* Json::find(std::string_view key) const {
  if (type_ != Type::kObject) return nullptr;
  ptrdiff_t i = obj_->Find(key);
  return i < 0 ? nullptr : &obj_->items[i].second;
}
Json* Json::find(std::string_view key) {
  if (type_ != Type::kObject) return nullptr;
  ptrdiff_t i = obj_->Find(key);
  return i < 0 ? nullptr : &obj_->items[i].second;
}

Json& Json::set(std::string_view key, Json v) {
  ObjectData& o = obj();
  ptrdiff_t i = o.Find(key);
  if (i >= 0) {
    o.items[i].second = std::move(v);
    return o.items[i].second;
  }
  return o.Append(key, std::move(v));
}

Json& Json::operator[](std::string_view key) {
  if (type_ == Type::kNull) *this = Object();
  ObjectData& o = obj();
  ptrdiff_t i = o.Find(key);
  if (i >= 0) return o.items[i].second;
  return o.Append(key, Json());
}

bool Json::erase(std::string_view key) {
  ObjectData& o = obj();
  ptrdiff_t i = o.Find(key);
  if (i < 0) return false;
  o.items.erase(o.items.begin() + i);
  o.Reindex();
  return true;
}

const std::vector<Member>& Json::items() const { return obj().items; }

bool Json::operator==(const Json& o) const {
  if (is_number() && o.is_number()) {
    if (type_ == Type::kInt && o.type_ == Type::kInt) return i_ == o.i_;
    return as_double() == o.as_double();
  }
  if (type_ != o.type_) return false;
  switch (type_) {
    case Type::kNull: return true;
    case Type::kBool: return b_ == o.b_;
    case Type::kString: return s_ == o.s_;
    case Type::kArray: return arr_ == o.arr_;
    case Type::kObject: {
      if (obj_->items.size() != o.obj_->items.size()) return false;
      for (const auto& [k, v] : obj_->items) {
        const Json* ov = o.find(k);
        if (!ov || *ov != v) return false;
      }
      return true;
    }
    default: return false;
  }
}

// ------------------------------------------------------------------------------------------
// Parser

namespace {

void AppendUtf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid UTF-8 sequence starting at p (1..4), or 0 if invalid/truncated.
size_t ValidUtf8Len(const unsigned char* p, const unsigned char* end) {
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (static_cast<size_t>(end - p) < n) return 0;
  if (p[1] < lo || p[1] > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (p[k] < 0x80 || p[k] > 0xBF) return 0;
  return n;
}

class Parser {
 public:
  Parser(std::string_view text, const ParseOptions& opts) : text_(text), opts_(opts) {}

  absl::StatusOr<Json> Run() {
    SkipWs();
    Json v;
    if (!ParseValue(&v, 0)) return Error();
    SkipWs();
    if (pos_ != text_.size()) {
      Fail("unexpected data after the JSON value");
      return Error();
    }
    return v;
  }

 private:
  bool Fail(std::string msg) {
    if (err_.empty()) {
      err_ = std::move(msg);
      err_pos_ = pos_;
    }
    return false;
  }
  absl::Status Error() const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < err_pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "JSON parse error at line %d column %d (byte %d of %d): %s", line, col, err_pos_,
        text_.size(), err_));
  }

  void SkipWs() {
    while (pos_ < text_.size()) {
      char c = text_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else {
        break;
      }
    }
  }
  bool Consume(std::string_view lit) {
    if (text_.substr(pos_, lit.size()) == lit) {
      pos_ += lit.size();
      return true;
    }
    return false;
  }

  bool ParseValue(Json* out, int depth) {
    if (pos_ >= text_.size()) return Fail("unexpected end of input, expected a value");
    char c = text_[pos_];
    switch (c) {
      case '{': return ParseObject(out, depth + 1);
      case '[': return ParseArray(out, depth + 1);
      case '"': {
        std::string s;
        if (!ParseString(&s)) return false;
        *out = Json(std::move(s));
        return true;
      }
      case 't':
        if (Consume("true")) { *out = Json(true); return true; }
        break;
      case 'f':
        if (Consume("false")) { *out = Json(false); return true; }
        break;
      case 'n':
        if (Consume("null")) { *out = Json(); return true; }
        break;
      case 'N':
        if (opts_.allow_nan && Consume("NaN")) { *out = Json(std::nan("")); return true; }
        break;
      case 'I':
        if (opts_.allow_nan && Consume("Infinity")) { *out = Json(HUGE_VAL); return true; }
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
    }
    return Fail(absl::StrFormat("unexpected character '%s', expected a value",
                                std::string(1, c)));
  }

  bool ParseNumber(Json* out) {
    size_t start = pos_;
    if (text_[pos_] == '-') {
      ++pos_;
      if (opts_.allow_nan && Consume("Infinity")) {
        *out = Json(-HUGE_VAL);
        return true;
      }
    }
    auto digit = [&](size_t i) { return i < text_.size() && text_[i] >= '0' && text_[i] <= '9'; };
    if (!digit(pos_)) return Fail("invalid number: expected a digit");
    if (text_[pos_] == '0') {
      ++pos_;
      if (digit(pos_)) return Fail("invalid number: leading zero");
    } else {
      while (digit(pos_)) ++pos_;
    }
    bool is_int = true;
    if (pos_ < text_.size() && text_[pos_] == '.') {
      is_int = false;
      ++pos_;
      if (!digit(pos_)) return Fail("invalid number: expected a digit after '.'");
      while (digit(pos_)) ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      is_int = false;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (!digit(pos_)) return Fail("invalid number: expected a digit in the exponent");
      while (digit(pos_)) ++pos_;
    }
    const char* b = text_.data() + start;
    const char* e = text_.data() + pos_;
    if (is_int) {
      int64_t v;
      auto r = std::from_chars(b, e, v);
      if (r.ec == std::errc() && r.ptr == e) {
        *out = Json(v);
        return true;
      }
      // Out of int64 range: keep it as a double (Python would keep an exact int).
    }
    double d;
    auto r = std::from_chars(b, e, d);
    if (r.ec == std::errc::result_out_of_range) {
      // Overflow to +-inf like Python's float(); underflow to 0.
      d = std::strtod(std::string(b, e).c_str(), nullptr);
    } else if (r.ec != std::errc() || r.ptr != e) {
      pos_ = start;
      return Fail("invalid number");
    }
    *out = Json(d);
    return true;
  }

  bool ParseHex4(uint32_t* v) {
    if (pos_ + 4 > text_.size()) return Fail("truncated \\u escape");
    uint32_t x = 0;
    for (int k = 0; k < 4; ++k) {
      char c = text_[pos_ + k];
      x <<= 4;
      if (c >= '0' && c <= '9') x |= c - '0';
      else if (c >= 'a' && c <= 'f') x |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') x |= c - 'A' + 10;
      else return Fail("invalid hex digit in \\u escape");
    }
    pos_ += 4;
    *v = x;
    return true;
  }

  bool ParseString(std::string* out) {
    ++pos_;  // opening quote
    const unsigned char* end = reinterpret_cast<const unsigned char*>(text_.data()) + text_.size();
    while (true) {
      // Copy a run of plain characters at once.
      size_t run = pos_;
      while (run < text_.size()) {
        unsigned char c = static_cast<unsigned char>(text_[run]);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++run;
      }
      out->append(text_.data() + pos_, run - pos_);
      pos_ = run;
      if (pos_ >= text_.size()) return Fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c < 0x20) return Fail(absl::StrFormat("raw control character 0x%02x in string", c));
      if (c >= 0x80) {
        const unsigned char* p = reinterpret_cast<const unsigned char*>(text_.data()) + pos_;
        size_t n = ValidUtf8Len(p, end);
        if (n == 0) return Fail(absl::StrFormat("invalid UTF-8 byte 0x%02x in string", c));
        out->append(text_.data() + pos_, n);
        pos_ += n;
        continue;
      }
      // Backslash escape.
      ++pos_;
      if (pos_ >= text_.size()) return Fail("unterminated escape");
      char e = text_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!ParseHex4(&cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            if (!(pos_ + 1 < text_.size() && text_[pos_] == '\\' && text_[pos_ + 1] == 'u'))
              return Fail(absl::StrFormat("lone high surrogate \\u%04x (no UTF-8 form)", cp));
            pos_ += 2;
            if (!ParseHex4(&lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF)
              return Fail(absl::StrFormat("high surrogate \\u%04x followed by \\u%04x", cp, lo));
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return Fail(absl::StrFormat("lone low surrogate \\u%04x (no UTF-8 form)", cp));
          }
          AppendUtf8(out, cp);
          break;
        }
        default:
          --pos_;
          return Fail(absl::StrFormat("invalid escape '\\%s'", std::string(1, e)));
      }
    }
  }

  bool ParseArray(Json* out, int depth) {
    if (depth > opts_.max_depth)
      return Fail(absl::StrFormat("nesting deeper than %d", opts_.max_depth));
    ++pos_;
    *out = Json::Array();
    std::vector<Json>& arr = out->mutable_array();
    SkipWs();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return true;
    }
    while (true) {
      SkipWs();
      arr.emplace_back();
      if (!ParseValue(&arr.back(), depth)) return false;
      SkipWs();
      if (pos_ >= text_.size()) return Fail("unterminated array");
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return Fail("expected ',' or ']' in array");
    }
  }

  bool ParseObject(Json* out, int depth) {
    if (depth > opts_.max_depth)
      return Fail(absl::StrFormat("nesting deeper than %d", opts_.max_depth));
    ++pos_;
    *out = Json::Object();
    SkipWs();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return true;
    }
    while (true) {
      SkipWs();
      if (pos_ >= text_.size() || text_[pos_] != '"') return Fail("expected a string key");
      std::string key;
      if (!ParseString(&key)) return false;
      SkipWs();
      if (pos_ >= text_.size() || text_[pos_] != ':') return Fail("expected ':' after key");
      ++pos_;
      SkipWs();
      Json v;
      if (!ParseValue(&v, depth)) return false;
      out->set(key, std::move(v));
      SkipWs();
      if (pos_ >= text_.size()) return Fail("unterminated object");
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return Fail("expected ',' or '}' in object");
    }
  }

  std::string_view text_;
  ParseOptions opts_;
  size_t pos_ = 0;
  std::string err_;
  size_t err_pos_ = 0;
};

}  // namespace

absl::StatusOr<Json> Parse(std::string_view text, const ParseOptions& opts) {
  return Parser(text, opts).Run();
}

// ------------------------------------------------------------------------------------------
// Serializer

std::string FormatDouble(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  std::string out;
  if (std::signbit(d)) {
    out.push_back('-');
    d = -d;
  }
  if (d == 0) return out + "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string_view sci(buf, r.ptr - buf);  // "d[.ddd]e[+-]XX"
  size_t epos = sci.find('e');
  std::string digits;
  digits.push_back(sci[0]);
  if (epos > 1) digits.append(sci.substr(2, epos - 2));
  int exp10 = std::atoi(std::string(sci.substr(epos + 1)).c_str());
  int decpt = exp10 + 1;  // value = 0.DIGITS * 10^decpt
  int nd = static_cast<int>(digits.size());
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0.";
      out.append(-decpt, '0');
      out += digits;
    } else if (decpt >= nd) {
      out += digits;
      out.append(decpt - nd, '0');
      out += ".0";
    } else {
      out += digits.substr(0, decpt);
      out.push_back('.');
      out += digits.substr(decpt);
    }
  } else {
    out.push_back(digits[0]);
    if (nd > 1) {
      out.push_back('.');
      out += digits.substr(1);
    }
    out.push_back('e');
    out.push_back(exp10 < 0 ? '-' : '+');
    int a = exp10 < 0 ? -exp10 : exp10;
    if (a < 10) out.push_back('0');
    out += std::to_string(a);
  }
  return out;
}

void AppendQuoted(std::string* out, std::string_view s, bool ensure_ascii) {
  static const char kHex[] = "0123456789abcdef";
  auto u4 = [&](uint32_t v) {
    out->append("\\u");
    for (int sh = 12; sh >= 0; sh -= 4) out->push_back(kHex[(v >> sh) & 0xF]);
  };
  out->push_back('"');
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned char* end = p + s.size();
  while (p < end) {
    unsigned char c = *p;
    if (c >= 0x20 && c != '"' && c != '\\' && (c < 0x7F || !ensure_ascii)) {
      out->push_back(static_cast<char>(c));  // raw (all of UTF-8 too unless ensure_ascii)
      ++p;
      continue;
    }
    switch (c) {
      case '"': out->append("\\\""); ++p; continue;
      case '\\': out->append("\\\\"); ++p; continue;
      case '\n': out->append("\\n"); ++p; continue;
      case '\r': out->append("\\r"); ++p; continue;
      case '\t': out->append("\\t"); ++p; continue;
      case '\b': out->append("\\b"); ++p; continue;
      case '\f': out->append("\\f"); ++p; continue;
      default: break;
    }
    if (c < 0x80) {  // other control characters, and DEL with ensure_ascii
      u4(c);
      ++p;
      continue;
    }
    // Non-ASCII with ensure_ascii: decode one code point and escape it.
    size_t n = ValidUtf8Len(p, end);
    if (n == 0) {
      u4(0xFFFD);  // invalid byte: cannot be represented
      ++p;
      continue;
    }
    uint32_t cp;
    if (n == 2) cp = ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    else if (n == 3) cp = ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    else cp = ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    if (cp >= 0x10000) {
      uint32_t v = cp - 0x10000;
      u4(0xD800 + (v >> 10));
      u4(0xDC00 + (v & 0x3FF));
    } else {
      u4(cp);
    }
    p += n;
  }
  out->push_back('"');
}

namespace {

struct Dumper {
  const DumpOptions& o;
  std::string item_sep;
  std::string out;
  std::string err;

  void Newline(int level) {
    out.push_back('\n');
    out.append(static_cast<size_t>(o.indent) * level, ' ');
  }

  bool Run(const Json& v, int level) {
    switch (v.type()) {
      case Json::Type::kNull: out += "null"; return true;
      case Json::Type::kBool: out += v.as_bool() ? "true" : "false"; return true;
      case Json::Type::kInt: out += std::to_string(v.as_int()); return true;
      case Json::Type::kDouble: {
        double d = v.as_double();
        if (!o.allow_nan && !std::isfinite(d)) {
          err = "Out of range float values are not JSON compliant: " + FormatDouble(d);
          return false;
        }
        out += FormatDouble(d);
        return true;
      }
      case Json::Type::kString: AppendQuoted(&out, v.as_string(), o.ensure_ascii); return true;
      case Json::Type::kArray: {
        const auto& a = v.as_array();
        if (a.empty()) {
          out += "[]";
          return true;
        }
        out.push_back('[');
        for (size_t i = 0; i < a.size(); ++i) {
          if (i > 0) out += item_sep;
          if (o.indent >= 0) Newline(level + 1);
          if (!Run(a[i], level + 1)) return false;
        }
        if (o.indent >= 0) Newline(level);
        out.push_back(']');
        return true;
      }
      case Json::Type::kObject: {
        const auto& items = v.items();
        if (items.empty()) {
          out += "{}";
          return true;
        }
        std::vector<const Member*> order;
        order.reserve(items.size());
        for (const auto& m : items) order.push_back(&m);
        if (o.sort_keys)
          std::stable_sort(order.begin(), order.end(),
                           [](const Member* a, const Member* b) { return a->first < b->first; });
        out.push_back('{');
        for (size_t i = 0; i < order.size(); ++i) {
          if (i > 0) out += item_sep;
          if (o.indent >= 0) Newline(level + 1);
          AppendQuoted(&out, order[i]->first, o.ensure_ascii);
          out += o.key_separator;
          if (!Run(order[i]->second, level + 1)) return false;
        }
        if (o.indent >= 0) Newline(level);
        out.push_back('}');
        return true;
      }
    }
    return true;
  }
};

}  // namespace

absl::StatusOr<std::string> Dump(const Json& v, const DumpOptions& opts) {
  Dumper d{opts, opts.item_separator.value_or(opts.indent >= 0 ? "," : ", "), {}, {}};
  if (!d.Run(v, 0)) return absl::InvalidArgumentError(d.err);
  return std::move(d.out);
}

std::string DumpCompact(const Json& v) {
  DumpOptions o;
  o.item_separator = ",";
  o.key_separator = ":";
  return *Dump(v, o);
}

}  // namespace rs::json
