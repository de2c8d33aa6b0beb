// `rigserve inspect FILE.gguf [--json]`: a GGUF file's header, metadata and tensor table.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/args.h"
#include "worker/cli.h"
#include "worker/gguf.h"

namespace rs::cli {
namespace {

using gguf::Value;
using gguf::ValueType;

constexpr char kSummary[] =
    "Prints a GGUF file's version, alignment, every metadata key with its type and value, every\n"
    "tensor (name, type, shape in ggml order, offset relative to the data section, byte size)\n"
    "and totals by tensor type. Human output summarises arrays (element type, length, the first\n"
    "--items elements) and truncates strings longer than --string-chars bytes.\n"
    "\n"
    "--json prints one JSON document:\n"
    "  {\"version\": 3, \"metadata\": {KEY: {\"type\": T, \"value\": V}, ...},\n"
    "   \"tensors\": [{\"name\": N, \"type\": \"Q4_K\", \"shape\": [ne0, ...], \"offset\": O,\n"
    "                \"size\": S}, ...]}\n"
    "T is the GGUF value type (u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 bool string array).\n"
    "Arrays are {\"type\": \"array\", \"elem_type\": E, \"length\": N, \"value\": [...]}; the\n"
    "value list is complete unless --array-limit K > 0 is given, then it holds the first K items\n"
    "and \"truncated\": true is added. Nested arrays appear as plain JSON lists inside \"value\".\n"
    "Strings are UTF-8 (invalid bytes become U+FFFD), floats use the shortest decimal that\n"
    "round-trips, non-finite floats are the strings \"NaN\", \"Infinity\", \"-Infinity\".\n"
    "Tensor types are spelled as ggml does (F32, F16, BF16, Q8_0, Q4_K, ...).\n"
    "Exit status: 0 on success, 1 if the file cannot be read (the reader's message is printed),\n"
    "2 on a usage error.";

// ---------------------------------------------------------------------------- formatting

std::string fmt_float(double v, bool is_f32) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  for (int prec = is_f32 ? 6 : 15; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    double back = std::strtod(buf, nullptr);
    if (is_f32 ? static_cast<float>(back) == static_cast<float>(v) : back == v) break;
  }
  std::string s = buf;
  // Keep it a float literal for readers that care (1 -> 1.0).
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

// Length of the valid UTF-8 sequence at s[i], or 0 if invalid.
size_t utf8_len(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) { n = 2; cp = c & 0x1f; }
  else if ((c & 0xf0) == 0xe0) { n = 3; cp = c & 0x0f; }
  else if ((c & 0xf8) == 0xf0) { n = 4; cp = c & 0x07; }
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (d & 0x3f);
  }
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
      cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

void json_string(std::string& out, const std::string& s) {
  out.push_back('"');
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
      ++i;
    } else if (c < 0x20 || c == 0x7f) {
      switch (c) {
        case '\n': out += "\\n"; break;
        case '\t': out += "\\t"; break;
        case '\r': out += "\\r"; break;
        default: absl::StrAppendFormat(&out, "\\u%04x", c);
      }
      ++i;
    } else {
      size_t n = utf8_len(s, i);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s, i, n);
        i += n;
      }
    }
  }
  out.push_back('"');
}

// Human-readable string: quoted, control bytes escaped, cut after max_chars bytes (at a UTF-8
// boundary) with the total length noted.
std::string human_string(const std::string& s, size_t max_chars) {
  std::string out = "\"";
  size_t i = 0;
  while (i < s.size() && i < max_chars) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = utf8_len(s, i);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
      ++i;
    } else if (c == '\n') {
      out += "\\n";
      ++i;
    } else if (c < 0x20 || c == 0x7f || n == 0) {
      absl::StrAppendFormat(&out, "\\x%02x", c);
      ++i;
    } else {
      if (i + n > max_chars && i > 0) break;
      out.append(s, i, n);
      i += n;
    }
  }
  out.push_back('"');
  if (i < s.size()) absl::StrAppend(&out, "... (", s.size(), " bytes)");
  return out;
}

