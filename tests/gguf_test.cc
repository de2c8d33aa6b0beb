// GGUF reader/writer: writer round trips, one test per malformed-input error path (hand-made
// byte buffers; each asserts the message names the problem and the byte offset), FromParts,
// typed getters, and the golden models written by an independent GGUF writer.
#include "worker/gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

namespace rs::gguf {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// Little-endian byte builder for hand-made GGUF images.
struct Bytes {
  std::vector<uint8_t> b;
  size_t size() const { return b.size(); }
  template <typename T>
  Bytes& put(T v) {
    uint8_t x[sizeof(T)];
    std::memcpy(x, &v, sizeof(T));
    b.insert(b.end(), x, x + sizeof(T));
    return *this;
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& str(std::string_view s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return u32(0x46554747).u32(version).u64(n_tensors).u64(n_kv);
  }
  // key + u32 type + u32 value
  Bytes& kv_u32(std::string_view key, uint32_t v) { return str(key).u32(4).u32(v); }
  Bytes& tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t off) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(off);
  }
  Bytes& pad(size_t align) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

absl::StatusOr<std::unique_ptr<File>> Parse(const Bytes& b) {
  return File::FromBuffer(b.b.data(), b.b.size());
}

// The error message of parsing `b` (fails the test when parsing succeeds).
std::string ParseError(const Bytes& b) {
  auto f = Parse(b);
  EXPECT_FALSE(f.ok()) << "parsed a malformed buffer";
  return f.ok() ? std::string() : std::string(f.status().message());
}

std::string At(uint64_t off) { return "offset " + std::to_string(off); }

// ------------------------------------------------------------------------ valid inputs

TEST(GgufReader, MinimalFileWithoutTensors) {
  Bytes b;
  b.header(0, 0);
  auto f = Parse(b);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 3u);
  EXPECT_EQ((*f)->alignment(), 32u);
  EXPECT_TRUE((*f)->metadata().empty());
  EXPECT_TRUE((*f)->tensors().empty());
}

TEST(GgufReader, Version2IsRead) {
  Bytes b;
  b.header(1, 1, 2).kv_u32("a.b", 7).tensor("t", {8}, 0, 0).pad(32).zeros(32);
  auto f = Parse(b);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ(*(*f)->get_uint("a.b"), 7u);
  ASSERT_EQ((*f)->tensors().size(), 1u);
  EXPECT_EQ((*f)->tensors()[0].size, 32u);
  EXPECT_EQ((*f)->data_offset(), 96u);  // infos end at 76
}

TEST(GgufReader, ZeroSizedTensorsAreAllowedAnywhere) {
  Bytes b;
  b.header(2, 0).tensor("e", {0, 3}, 0, 0).tensor("f", {4}, 0, 0).pad(32).zeros(16);
  auto f = Parse(b);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors()[0].size, 0u);
  EXPECT_EQ((*f)->tensors()[1].size, 16u);
}

// ------------------------------------------------------------------------ error paths

TEST(GgufErrors, TruncatedHeader) {
  Bytes b;
  b.u32(0x46554747).u32(3).u32(0);  // tensor_count cut after 4 of 8 bytes
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("truncated file"), HasSubstr("tensor_count"),
                                   HasSubstr(At(8)), HasSubstr("only 4 remain")));
  EXPECT_THAT(ParseError(Bytes{}), AllOf(HasSubstr("truncated file"), HasSubstr(At(0))));
}

TEST(GgufErrors, EveryPrefixOfAValidFileFailsCleanly) {
  Writer w;
  w.add_kv("general.architecture", Value::Str("qwen35"));
  w.add_kv("x.list", Value::I32Array({1, 2, 3}));
  ASSERT_TRUE(w.add_tensor_bytes("a", GgmlType::F32, {4}, std::vector<uint8_t>(16, 1)).ok());
  auto buf = w.write_to_buffer();
  ASSERT_TRUE(buf.ok());
  const size_t data_start = buf->size() - 32;  // one 16-byte tensor padded to 32
  for (size_t n = 0; n < buf->size(); ++n) {
    auto f = File::FromBuffer(buf->data(), n);
    if (n < data_start + 16) {
      ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
      EXPECT_THAT(std::string(f.status().message()), HasSubstr("offset")) << n;
    }
  }
  EXPECT_TRUE(File::FromBuffer(buf->data(), buf->size()).ok());
}

