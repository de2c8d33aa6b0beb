// GGUF v2/v3 reader and v3 writer. Layout: ../shared/spec/qwen35.md §6.1.
//
// Reader rules: every count and length read from the file is checked against the bytes that
// remain before anything is allocated for it, so allocations are bounded by the file size
// (times a constant: one Value per array element). Every error names the problem and the byte
// offset where it was found.
#include "worker/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace rs::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kMagicBigEndian = 0x47475546;  // "FUGG": gguf-py's big-endian files
constexpr uint32_t kDefaultAlignment = 32;
constexpr uint64_t kMaxNameLength = 65535;   // keys and tensor names; ggml uses 64 for names
constexpr int kMaxArrayDepth = 16;           // nested arrays deeper than this are refused
constexpr uint32_t kMaxDims = 4;
// Larger alignments are refused: real files use 32 (llama.cpp) up to a page; a writer asked to
// honour an alignment of 2^31 would pad the header to gigabytes.
constexpr uint64_t kMaxAlignment = uint64_t{1} << 20;
// Smallest encodings, used to bound counts by the bytes that remain.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims 0, type, offset

bool known_value_type(uint32_t t) { return t <= 12; }

// Bytes of one encoded scalar of type t; for STRING/ARRAY the minimum (length/header only).
uint64_t min_value_bytes(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::BOOL: return 1;
    case ValueType::U16: case ValueType::I16: return 2;
    case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
    case ValueType::U64: case ValueType::I64: case ValueType::F64: return 8;
    case ValueType::STRING: return 8;
    case ValueType::ARRAY: return 12;
  }
  return 1;
}

std::string qname(std::string_view s) {
  std::string out = "'";
  size_t n = std::min<size_t>(s.size(), 80);
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\') {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (s.size() > n) absl::StrAppend(&out, "...(", s.size(), " bytes)");
  out.push_back('\'');
  return out;
}

absl::Status Err(std::string msg) { return absl::InvalidArgumentError(std::move(msg)); }

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