std::string scalar_text(const Value& v, bool json, size_t max_chars) {
  switch (v.type) {
    case ValueType::U8: case ValueType::U16: case ValueType::U32: case ValueType::U64:
      return absl::StrCat(v.u);
    case ValueType::I8: case ValueType::I16: case ValueType::I32: case ValueType::I64:
      return absl::StrCat(v.i);
    case ValueType::BOOL:
      return v.u ? "true" : "false";
    case ValueType::F32: case ValueType::F64: {
      std::string f = fmt_float(v.f, v.type == ValueType::F32);
      if (json && !std::isfinite(v.f)) return "\"" + f + "\"";
      return f;
    }
    case ValueType::STRING: {
      if (!json) return human_string(v.s, max_chars);
      std::string out;
      json_string(out, v.s);
      return out;
    }
    case ValueType::ARRAY:
      break;
  }
  return "?";
}

// A JSON list of an array's items (all of them when limit == 0).
void json_list(std::string& out, const Value& v, size_t limit) {
  out.push_back('[');
  size_t n = v.array.size();
  if (limit > 0 && n > limit) n = limit;
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ", ";
    const Value& e = v.array[i];
    if (e.type == ValueType::ARRAY) {
      json_list(out, e, limit);
    } else {
      out += scalar_text(e, true, 0);
    }
  }
  out.push_back(']');
}

// "i32[3]"; nested arrays name the first inner element type: "i32[][3]".
std::string array_type_text(const Value& v) {
  std::string elem = gguf::value_type_name(v.elem_type);
  if (v.elem_type == ValueType::ARRAY && !v.array.empty()) {
    elem = absl::StrCat(gguf::value_type_name(v.array[0].elem_type), "[]");
  }
  return absl::StrCat(elem, "[", v.array.size(), "]");
}

std::string human_array(const Value& v, size_t items, size_t max_chars) {
  std::string out = "[";
  const size_t n = std::min(v.array.size(), items);
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ", ";
    const Value& e = v.array[i];
    out += e.type == ValueType::ARRAY ? human_array(e, items, max_chars)
                                      : scalar_text(e, false, max_chars);
  }
  if (v.array.size() > n) absl::StrAppend(&out, n ? ", " : "", "... ", v.array.size() - n, " more");
  out += "]";
  return out;
}

std::string human_bytes(uint64_t b) {
  if (b >= (uint64_t{1} << 30)) return absl::StrFormat("%.2f GiB", b / 1073741824.0);
  if (b >= (uint64_t{1} << 20)) return absl::StrFormat("%.2f MiB", b / 1048576.0);
  if (b >= 1024) return absl::StrFormat("%.1f KiB", b / 1024.0);
  return absl::StrCat(b, " B");
}