TEST(GgufErrors, TruncatedKeyValue) {
  Bytes b;
  b.header(0, 1).str("key").u32(10);  // u64 value missing; offset of the value is 24+11+4
  EXPECT_THAT(ParseError(b),
              AllOf(HasSubstr("truncated file"), HasSubstr("u64 value"), HasSubstr(At(39))));
}

TEST(GgufErrors, BadMagic) {
  Bytes b;
  b.u32(0x46554746).u32(3).u64(0).u64(0);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("bad magic"), HasSubstr(At(0))));
  Bytes be;
  be.u32(0x47475546).u32(0x03000000).u64(0).u64(0);
  EXPECT_THAT(ParseError(be), AllOf(HasSubstr("big-endian"), HasSubstr(At(0))));
}

TEST(GgufErrors, Version1Rejected) {
  Bytes b;
  b.header(0, 0, 1);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("version 1"), HasSubstr("not supported"),
                                   HasSubstr(At(4))));
}

TEST(GgufErrors, UnknownVersion) {
  Bytes b;
  b.header(0, 0, 7);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("unknown GGUF version 7"), HasSubstr(At(4))));
  Bytes be;
  be.header(0, 0, 0x03000000);
  EXPECT_THAT(ParseError(be), AllOf(HasSubstr("big-endian"), HasSubstr(At(4))));
}

TEST(GgufErrors, KeyLengthPastEnd) {
  Bytes b;
  b.header(0, 1).u64(1000).u32(4).u32(1);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("metadata key length 1000"), HasSubstr(At(24)),
                                   HasSubstr("runs past the end")));
}

TEST(GgufErrors, KeyLengthAbsurd) {
  Bytes b;
  b.header(0, 1).u64(uint64_t{1} << 40).u32(4).u32(1);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("metadata key length 1099511627776"),
                                   HasSubstr(At(24)), HasSubstr("absurd")));
}

TEST(GgufErrors, StringValueLengthPastEnd) {
  Bytes b;
  b.header(0, 1).str("k").u32(8).u64(~uint64_t{0}).u32(0);
  // key at 24 (8+1 bytes), type at 33, string length at 37
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("string value length 18446744073709551615"),
                                   HasSubstr(At(37)), HasSubstr("runs past the end")));
}

TEST(GgufErrors, ArrayLengthPastEnd) {
  Bytes b;
  b.header(0, 1).str("arr").u32(9).u32(4).u64(1000000).u32(1).u32(2);
  // key at 24 (8+3), type at 35, elem type at 39, count at 43
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("array length 1000000"), HasSubstr(At(43)),
                                   HasSubstr("'arr'"), HasSubstr("runs past the end")));
}

TEST(GgufErrors, ArrayOfStringsLengthAbsurd) {
  Bytes b;
  b.header(0, 1).str("arr").u32(9).u32(8).u64(uint64_t{1} << 60).zeros(64);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("array length 1152921504606846976"),
                                   HasSubstr(At(43)), HasSubstr("of string")));
}

TEST(GgufErrors, StringInsideArrayPastEnd) {
  Bytes b;
  b.header(0, 1).str("arr").u32(9).u32(8).u64(2).str("ok").u64(500).zeros(4);
  // count at 43, first string at 51 (8+2), second string length at 61
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("string value length 500"), HasSubstr(At(61))));
}

TEST(GgufErrors, ArrayNestingTooDeep) {
  Bytes b;
  b.header(0, 1).str("deep").u32(9);
  for (int i = 0; i < 40; ++i) b.u32(9).u64(1);
  b.u32(4).u64(0);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("nesting deeper than 16"), HasSubstr("'deep'"),
                                   HasSubstr("offset")));
}

TEST(GgufErrors, UnknownValueType) {
  Bytes b;
  b.header(0, 1).str("k").u32(13).u32(0);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("unknown metadata value type 13"),
                                   HasSubstr(At(33)), HasSubstr("'k'")));
  Bytes a;
  a.header(0, 1).str("k").u32(9).u32(99).u64(0);
  EXPECT_THAT(ParseError(a), AllOf(HasSubstr("unknown array element type 99"),
                                   HasSubstr(At(37))));
}

TEST(GgufErrors, DuplicateKey) {
  Bytes b;
  b.header(0, 2).kv_u32("dup", 1).kv_u32("dup", 2);
  // first at 24, second at 24 + 11 + 4 + 4 = 43
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("duplicate metadata key 'dup'"), HasSubstr(At(43)),
                                   HasSubstr("first at offset 24")));
}