bool is_pow2(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

std::string shape_str(const std::vector<int64_t>& ne) {
  return absl::StrCat("[", absl::StrJoin(ne, ", "), "]");
}

// A bounds-checked little-endian reader over [buf, buf+size).
class Cursor {
 public:
  Cursor(const uint8_t* buf, size_t size) : buf_(buf), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status need(uint64_t n, std::string_view what) const {
    if (n > remaining()) {
      return Err(absl::StrFormat(
          "truncated file: %s at offset %d needs %d bytes, but only %d remain (file size %d)",
          what, pos_, n, remaining(), size_));
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status read(T* out, std::string_view what) {
    if (auto s = need(sizeof(T), what); !s.ok()) return s;
    std::memcpy(out, buf_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  // A gguf_string: u64 length + bytes. `max_len` bounds names (keys, tensor names).
  absl::Status read_string(std::string* out, std::string_view what, uint64_t max_len) {
    const uint64_t at = pos_;
    uint64_t len = 0;
    if (auto s = read(&len, what); !s.ok()) return s;
    if (len > max_len) {
      return Err(absl::StrFormat("%s length %d at offset %d is absurd (limit %d bytes)", what,
                                 len, at, max_len));
    }
    if (len > remaining()) {
      return Err(absl::StrFormat(
          "%s length %d at offset %d runs past the end of the file (%d bytes remain after the "
          "length, file size %d)",
          what, len, at, remaining(), size_));
    }
    out->assign(reinterpret_cast<const char*>(buf_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

 private:
  const uint8_t* buf_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

#define RS_RETURN_IF_ERROR(expr)            \
  do {                                      \
    absl::Status _st = (expr);              \
    if (!_st.ok()) return _st;              \
  } while (0)

absl::Status read_value(Cursor& c, ValueType type, Value* out, const std::string& key,
                        int depth) {
  out->type = type;
  switch (type) {
    case ValueType::U8: { uint8_t v; RS_RETURN_IF_ERROR(c.read(&v, "u8 value")); out->u = v; break; }
    case ValueType::I8: { int8_t v; RS_RETURN_IF_ERROR(c.read(&v, "i8 value")); out->i = v; break; }
    case ValueType::U16: { uint16_t v; RS_RETURN_IF_ERROR(c.read(&v, "u16 value")); out->u = v; break; }
    case ValueType::I16: { int16_t v; RS_RETURN_IF_ERROR(c.read(&v, "i16 value")); out->i = v; break; }
    case ValueType::U32: { uint32_t v; RS_RETURN_IF_ERROR(c.read(&v, "u32 value")); out->u = v; break; }
    case ValueType::I32: { int32_t v; RS_RETURN_IF_ERROR(c.read(&v, "i32 value")); out->i = v; break; }
    case ValueType::U64: { uint64_t v; RS_RETURN_IF_ERROR(c.read(&v, "u64 value")); out->u = v; break; }
    case ValueType::I64: { int64_t v; RS_RETURN_IF_ERROR(c.read(&v, "i64 value")); out->i = v; break; }
    case ValueType::F32: { float v; RS_RETURN_IF_ERROR(c.read(&v, "f32 value")); out->f = v; break; }
    case ValueType::F64: { double v; RS_RETURN_IF_ERROR(c.read(&v, "f64 value")); out->f = v; break; }
    case ValueType::BOOL: {
      const uint64_t at = c.pos();
      uint8_t v;
      RS_RETURN_IF_ERROR(c.read(&v, "bool value"));
      if (v > 1) {
        return Err(absl::StrFormat("bool value %d at offset %d of key %s is neither 0 nor 1", v,
                                   at, qname(key)));
      }
      out->u = v;
      break;
    }
    case ValueType::STRING:
      RS_RETURN_IF_ERROR(c.read_string(&out->s, "string value", std::numeric_limits<uint64_t>::max()));
      break;
    case ValueType::ARRAY: {
      const uint64_t at = c.pos();
      if (depth >= kMaxArrayDepth) {
        return Err(absl::StrFormat("array nesting deeper than %d at offset %d in key %s",
                                   kMaxArrayDepth, at, qname(key)));
      }
      uint32_t et = 0;
      RS_RETURN_IF_ERROR(c.read(&et, "array element type"));
      if (!known_value_type(et)) {
        return Err(absl::StrFormat("unknown array element type %d at offset %d in key %s", et, at,
                                   qname(key)));
      }
      out->elem_type = static_cast<ValueType>(et);
      const uint64_t count_at = c.pos();
      uint64_t n = 0;
      RS_RETURN_IF_ERROR(c.read(&n, "array length"));
      const uint64_t min_bytes = min_value_bytes(out->elem_type);
      if (n > c.remaining() / min_bytes) {
        return Err(absl::StrFormat(
            "array length %d at offset %d in key %s runs past the end of the file (%d elements "
            "of %s need at least %d bytes each, %d bytes remain)",
            n, count_at, qname(key), n, value_type_name(out->elem_type), min_bytes,
            c.remaining()));
      }
      out->array.resize(n);
      for (uint64_t k = 0; k < n; ++k) {
        RS_RETURN_IF_ERROR(read_value(c, out->elem_type, &out->array[k], key, depth + 1));
      }
      break;
    }
  }
  return absl::OkStatus();
}

// Appends little-endian bytes.
class Sink {
 public:
  std::vector<uint8_t> bytes;
  template <typename T>
  void put(T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    bytes.insert(bytes.end(), b, b + sizeof(T));
  }
  void put_string(std::string_view s) {
    put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
};

absl::Status check_range(const Value& v, const std::string& key) {
  auto bad = [&](std::string_view what) {
    return Err(absl::StrFormat("writer: value of key %s does not fit %s (%s)", qname(key),
                               value_type_name(v.type), what));
  };
  switch (v.type) {
    case ValueType::U8: if (v.u > 0xff) return bad(absl::StrCat(v.u)); break;
    case ValueType::U16: if (v.u > 0xffff) return bad(absl::StrCat(v.u)); break;
    case ValueType::U32: if (v.u > 0xffffffffu) return bad(absl::StrCat(v.u)); break;
    case ValueType::BOOL: if (v.u > 1) return bad(absl::StrCat(v.u)); break;
    case ValueType::I8: if (v.i < -128 || v.i > 127) return bad(absl::StrCat(v.i)); break;
    case ValueType::I16: if (v.i < -32768 || v.i > 32767) return bad(absl::StrCat(v.i)); break;
    case ValueType::I32:
      if (v.i < std::numeric_limits<int32_t>::min() || v.i > std::numeric_limits<int32_t>::max())
        return bad(absl::StrCat(v.i));
      break;
    default: break;
  }
  return absl::OkStatus();
}

absl::Status write_value(Sink& s, const Value& v, const std::string& key, int depth) {
  RS_RETURN_IF_ERROR(check_range(v, key));
  switch (v.type) {
    case ValueType::U8: s.put<uint8_t>(static_cast<uint8_t>(v.u)); break;
    case ValueType::I8: s.put<int8_t>(static_cast<int8_t>(v.i)); break;
    case ValueType::U16: s.put<uint16_t>(static_cast<uint16_t>(v.u)); break;
    case ValueType::I16: s.put<int16_t>(static_cast<int16_t>(v.i)); break;
    case ValueType::U32: s.put<uint32_t>(static_cast<uint32_t>(v.u)); break;
    case ValueType::I32: s.put<int32_t>(static_cast<int32_t>(v.i)); break;
    case ValueType::U64: s.put<uint64_t>(v.u); break;
    case ValueType::I64: s.put<int64_t>(v.i); break;
    case ValueType::F32: s.put<float>(static_cast<float>(v.f)); break;
    case ValueType::F64: s.put<double>(v.f); break;
    case ValueType::BOOL: s.put<uint8_t>(v.u ? 1 : 0); break;
    case ValueType::STRING: s.put_string(v.s); break;
    case ValueType::ARRAY:
      if (depth >= kMaxArrayDepth) {
        return Err(absl::StrFormat("writer: key %s nests arrays deeper than %d", qname(key),
                                   kMaxArrayDepth));
      }
      if (!known_value_type(static_cast<uint32_t>(v.elem_type))) {
        return Err(absl::StrFormat("writer: key %s has unknown array element type %d",
                                   qname(key), static_cast<uint32_t>(v.elem_type)));
      }
      s.put<uint32_t>(static_cast<uint32_t>(v.elem_type));
      s.put<uint64_t>(v.array.size());
      for (size_t k = 0; k < v.array.size(); ++k) {
        if (v.array[k].type != v.elem_type) {
          return Err(absl::StrFormat(
              "writer: key %s: array element %d has type %s, the array's element type is %s",
              qname(key), k, value_type_name(v.array[k].type), value_type_name(v.elem_type)));
        }
        RS_RETURN_IF_ERROR(write_value(s, v.array[k], key, depth + 1));
      }
      break;
    default:
      return Err(absl::StrFormat("writer: key %s has unknown value type %d", qname(key),
                                 static_cast<uint32_t>(v.type)));
  }
  return absl::OkStatus();
}

// Byte size of a tensor of `type` and shape `ne`, with every check the reader applies.
// `where` prefixes messages ("tensor 'x' (info at offset N)").
absl::StatusOr<uint64_t> tensor_bytes(uint32_t type_id, const std::vector<int64_t>& ne,
                                      const std::string& where) {
  const TypeInfo* ti = type_info(type_id);
  if (!ti) return Err(absl::StrFormat("%s: unknown ggml type id %d", where, type_id));
  if (ne.size() > kMaxDims) {
    return Err(absl::StrFormat("%s: %d dimensions, at most %d allowed", where, ne.size(),
                               kMaxDims));
  }
  for (size_t d = 0; d < ne.size(); ++d) {
    if (ne[d] < 0) {
      return Err(absl::StrFormat("%s: dimension ne%d = %d is negative", where, d, ne[d]));
    }
  }
  const int64_t ne0 = ne.empty() ? 1 : ne[0];
  if (ne0 % ti->block_size != 0) {
    return Err(absl::StrFormat("%s: ne0 = %d is not a multiple of the %s block size %d", where,
                               ne0, ti->name, ti->block_size));
  }
  // Element count must fit int64 (ggml's nelements) and the byte size uint64.
  int64_t nel = 1;
  for (int64_t d : ne) {
    if (__builtin_mul_overflow(nel, d, &nel)) {
      return Err(absl::StrFormat("%s: shape %s has more elements than fit in 64 bits", where,
                                 shape_str(ne)));
    }
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(nel / ti->block_size),
                             static_cast<uint64_t>(ti->type_size), &bytes)) {
    return Err(absl::StrFormat("%s: byte size of shape %s of %s overflows 64 bits", where,
                               shape_str(ne), ti->name));
  }
  return bytes;
}

}  // namespace

// ----------------------------------------------------------------------------------- Value

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::U8: return "u8";
    case ValueType::I8: return "i8";
    case ValueType::U16: return "u16";
    case ValueType::I16: return "i16";
    case ValueType::U32: return "u32";
    case ValueType::I32: return "i32";
    case ValueType::F32: return "f32";
    case ValueType::BOOL: return "bool";
    case ValueType::STRING: return "string";
    case ValueType::ARRAY: return "array";
    case ValueType::U64: return "u64";
    case ValueType::I64: return "i64";
    case ValueType::F64: return "f64";
  }
  return "?";
}

Value Value::U8(uint8_t v) { Value x; x.type = ValueType::U8; x.u = v; return x; }
Value Value::I8(int8_t v) { Value x; x.type = ValueType::I8; x.i = v; return x; }
Value Value::U16(uint16_t v) { Value x; x.type = ValueType::U16; x.u = v; return x; }
Value Value::I16(int16_t v) { Value x; x.type = ValueType::I16; x.i = v; return x; }
Value Value::U32(uint32_t v) { Value x; x.type = ValueType::U32; x.u = v; return x; }
Value Value::I32(int32_t v) { Value x; x.type = ValueType::I32; x.i = v; return x; }
Value Value::U64(uint64_t v) { Value x; x.type = ValueType::U64; x.u = v; return x; }
Value Value::I64(int64_t v) { Value x; x.type = ValueType::I64; x.i = v; return x; }
Value Value::F32(float v) { Value x; x.type = ValueType::F32; x.f = v; return x; }
Value Value::F64(double v) { Value x; x.type = ValueType::F64; x.f = v; return x; }
Value Value::Bool(bool v) { Value x; x.type = ValueType::BOOL; x.u = v ? 1 : 0; return x; }
Value Value::Str(std::string v) {
  Value x;
  x.type = ValueType::STRING;
  x.s = std::move(v);
  return x;
}
Value Value::Array(ValueType elem, std::vector<Value> items) {
  Value x;
  x.type = ValueType::ARRAY;
  x.elem_type = elem;
  x.array = std::move(items);
  return x;
}
Value Value::StrArray(const std::vector<std::string>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (const auto& s : items) v.push_back(Str(s));
  return Array(ValueType::STRING, std::move(v));
}
Value Value::I32Array(const std::vector<int32_t>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (int32_t i : items) v.push_back(I32(i));
  return Array(ValueType::I32, std::move(v));
}
Value Value::F32Array(const std::vector<float>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (float f : items) v.push_back(F32(f));
  return Array(ValueType::F32, std::move(v));
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::U8: case ValueType::I8: case ValueType::U16: case ValueType::I16:
    case ValueType::U32: case ValueType::I32: case ValueType::U64: case ValueType::I64:
    case ValueType::BOOL:
      return true;
    default:
      return false;
  }
}

int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// ------------------------------------------------------------------------------------ File

File::~File() {
  if (map_) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<File>> File::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": fstat: ", std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<File> f(new File());
  f->path_ = path;
  const size_t size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap of ", size, " bytes: ",
                                              std::strerror(e)));
    }
    f->map_ = m;
    f->map_size_ = size;
    f->buf_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  f->size_ = size;
  if (absl::Status s = f->Parse(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  }
  return f;
}

absl::StatusOr<std::unique_ptr<File>> File::FromBuffer(const uint8_t* data, size_t size,
                                                       std::shared_ptr<void> keepalive) {
  std::unique_ptr<File> f(new File());
  f->path_ = "<buffer>";
  f->buf_ = data;
  f->size_ = data ? size : 0;
  f->keepalive_ = std::move(keepalive);
  RS_RETURN_IF_ERROR(f->Parse());
  return f;
}

absl::StatusOr<std::unique_ptr<File>> File::FromParts(std::vector<KeyValue> metadata,
                                                      std::vector<TensorInfo> tensors,
                                                      const uint8_t* data_base,
                                                      uint64_t data_size,
                                                      std::shared_ptr<void> keepalive) {
  std::unique_ptr<File> f(new File());
  f->path_ = "<memory>";
  f->keepalive_ = std::move(keepalive);
  f->version_ = 3;
  f->kv_ = std::move(metadata);
  f->tensors_ = std::move(tensors);
  if (data_size > 0 && data_base == nullptr) {
    return Err(absl::StrFormat("in-memory model: data section of %d bytes has no base pointer",
                               data_size));
  }
  f->data_base_ = data_base;
  f->data_size_ = data_size;
  f->data_offset_ = 0;
  f->alignment_ = kDefaultAlignment;
  for (size_t i = 0; i < f->kv_.size(); ++i) {
    if (f->kv_[i].key != "general.alignment") continue;
    const Value& v = f->kv_[i].value;
    if (v.type != ValueType::U32) {
      return Err(absl::StrFormat("in-memory model: general.alignment (key #%d) has type %s, "
                                 "expected u32", i, value_type_name(v.type)));
    }
    if (!is_pow2(v.u) || v.u > 0xffffffffu) {
      return Err(absl::StrFormat("in-memory model: general.alignment = %d (key #%d) is not a "
                                 "nonzero power of two", v.u, i));
    }
    f->alignment_ = static_cast<uint32_t>(v.u);
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i) {
    TensorInfo& t = f->tensors_[i];
    const uint64_t given = t.size;
    RS_RETURN_IF_ERROR(f->CheckTensor(t, i));
    if (given != 0 && given != t.size) {
      return Err(absl::StrFormat("in-memory model: %s: size %d given, but type %s and shape %s "
                                 "make %d bytes",
                                 f->Where({}, i), given, type_name(t.type), shape_str(t.ne),
                                 t.size));
    }
  }
  RS_RETURN_IF_ERROR(f->Index());
  return f;
}

std::string File::Where(const std::vector<uint64_t>& offsets, size_t index) const {
  if (index < offsets.size()) {
    return absl::StrFormat("tensor %s (info at offset %d)", qname(tensors_[index].name),
                           offsets[index]);
  }
  return absl::StrFormat("tensor %s (#%d)", qname(tensors_[index].name), index);
}

absl::Status File::CheckTensor(TensorInfo& t, size_t index) const {
  const std::string where = Where(tensor_offsets_, index);
  absl::StatusOr<uint64_t> bytes = tensor_bytes(static_cast<uint32_t>(t.type), t.ne, where);
  if (!bytes.ok()) return bytes.status();
  t.size = *bytes;
  if (t.offset % alignment_ != 0) {
    return Err(absl::StrFormat("%s: data offset %d is not a multiple of the alignment %d", where,
                               t.offset, alignment_));
  }
  uint64_t end = 0;
  if (__builtin_add_overflow(t.offset, t.size, &end) || end > data_size_) {
    return Err(absl::StrFormat(
        "%s: data [%d, %d + %d) at file offset %d runs past the end of the data section "
        "(%d bytes, file size %d)",
        where, t.offset, t.offset, t.size, data_offset_ + t.offset, data_size_,
        data_offset_ + data_size_));
  }
  return absl::OkStatus();
}

absl::Status File::Parse() {
  Cursor c(buf_, size_);
  uint32_t magic = 0;
  RS_RETURN_IF_ERROR(c.read(&magic, "magic"));
  if (magic == kMagicBigEndian) {
    return Err("magic \"FUGG\" at offset 0: a big-endian GGUF file; only little-endian files "
               "are read");
  }
  if (magic != kMagic) {
    return Err(absl::StrFormat(
        "bad magic 0x%08x at offset 0 (bytes %02x %02x %02x %02x): not a GGUF file (expected "
        "47 47 55 46, \"GGUF\")",
        magic, magic & 0xff, (magic >> 8) & 0xff, (magic >> 16) & 0xff, magic >> 24));
  }
  RS_RETURN_IF_ERROR(c.read(&version_, "version"));
  if (version_ == 1) {
    return Err("GGUF version 1 at offset 4 is not supported (32-bit counts; only versions 2 and "
               "3 are read): convert the file with a current llama.cpp");
  }
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xffff) == 0 && (version_ >> 24) >= 1 && (version_ >> 24) <= 3) {
      return Err(absl::StrFormat("GGUF version field 0x%08x at offset 4 looks big-endian "
                                 "(version %d); only little-endian files are read",
                                 version_, version_ >> 24));
    }
    return Err(absl::StrFormat("unknown GGUF version %d at offset 4 (supported: 2, 3)",
                               version_));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  const uint64_t nt_at = c.pos();
  RS_RETURN_IF_ERROR(c.read(&n_tensors, "tensor_count"));
  const uint64_t nkv_at = c.pos();
  RS_RETURN_IF_ERROR(c.read(&n_kv, "metadata_kv_count"));
  if (n_kv > c.remaining() / kMinKvBytes) {
    return Err(absl::StrFormat(
        "metadata_kv_count %d at offset %d is absurd: each key/value needs at least %d bytes "
        "and only %d bytes remain",
        n_kv, nkv_at, kMinKvBytes, c.remaining()));
  }
  if (n_tensors > c.remaining() / kMinTensorInfoBytes) {
    return Err(absl::StrFormat(
        "tensor_count %d at offset %d is absurd: each tensor info needs at least %d bytes and "
        "only %d bytes remain",
        n_tensors, nt_at, kMinTensorInfoBytes, c.remaining()));
  }

  kv_.clear();
  kv_.reserve(n_kv);
  kv_offsets_.reserve(n_kv);
  bool has_alignment = false;
  for (uint64_t k = 0; k < n_kv; ++k) {
    const uint64_t at = c.pos();
    KeyValue kv;
    RS_RETURN_IF_ERROR(c.read_string(&kv.key, "metadata key", kMaxNameLength));
    const uint64_t type_at = c.pos();
    uint32_t type = 0;
    RS_RETURN_IF_ERROR(c.read(&type, "metadata value type"));
    if (!known_value_type(type)) {
      return Err(absl::StrFormat("unknown metadata value type %d at offset %d for key %s", type,
                                 type_at, qname(kv.key)));
    }
    const uint64_t value_at = c.pos();
    RS_RETURN_IF_ERROR(read_value(c, static_cast<ValueType>(type), &kv.value, kv.key, 0));
    if (kv.key == "general.alignment") {
      if (kv.value.type != ValueType::U32) {
        return Err(absl::StrFormat("general.alignment at offset %d has type %s, expected u32",
                                   at, value_type_name(kv.value.type)));
      }
      if (!is_pow2(kv.value.u)) {
        return Err(absl::StrFormat(
            "general.alignment = %d at offset %d is not a nonzero power of two", kv.value.u,
            value_at));
      }
      if (kv.value.u > kMaxAlignment) {
        return Err(absl::StrFormat(
            "general.alignment = %d at offset %d is absurd (limit %d bytes)", kv.value.u,
            value_at, kMaxAlignment));
      }
      alignment_ = static_cast<uint32_t>(kv.value.u);
      has_alignment = true;
    }
    kv_.push_back(std::move(kv));
    kv_offsets_.push_back(at);
  }
  if (!has_alignment) alignment_ = kDefaultAlignment;

  tensors_.clear();
  tensors_.reserve(n_tensors);
  tensor_offsets_.reserve(n_tensors);
  std::vector<uint32_t> raw_types;
  raw_types.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    const uint64_t at = c.pos();
    TensorInfo t;
    RS_RETURN_IF_ERROR(c.read_string(&t.name, "tensor name", kMaxNameLength));
    const std::string where = absl::StrFormat("tensor %s (info at offset %d)", qname(t.name), at);
    const uint64_t dims_at = c.pos();
    uint32_t n_dims = 0;
    RS_RETURN_IF_ERROR(c.read(&n_dims, "tensor n_dims"));
    if (n_dims > kMaxDims) {
      return Err(absl::StrFormat("%s: n_dims = %d at offset %d, at most %d allowed", where,
                                 n_dims, dims_at, kMaxDims));
    }
    t.ne.resize(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne_at = c.pos();
      uint64_t ne = 0;
      RS_RETURN_IF_ERROR(c.read(&ne, "tensor dimension"));
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Err(absl::StrFormat("%s: dimension ne%d = %d at offset %d does not fit int64",
                                   where, d, ne, ne_at));
      }
      t.ne[d] = static_cast<int64_t>(ne);
    }
    const uint64_t type_at = c.pos();
    uint32_t type = 0;
    RS_RETURN_IF_ERROR(c.read(&type, "tensor type"));
    if (!type_info(type)) {
      return Err(absl::StrFormat("%s: unknown ggml type id %d at offset %d", where, type,
                                 type_at));
    }
    t.type = static_cast<GgmlType>(type);
    RS_RETURN_IF_ERROR(c.read(&t.offset, "tensor data offset"));
    tensors_.push_back(std::move(t));
    tensor_offsets_.push_back(at);
  }

  // Data section: after the tensor infos, padded to the alignment.
  const uint64_t infos_end = c.pos();
  data_offset_ = align_up(infos_end, alignment_);
  if (data_offset_ <= size_) {
    data_size_ = size_ - data_offset_;
    data_base_ = buf_ + data_offset_;
  } else {
    data_size_ = 0;
    data_base_ = buf_ + size_;  // empty section; only zero-byte tensors can fit
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    absl::Status s = CheckTensor(tensors_[i], i);
    if (!s.ok()) {
      if (data_offset_ > size_ && tensors_[i].size > 0) {
        return Err(absl::StrFormat(
            "truncated file: data section starts at offset %d (tensor infos end at %d, aligned "
            "to %d), past the end of the file (size %d); %s",
            data_offset_, infos_end, alignment_, size_, s.message()));
      }
      return s;
    }
  }
  return Index();
}