std::string shape_text(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) absl::StrAppend(&s, i ? ", " : "", ne[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------- printers

std::string render_json(const gguf::File& f, size_t array_limit) {
  std::string out;
  absl::StrAppend(&out, "{\"version\": ", f.version(), ", \"metadata\": {");
  bool first = true;
  for (const auto& kv : f.metadata()) {
    out += first ? "\n  " : ",\n  ";
    first = false;
    json_string(out, kv.key);
    absl::StrAppend(&out, ": {\"type\": \"", gguf::value_type_name(kv.value.type), "\"");
    if (kv.value.type == ValueType::ARRAY) {
      absl::StrAppend(&out, ", \"elem_type\": \"", gguf::value_type_name(kv.value.elem_type),
                      "\", \"length\": ", kv.value.array.size());
      if (array_limit > 0 && kv.value.array.size() > array_limit) out += ", \"truncated\": true";
      out += ", \"value\": ";
      json_list(out, kv.value, array_limit);
    } else {
      absl::StrAppend(&out, ", \"value\": ", scalar_text(kv.value, true, 0));
    }
    out += "}";
  }
  out += first ? "}, \"tensors\": [" : "\n}, \"tensors\": [";
  first = true;
  for (const auto& t : f.tensors()) {
    out += first ? "\n  " : ",\n  ";
    first = false;
    out += "{\"name\": ";
    json_string(out, t.name);
    absl::StrAppend(&out, ", \"type\": \"", type_name(t.type), "\", \"shape\": ",
                    shape_text(t.ne), ", \"offset\": ", t.offset, ", \"size\": ", t.size, "}");
  }
  out += first ? "]}\n" : "\n]}\n";
  return out;
}

std::string render_human(const gguf::File& f, size_t items, size_t max_chars) {
  std::string out;
  absl::StrAppendFormat(&out, "file:       %s\n", f.path());
  absl::StrAppendFormat(&out, "GGUF:       version %d, alignment %d\n", f.version(), f.alignment());
  absl::StrAppendFormat(&out, "metadata:   %d keys\n", f.metadata().size());
  absl::StrAppendFormat(&out, "tensors:    %d, data section at file offset %d (%d bytes, %s)\n",
                        f.tensors().size(), f.data_offset(), f.data_size(),
                        human_bytes(f.data_size()));

  size_t kw = 0;
  for (const auto& kv : f.metadata()) kw = std::max(kw, kv.key.size());
  kw = std::min<size_t>(kw, 48);
  out += "\nmetadata:\n";
  for (const auto& kv : f.metadata()) {
    const Value& v = kv.value;
    std::string type, value;
    if (v.type == ValueType::ARRAY) {
      type = array_type_text(v);
      value = human_array(v, items, max_chars);
    } else {
      type = gguf::value_type_name(v.type);
      value = scalar_text(v, false, max_chars);
    }
    absl::StrAppendFormat(&out, "  %-*s  %-14s %s\n", kw, kv.key, type, value);
  }

  size_t nw = 4;
  for (const auto& t : f.tensors()) nw = std::max(nw, t.name.size());
  nw = std::min<size_t>(nw, 48);
  out += "\ntensors:\n";
  absl::StrAppendFormat(&out, "  %-*s  %-7s %-24s %14s %14s\n", nw, "name", "type",
                        "shape (ggml order)", "offset", "bytes");
  struct Total { size_t count = 0; uint64_t bytes = 0; int64_t elements = 0; };
  std::map<uint32_t, Total> totals;
  uint64_t all_bytes = 0;
  for (const auto& t : f.tensors()) {
    absl::StrAppendFormat(&out, "  %-*s  %-7s %-24s %14d %14d\n", nw, t.name, type_name(t.type),
                          shape_text(t.ne), t.offset, t.size);
    Total& tot = totals[static_cast<uint32_t>(t.type)];
    ++tot.count;
    tot.bytes += t.size;
    tot.elements += t.n_elements();
    all_bytes += t.size;
  }
  out += "\ntotals by type:\n";
  for (const auto& [id, tot] : totals) {
    absl::StrAppendFormat(&out, "  %-7s %6d tensors %16d elements %16d bytes (%s)\n",
                          type_name(static_cast<GgmlType>(id)), tot.count, tot.elements,
                          tot.bytes, human_bytes(tot.bytes));
  }
  absl::StrAppendFormat(&out, "  %-7s %6d tensors %16s          %16d bytes (%s)\n", "all",
                        f.tensors().size(), "", all_bytes, human_bytes(all_bytes));
  return out;
}

bool parse_count(const std::string& s, size_t* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (*end != '\0' || s[0] == '-') return false;
  *out = static_cast<size_t>(v);
  return true;
}

}  // namespace

int inspect_main(int argc, char** argv) {
  Args a("inspect", kSummary);
  a.positional("FILE.gguf", "the GGUF file to read");
  a.flag("json", "print one JSON document instead of the human-readable listing");
  a.opt("array-limit", "with --json: at most K items per array value (0 = all items)", "0");
  a.opt("items", "human output: array items shown per key", "8");
  a.opt("string-chars", "human output: bytes of a string shown before it is cut", "96");
  if (!a.parse(argc, argv)) return parse_exit(a);
  if (a.positionals().size() != 1) return a.usage_error("expected exactly one FILE.gguf");
  size_t array_limit = 0, items = 0, max_chars = 0;
  if (!parse_count(a.get("array-limit"), &array_limit))
    return a.usage_error("--array-limit wants a count, got '" + a.get("array-limit") + "'");
  if (!parse_count(a.get("items"), &items))
    return a.usage_error("--items wants a count, got '" + a.get("items") + "'");
  if (!parse_count(a.get("string-chars"), &max_chars))
    return a.usage_error("--string-chars wants a count, got '" + a.get("string-chars") + "'");

  auto f = gguf::File::Open(a.positionals()[0]);
  if (!f.ok()) {
    std::fprintf(stderr, "rigserve inspect: %s\n", std::string(f.status().message()).c_str());
    return 1;
  }
  const std::string out = a.has("json") ? render_json(**f, array_limit)
                                        : render_human(**f, items, max_chars);
  if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "rigserve inspect: writing the output failed\n");
    return 1;
  }
  return 0;
}

}  // namespace rs::cli