TEST(GgufErrors, DuplicateTensorName) {
  Bytes b;
  b.header(2, 0).tensor("w", {8}, 0, 0).tensor("w", {8}, 0, 32).pad(32).zeros(64);
  // first info at 24 (9 + 4 + 8 + 4 + 8 = 33 bytes), second at 57
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("duplicate tensor name 'w'"), HasSubstr(At(57)),
                                   HasSubstr("first at offset 24")));
}

TEST(GgufErrors, UnknownTensorType) {
  Bytes b;
  b.header(1, 0).tensor("blk.0.w", {32}, 31, 0).pad(32).zeros(64);
  // info at 24: name 8+7, n_dims 4, ne 8 -> type at 51
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 'blk.0.w'"), HasSubstr("unknown ggml type id 31"),
                                   HasSubstr(At(51)), HasSubstr("info at offset 24")));
}

TEST(GgufErrors, Ne0NotMultipleOfBlockSize) {
  Bytes b;
  b.header(1, 0).tensor("q", {100, 2}, 12, 0).pad(32).zeros(1024);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 'q' (info at offset 24)"),
                                   HasSubstr("ne0 = 100 is not a multiple of the Q4_K block size 256")));
}

TEST(GgufErrors, ShapeElementCountOverflows) {
  Bytes b;
  b.header(1, 0).tensor("big", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0).pad(32).zeros(32);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 'big' (info at offset 24)"),
                                   HasSubstr("more elements than fit in 64 bits")));
}

TEST(GgufErrors, ShapeByteSizeOverflows) {
  Bytes b;
  b.header(1, 0).tensor("big", {uint64_t{1} << 62}, 0, 0).pad(32).zeros(32);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 'big' (info at offset 24)"),
                                   HasSubstr("byte size of shape [4611686018427387904] of F32 "
                                             "overflows 64 bits")));
}

TEST(GgufErrors, NegativeDimension) {
  Bytes b;
  b.header(1, 0).tensor("neg", {~uint64_t{0}}, 0, 0).pad(32).zeros(32);
  // info at 24: name 8+3, n_dims 4 -> ne0 at 39
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 'neg'"), HasSubstr("does not fit int64"),
                                   HasSubstr(At(39))));
}

TEST(GgufErrors, TensorRunsPastEndOfFile) {
  Bytes b;
  b.header(1, 0).tensor("t", {64}, 0, 0).pad(32).zeros(100);  // needs 256 bytes
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 't' (info at offset 24)"),
                                   HasSubstr("data [0, 0 + 256) at file offset 64"),
                                   HasSubstr("runs past the end of the data section (100 bytes")));
}

TEST(GgufErrors, DataSectionStartsPastEndOfFile) {
  Bytes b;
  b.header(1, 0).tensor("t", {8}, 0, 0);  // infos end at 57, data would start at 64
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("truncated file"),
                                   HasSubstr("data section starts at offset 64"),
                                   HasSubstr("tensor 't'")));
}

TEST(GgufErrors, MisalignedTensorOffset) {
  Bytes b;
  b.header(1, 0).tensor("t", {8}, 0, 16).pad(32).zeros(64);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 't' (info at offset 24)"),
                                   HasSubstr("data offset 16 is not a multiple of the alignment 32")));
}

TEST(GgufErrors, MisalignedWithCustomAlignment) {
  Bytes b;
  b.header(1, 1).kv_u32("general.alignment", 64).tensor("t", {8}, 0, 32).pad(64).zeros(128);
  EXPECT_THAT(ParseError(b), HasSubstr("data offset 32 is not a multiple of the alignment 64"));
}

TEST(GgufErrors, OverlappingTensors) {
  Bytes b;
  b.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {16}, 0, 32).pad(32).zeros(128);
  // a: [0, 64), b: [32, 96); b's info at 57
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 'b' (info at offset 57): data [32, 96) overlaps"),
                                   HasSubstr("tensor 'a' (info at offset 24) data [0, 64)")));
}

TEST(GgufErrors, TooManyDims) {
  Bytes b;
  b.header(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).pad(32).zeros(32);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor 't' (info at offset 24)"),
                                   HasSubstr("n_dims = 5 at offset 33, at most 4")));
}