absl::Status File::Index() {
  kv_index_.clear();
  tensor_index_.clear();
  kv_index_.reserve(kv_.size());
  tensor_index_.reserve(tensors_.size());
  for (size_t i = 0; i < kv_.size(); ++i) {
    auto [it, inserted] = kv_index_.emplace(kv_[i].key, i);
    if (!inserted) {
      if (i < kv_offsets_.size()) {
        return Err(absl::StrFormat("duplicate metadata key %s at offset %d (first at offset %d)",
                                   qname(kv_[i].key), kv_offsets_[i], kv_offsets_[it->second]));
      }
      return Err(absl::StrFormat("duplicate metadata key %s (#%d, first #%d)",
                                 qname(kv_[i].key), i, it->second));
    }
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    auto [it, inserted] = tensor_index_.emplace(tensors_[i].name, i);
    if (!inserted) {
      if (i < tensor_offsets_.size()) {
        return Err(absl::StrFormat(
            "duplicate tensor name %s at offset %d (first at offset %d)", qname(tensors_[i].name),
            tensor_offsets_[i], tensor_offsets_[it->second]));
      }
      return Err(absl::StrFormat("duplicate tensor name %s (#%d, first #%d)",
                                 qname(tensors_[i].name), i, it->second));
    }
  }
  // Overlaps: sort the non-empty tensors by offset and compare neighbours.
  std::vector<size_t> order;
  order.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (tensors_[i].size > 0) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return tensors_[a].offset != tensors_[b].offset ? tensors_[a].offset < tensors_[b].offset
                                                    : a < b;
  });
  for (size_t k = 1; k < order.size(); ++k) {
    const TensorInfo& a = tensors_[order[k - 1]];
    const TensorInfo& b = tensors_[order[k]];
    if (b.offset < a.offset + a.size) {
      return Err(absl::StrFormat(
          "%s: data [%d, %d) overlaps %s data [%d, %d) (offsets relative to the data section "
          "at file offset %d)",
          Where(tensor_offsets_, order[k]), b.offset, b.offset + b.size,
          Where(tensor_offsets_, order[k - 1]), a.offset, a.offset + a.size, data_offset_));
    }
  }
  return absl::OkStatus();
}