TEST(GgufErrors, AbsurdTensorCount) {
  Bytes b;
  b.header(uint64_t{1} << 50, 0).zeros(100);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("tensor_count 1125899906842624 at offset 8 is absurd"),
                                   HasSubstr("100 bytes remain")));
}

TEST(GgufErrors, AbsurdKvCount) {
  Bytes b;
  b.header(0, ~uint64_t{0}).zeros(10);
  EXPECT_THAT(ParseError(b),
              AllOf(HasSubstr("metadata_kv_count 18446744073709551615 at offset 16 is absurd")));
}

TEST(GgufErrors, AlignmentNotPowerOfTwo) {
  for (uint32_t a : {0u, 3u, 48u}) {
    Bytes b;
    b.header(0, 1).kv_u32("general.alignment", a);
    // key at 24 (8+17), type at 49, value at 53
    EXPECT_THAT(ParseError(b), AllOf(HasSubstr("general.alignment = " + std::to_string(a)),
                                     HasSubstr(At(53)), HasSubstr("not a nonzero power of two")));
  }
  // A power of two, but absurd (found by the fuzzer: the writer's round trip padded 1 GiB).
  Bytes big;
  big.header(0, 1).kv_u32("general.alignment", 1u << 30);
  EXPECT_THAT(ParseError(big), AllOf(HasSubstr("general.alignment = 1073741824"),
                                     HasSubstr(At(53)), HasSubstr("absurd (limit 1048576 bytes)")));
  Bytes w;
  w.header(0, 1).str("general.alignment").u32(10).u64(32);
  EXPECT_THAT(ParseError(w), AllOf(HasSubstr("general.alignment at offset 24 has type u64"),
                                   HasSubstr("expected u32")));
}

TEST(GgufErrors, BoolOutOfRange) {
  Bytes b;
  b.header(0, 1).str("flag").u32(7).u8(2);
  EXPECT_THAT(ParseError(b), AllOf(HasSubstr("bool value 2"), HasSubstr(At(40))));
}

// ------------------------------------------------------------------------ writer round trip

Value Nested() {
  // array of arrays: [[1, 2], [], [3]] as i32, and [["a"], ["b", "c"]] as strings
  return Value::Array(ValueType::ARRAY,
                      {Value::I32Array({1, 2}), Value::I32Array({}), Value::I32Array({3})});
}

std::vector<KeyValue> AllTypes() {
  return {
      {"t.u8", Value::U8(250)},
      {"t.i8", Value::I8(-100)},
      {"t.u16", Value::U16(65000)},
      {"t.i16", Value::I16(-30000)},
      {"t.u32", Value::U32(4000000000u)},
      {"t.i32", Value::I32(-2000000000)},
      {"t.f32", Value::F32(1.5f)},
      {"t.bool", Value::Bool(true)},
      {"t.string", Value::Str(std::string("h\xc3\xa9llo\0x", 8))},
      {"t.u64", Value::U64(~uint64_t{0})},
      {"t.i64", Value::I64(std::numeric_limits<int64_t>::min())},
      {"t.f64", Value::F64(-2.25e300)},
      {"t.arr.str", Value::StrArray({"a", "", "<|im_start|>"})},
      {"t.arr.f32", Value::F32Array({0.5f, -1.0f})},
      {"t.arr.empty", Value::Array(ValueType::U8, {})},
      {"t.arr.bool", Value::Array(ValueType::BOOL, {Value::Bool(false), Value::Bool(true)})},
      {"t.arr.nested", Nested()},
      {"t.arr.nested_str",
       Value::Array(ValueType::ARRAY, {Value::StrArray({"a"}), Value::StrArray({"b", "c"})})},
  };
}

void ExpectSameValue(const Value& a, const Value& b, const std::string& key) {
  ASSERT_EQ(a.type, b.type) << key;
  EXPECT_EQ(a.u, b.u) << key;
  EXPECT_EQ(a.i, b.i) << key;
  if (a.type == ValueType::F32) {
    EXPECT_EQ(static_cast<float>(a.f), static_cast<float>(b.f)) << key;
  } else {
    EXPECT_EQ(a.f, b.f) << key;
  }
  EXPECT_EQ(a.s, b.s) << key;
  if (a.type == ValueType::ARRAY) {
    EXPECT_EQ(a.elem_type, b.elem_type) << key;
    ASSERT_EQ(a.array.size(), b.array.size()) << key;
    for (size_t i = 0; i < a.array.size(); ++i) ExpectSameValue(a.array[i], b.array[i], key);
  }
}

struct TensorSpec {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;
};

const std::vector<TensorSpec>& Specs() {
  static const std::vector<TensorSpec> s = {
      {"token_embd.weight", GgmlType::Q4_K, {256, 3}},
      {"norm", GgmlType::F32, {7}},
      {"h16", GgmlType::F16, {5, 3}},
      {"b16", GgmlType::BF16, {3, 1, 1, 2}},
      {"q8", GgmlType::Q8_0, {64, 2, 2}},
      {"q6", GgmlType::Q6_K, {512}},
      {"scalar", GgmlType::F32, {}},
      {"empty", GgmlType::F32, {0, 4}},
  };
  return s;
}

uint8_t Pattern(size_t tensor, uint64_t i) { return static_cast<uint8_t>(tensor * 31 + i * 7 + 1); }

Writer MakeWriter(uint32_t alignment) {
  Writer w(alignment);
  for (auto& kv : AllTypes()) w.add_kv(kv.key, kv.value);
  for (size_t k = 0; k < Specs().size(); ++k) {
    const auto& s = Specs()[k];
    absl::Status st = w.add_tensor(s.name, s.type, s.ne, [k](uint8_t* dst, uint64_t n) {
      for (uint64_t i = 0; i < n; ++i) dst[i] = Pattern(k, i);
      return absl::OkStatus();
    });
    EXPECT_TRUE(st.ok()) << st;
  }
  return w;
}

void CheckRoundTrip(const File& f, uint32_t alignment) {
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(f.data_offset() % alignment, 0u);
  auto want = AllTypes();
  size_t extra = alignment != 32 ? 1 : 0;  // general.alignment added by the writer
  ASSERT_EQ(f.metadata().size(), want.size() + extra);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(f.metadata()[i + extra].key, want[i].key);
    const Value* v = f.find(want[i].key);
    ASSERT_NE(v, nullptr) << want[i].key;
    ExpectSameValue(*v, want[i].value, want[i].key);
  }
  ASSERT_EQ(f.tensors().size(), Specs().size());
  for (size_t k = 0; k < Specs().size(); ++k) {
    const auto& s = Specs()[k];
    const TensorInfo* t = f.find_tensor(s.name);
    ASSERT_NE(t, nullptr) << s.name;
    EXPECT_EQ(t->type, s.type);
    EXPECT_EQ(t->ne, s.ne);
    EXPECT_EQ(t->offset % alignment, 0u) << s.name;
    const TypeInfo* ti = type_info(s.type);
    EXPECT_EQ(t->size, static_cast<uint64_t>(t->n_elements() / ti->block_size * ti->type_size));
    const uint8_t* d = f.tensor_data(*t);
    for (uint64_t i = 0; i < t->size; ++i) {
      ASSERT_EQ(d[i], Pattern(k, i)) << s.name << " byte " << i;
    }
  }
}

TEST(GgufWriter, RoundTripBufferAllTypesAndAlignments) {
  for (uint32_t alignment : {1u, 8u, 32u, 64u, 4096u}) {
    SCOPED_TRACE(alignment);
    Writer w = MakeWriter(alignment);
    auto buf = w.write_to_buffer();
    ASSERT_TRUE(buf.ok()) << buf.status();
    auto f = File::FromBuffer(buf->data(), buf->size());
    ASSERT_TRUE(f.ok()) << f.status();
    CheckRoundTrip(**f, alignment);
    // The writer's announced offsets are the ones read back.
    for (size_t k = 0; k < w.tensors().size(); ++k) {
      EXPECT_EQ(w.tensors()[k].offset, (*f)->tensors()[k].offset);
      EXPECT_EQ(w.tensors()[k].size, (*f)->tensors()[k].size);
    }
  }
}

TEST(GgufWriter, RoundTripFile) {
  const std::string path =
      std::filesystem::temp_directory_path() / ("gguf_test_" + std::to_string(getpid()) + ".gguf");
  Writer w = MakeWriter(64);
  ASSERT_TRUE(w.write(path).ok());
  auto buf = w.write_to_buffer();
  ASSERT_TRUE(buf.ok());
  EXPECT_EQ(std::filesystem::file_size(path), buf->size());
  {
    auto f = File::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ((*f)->path(), path);
    CheckRoundTrip(**f, 64);
    EXPECT_EQ((*f)->data_offset() + (*f)->data_size(), buf->size());
  }
  std::filesystem::remove(path);
}