const Value* File::find(std::string_view key) const {
  auto it = kv_index_.find(absl::string_view(key.data(), key.size()));
  return it == kv_index_.end() ? nullptr : &kv_[it->second].value;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(absl::string_view(name.data(), name.size()));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
absl::Status not_found(std::string_view k) {
  const std::string key(k);
  return absl::NotFoundError(absl::StrCat("metadata key '", key, "' not found"));
}
absl::Status wrong_type(std::string_view k, std::string_view w, const Value& v) {
  const std::string key(k), wanted(w);
  return absl::InvalidArgumentError(absl::StrCat("metadata key '", key, "' has type ",
                                                 value_type_name(v.type), ", wanted ", wanted));
}
bool is_signed(ValueType t) {
  return t == ValueType::I8 || t == ValueType::I16 || t == ValueType::I32 || t == ValueType::I64;
}
}  // namespace

absl::StatusOr<uint64_t> File::get_uint(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return not_found(key);
  if (!v->is_integer()) return wrong_type(key, "an unsigned integer", *v);
  if (is_signed(v->type)) {
    if (v->i < 0) {
      return absl::InvalidArgumentError(absl::StrCat("metadata key '", std::string(key), "' = ", v->i,
                                                     " is negative, wanted an unsigned integer"));
    }
    return static_cast<uint64_t>(v->i);
  }
  return v->u;
}

absl::StatusOr<int64_t> File::get_int(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return not_found(key);
  if (!v->is_integer()) return wrong_type(key, "an integer", *v);
  if (is_signed(v->type)) return v->i;
  if (v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata key '", std::string(key), "' = ", v->u, " does not fit int64"));
  }
  return static_cast<int64_t>(v->u);
}

absl::StatusOr<double> File::get_float(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return not_found(key);
  if (!v->is_float()) return wrong_type(key, "f32 or f64", *v);
  return v->f;
}

absl::StatusOr<bool> File::get_bool(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return not_found(key);
  if (v->type != ValueType::BOOL) return wrong_type(key, "bool", *v);
  return v->u != 0;
}

absl::StatusOr<std::string> File::get_string(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return not_found(key);
  if (v->type != ValueType::STRING) return wrong_type(key, "string", *v);
  return v->s;
}

absl::StatusOr<uint64_t> File::get_uint_or(std::string_view key, uint64_t dflt) const {
  if (!find(key)) return dflt;
  return get_uint(key);
}

absl::StatusOr<double> File::get_float_or(std::string_view key, double dflt) const {
  if (!find(key)) return dflt;
  return get_float(key);
}

// ---------------------------------------------------------------------------------- Writer

void Writer::add_kv(std::string key, Value v) { kv_.push_back({std::move(key), std::move(v)}); }