TEST(GgufWriter, FailingProducerLeavesNoFile) {
  const std::string path =
      std::filesystem::temp_directory_path() / ("gguf_fail_" + std::to_string(getpid()) + ".gguf");
  Writer w;
  ASSERT_TRUE(w.add_tensor("t", GgmlType::F32, {4}, [](uint8_t*, uint64_t) {
                 return absl::DataLossError("producer broke");
               }).ok());
  absl::Status st = w.write(path);
  EXPECT_THAT(std::string(st.message()), AllOf(HasSubstr("producer broke"), HasSubstr("'t'")));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(GgufWriter, RejectsBadInput) {
  Writer w;
  EXPECT_THAT(std::string(w.add_tensor_bytes("q", GgmlType::Q4_K, {100}, {}).message()),
              HasSubstr("ne0 = 100 is not a multiple of the Q4_K block size 256"));
  EXPECT_THAT(std::string(w.add_tensor_bytes("d", GgmlType::F32, {1, 1, 1, 1, 1}, {}).message()),
              HasSubstr("5 dimensions"));
  ASSERT_TRUE(w.add_tensor_bytes("a", GgmlType::F32, {1}, {0, 0, 0, 0}).ok());
  EXPECT_THAT(std::string(w.add_tensor_bytes("a", GgmlType::F32, {1}, {0, 0, 0, 0}).message()),
              HasSubstr("duplicate tensor name 'a'"));
  ASSERT_TRUE(w.add_tensor_bytes("short", GgmlType::F32, {2}, {0}).ok());
  EXPECT_THAT(std::string(w.write_to_buffer().status().message()),
              HasSubstr("1 bytes given, type and shape need 8"));

  Writer k;
  k.add_kv("x", Value::U32(1));
  k.add_kv("x", Value::U32(2));
  EXPECT_THAT(std::string(k.write_to_buffer().status().message()),
              HasSubstr("duplicate metadata key 'x'"));
  Writer m;
  m.add_kv("mixed", Value::Array(ValueType::I32, {Value::I32(1), Value::F32(2)}));
  EXPECT_THAT(std::string(m.write_to_buffer().status().message()),
              HasSubstr("element 1 has type f32"));
  Writer r;
  Value big = Value::U8(0);
  big.u = 300;
  r.add_kv("big", big);
  EXPECT_THAT(std::string(r.write_to_buffer().status().message()), HasSubstr("does not fit u8"));
  Writer a(48);
  EXPECT_THAT(std::string(a.write_to_buffer().status().message()),
              HasSubstr("alignment 48 is not a nonzero power of two"));
}

// ------------------------------------------------------------------------ FromParts

TEST(GgufFromParts, ChecksTheTensorTable) {
  std::vector<uint8_t> data(256, 0);
  auto make = [&](std::vector<TensorInfo> ts, uint64_t size) {
    return File::FromParts({{"general.architecture", Value::Str("qwen35")}}, std::move(ts),
                           data.data(), size, nullptr);
  };
  TensorInfo a{"a", GgmlType::F32, {16}, 0, 0};
  TensorInfo b{"b", GgmlType::Q8_0, {32, 2}, 64, 0};
  auto ok = make({a, b}, data.size());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->tensors()[1].size, 68u);
  EXPECT_EQ((*ok)->tensor_data((*ok)->tensors()[1]), data.data() + 64);
  EXPECT_EQ(*(*ok)->get_string("general.architecture"), "qwen35");

  TensorInfo mis = b;
  mis.offset = 65;
  EXPECT_THAT(std::string(make({a, mis}, 256).status().message()),
              AllOf(HasSubstr("tensor 'b' (#1)"), HasSubstr("not a multiple of the alignment 32")));
  TensorInfo over = b;
  over.offset = 32;
  EXPECT_THAT(std::string(make({a, over}, 256).status().message()), HasSubstr("overlaps"));
  EXPECT_THAT(std::string(make({a, b}, 100).status().message()),
              HasSubstr("runs past the end of the data section (100 bytes"));
  TensorInfo wrong = a;
  wrong.size = 12;
  EXPECT_THAT(std::string(make({wrong}, 256).status().message()),
              HasSubstr("size 12 given, but type F32 and shape [16] make 64 bytes"));
  TensorInfo unk = a;
  unk.type = static_cast<GgmlType>(33);
  EXPECT_THAT(std::string(make({unk}, 256).status().message()), HasSubstr("unknown ggml type id 33"));
  EXPECT_THAT(std::string(make({a, a}, 256).status().message()), HasSubstr("duplicate tensor name 'a'"));
}