absl::Status Writer::add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne,
                                Producer producer) {
  if (!is_pow2(alignment_)) {
    return Err(absl::StrFormat("writer: alignment %d is not a nonzero power of two", alignment_));
  }
  if (name.size() > kMaxNameLength) {
    return Err(absl::StrFormat("writer: tensor name of %d bytes is too long", name.size()));
  }
  for (const auto& t : tensors_) {
    if (t.name == name) return Err(absl::StrCat("writer: duplicate tensor name ", qname(name)));
  }
  const std::string where = absl::StrCat("writer: tensor ", qname(name));
  absl::StatusOr<uint64_t> bytes = tensor_bytes(static_cast<uint32_t>(type), ne, where);
  if (!bytes.ok()) return bytes.status();
  TensorInfo t;
  t.name = std::move(name);
  t.type = type;
  t.ne = std::move(ne);
  t.offset = next_offset_;
  t.size = *bytes;
  uint64_t end = 0;
  if (__builtin_add_overflow(t.offset, t.size, &end) || end > (uint64_t{1} << 62)) {
    return Err(absl::StrCat(where, ": data section would exceed 2^62 bytes"));
  }
  next_offset_ = align_up(end, alignment_);
  tensors_.push_back(std::move(t));
  producers_.push_back(std::move(producer));
  return absl::OkStatus();
}

absl::Status Writer::add_tensor_bytes(std::string name, GgmlType type, std::vector<int64_t> ne,
                                      std::vector<uint8_t> bytes) {
  auto shared = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  std::string label = name;
  return add_tensor(std::move(name), type, std::move(ne),
                    [shared, label](uint8_t* dst, uint64_t size) -> absl::Status {
                      if (shared->size() != size) {
                        return Err(absl::StrFormat(
                            "writer: tensor %s: %d bytes given, type and shape need %d",
                            qname(label), shared->size(), size));
                      }
                      if (size) std::memcpy(dst, shared->data(), size);
                      return absl::OkStatus();
                    });
}

namespace {
// Serialises header, metadata, tensor infos and the padding up to the data section.
absl::StatusOr<std::vector<uint8_t>> serialize_header(uint32_t alignment,
                                                      const std::vector<KeyValue>& kv,
                                                      const std::vector<TensorInfo>& tensors) {
  if (!is_pow2(alignment)) {
    return Err(absl::StrFormat("writer: alignment %d is not a nonzero power of two", alignment));
  }
  bool has_alignment = false;
  for (size_t i = 0; i < kv.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (kv[j].key == kv[i].key) {
        return Err(absl::StrCat("writer: duplicate metadata key ", qname(kv[i].key)));
      }
    }
    if (kv[i].key.size() > kMaxNameLength) {
      return Err(absl::StrFormat("writer: metadata key of %d bytes is too long", kv[i].key.size()));
    }
    if (kv[i].key == "general.alignment") {
      if (kv[i].value.type != ValueType::U32 || kv[i].value.u != alignment) {
        return Err(absl::StrFormat(
            "writer: general.alignment must be u32 %d (the writer's alignment)", alignment));
      }
      has_alignment = true;
    }
  }
  Sink s;
  s.put<uint32_t>(kMagic);
  s.put<uint32_t>(3);
  s.put<uint64_t>(tensors.size());
  const bool add_alignment = !has_alignment && alignment != kDefaultAlignment;
  s.put<uint64_t>(kv.size() + (add_alignment ? 1 : 0));
  if (add_alignment) {
    s.put_string("general.alignment");
    s.put<uint32_t>(static_cast<uint32_t>(ValueType::U32));
    s.put<uint32_t>(alignment);
  }
  for (const auto& e : kv) {
    s.put_string(e.key);
    s.put<uint32_t>(static_cast<uint32_t>(e.value.type));
    RS_RETURN_IF_ERROR(write_value(s, e.value, e.key, 0));
  }
  for (const auto& t : tensors) {
    s.put_string(t.name);
    s.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) s.put<uint64_t>(static_cast<uint64_t>(d));
    s.put<uint32_t>(static_cast<uint32_t>(t.type));
    s.put<uint64_t>(t.offset);
  }
  s.bytes.resize(align_up(s.bytes.size(), alignment), 0);
  return std::move(s.bytes);
}
}  // namespace