// ------------------------------------------------------------------------ typed getters

TEST(GgufGetters, TypesAndDefaults) {
  Writer w;
  for (auto& kv : AllTypes()) w.add_kv(kv.key, kv.value);
  auto buf = w.write_to_buffer();
  ASSERT_TRUE(buf.ok());
  auto f = File::FromBuffer(buf->data(), buf->size());
  ASSERT_TRUE(f.ok());
  const File& g = **f;
  EXPECT_EQ(*g.get_uint("t.u8"), 250u);
  EXPECT_EQ(*g.get_uint("t.u32"), 4000000000u);
  EXPECT_EQ(*g.get_int("t.i16"), -30000);
  EXPECT_EQ(*g.get_int("t.u16"), 65000);
  EXPECT_EQ(*g.get_uint("t.u64"), ~uint64_t{0});
  EXPECT_FALSE(g.get_int("t.u64").ok());  // does not fit int64
  EXPECT_THAT(std::string(g.get_uint("t.i8").status().message()), HasSubstr("negative"));
  EXPECT_FLOAT_EQ(*g.get_float("t.f32"), 1.5);
  EXPECT_EQ(*g.get_float("t.f64"), -2.25e300);
  EXPECT_TRUE(*g.get_bool("t.bool"));
  EXPECT_EQ(g.get_string("t.string")->size(), 8u);
  EXPECT_EQ(g.get_uint("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(g.get_string("t.u32").status().message()),
              AllOf(HasSubstr("'t.u32'"), HasSubstr("type u32"), HasSubstr("wanted string")));
  EXPECT_EQ(*g.get_uint_or("nope", 5), 5u);
  EXPECT_EQ(*g.get_float_or("nope", 0.25), 0.25);
  EXPECT_FALSE(g.get_uint_or("t.string", 5).ok());
  EXPECT_EQ(g.find("t.arr.nested")->array[0].array[1].i, 2);
}

// ------------------------------------------------------------------------ golden models

TEST(GgufGolden, IndependentWriterModelsMatchTensorsTxt) {
  const std::filesystem::path golden = std::filesystem::path(RS_SHARED_DIR) / "golden";
  if (!std::filesystem::is_directory(golden)) {
    GTEST_SKIP() << "no golden models at " << golden << " (shared dir absent)";
  }
  int checked = 0;
  for (const auto& dir : std::filesystem::directory_iterator(golden)) {
    const auto model = dir.path() / "model.gguf";
    const auto listing = dir.path() / "tensors.txt";
    if (!std::filesystem::exists(model) || !std::filesystem::exists(listing)) continue;
    SCOPED_TRACE(dir.path().string());
    auto f = File::Open(model.string());
    ASSERT_TRUE(f.ok()) << f.status();
    std::ifstream in(listing);
    std::string line;
    std::vector<std::string> keys;
    size_t n_keys_declared = 0, n_tensors = 0;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string kind;
      ls >> kind;
      if (kind == "keys") {
        ls >> n_keys_declared;
      } else if (kind == "key") {
        std::string k;
        ls >> k;
        keys.push_back(k);
        EXPECT_NE((*f)->find(k), nullptr) << "key " << k;
      } else if (kind == "tensor") {
        std::string name, type, shape;
        ls >> name >> type >> shape;
        const TensorInfo* t = (*f)->find_tensor(name);
        ASSERT_NE(t, nullptr) << "tensor " << name;
        EXPECT_STREQ(type_name(t->type), type.c_str()) << name;
        std::vector<int64_t> ne;
        std::stringstream ss(shape);
        for (std::string d; std::getline(ss, d, ',');) ne.push_back(std::stoll(d));
        EXPECT_EQ(t->ne, ne) << name;
        ++n_tensors;
      }
    }
    EXPECT_EQ(keys.size(), n_keys_declared);
    // The listing names every user key; the file may hold general.alignment besides them.
    size_t file_keys = (*f)->metadata().size() - ((*f)->find("general.alignment") ? 1 : 0);
    EXPECT_EQ(file_keys, keys.size());
    EXPECT_EQ((*f)->tensors().size(), n_tensors);
    EXPECT_GT(n_tensors, 0u);
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace rs::gguf