absl::StatusOr<std::vector<uint8_t>> Writer::write_to_buffer() const {
  absl::StatusOr<std::vector<uint8_t>> out = serialize_header(alignment_, kv_, tensors_);
  if (!out.ok()) return out.status();
  const size_t base = out->size();
  out->resize(base + next_offset_, 0);
  for (size_t i = 0; i < tensors_.size(); ++i) {
    RS_RETURN_IF_ERROR(producers_[i](out->data() + base + tensors_[i].offset, tensors_[i].size));
  }
  return out;
}

absl::Status Writer::write(const std::string& path) const {
  absl::StatusOr<std::vector<uint8_t>> header = serialize_header(alignment_, kv_, tensors_);
  if (!header.ok()) return header.status();
  const uint64_t total = header->size() + next_offset_;
  // Written to a temporary name and renamed at the end, so a failed write leaves no half file.
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  }
  auto fail = [&](std::string msg) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return absl::InternalError(std::move(msg));
  };
  if (ftruncate(fd, static_cast<off_t>(total)) != 0) {
    return fail(absl::StrCat(tmp, ": ftruncate to ", total, " bytes: ", std::strerror(errno)));
  }
  // Reserve the blocks now: a full disk is then an error here, not a SIGBUS while a producer
  // writes into the mapping. Filesystems without fallocate are used as they are.
  if (total > 0 && fallocate(fd, 0, 0, static_cast<off_t>(total)) != 0 &&
      errno != EOPNOTSUPP && errno != ENOSYS) {
    return fail(absl::StrCat(tmp, ": cannot reserve ", total, " bytes: ", std::strerror(errno)));
  }
  // The file is mapped so producers write tensor data straight into the page cache: a
  // multi-GB tensor never needs a buffer of its own.
  void* m = total ? mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : nullptr;
  if (m == MAP_FAILED) {
    return fail(absl::StrCat(tmp, ": mmap of ", total, " bytes: ", std::strerror(errno)));
  }
  uint8_t* dst = static_cast<uint8_t*>(m);
  std::memcpy(dst, header->data(), header->size());
  absl::Status st;
  for (size_t i = 0; i < tensors_.size() && st.ok(); ++i) {
    const TensorInfo& t = tensors_[i];
    st = producers_[i](dst + header->size() + t.offset, t.size);
    if (!st.ok()) {
      st = absl::Status(st.code(), absl::StrCat(path, ": tensor ", qname(t.name), ": ",
                                                st.message()));
    }
    // Padding bytes are already zero (ftruncate), and the producer writes exactly t.size.
  }
  if (m && msync(m, total, MS_SYNC) != 0 && st.ok()) {
    st = absl::InternalError(absl::StrCat(tmp, ": msync: ", std::strerror(errno)));
  }
  if (m) munmap(m, total);
  if (!st.ok()) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  }
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat(tmp, ": close: ", std::strerror(errno)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("rename ", tmp, " -> ", path, ": ", std::strerror(e)));
  }
  return absl::OkStatus();
}

}  // namespace rs::gguf
