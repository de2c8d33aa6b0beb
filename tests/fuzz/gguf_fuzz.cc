// libFuzzer target for the GGUF reader (File::FromBuffer). Built and run by
// tests/fuzz_gguf_test.sh with -fsanitize=fuzzer,address,undefined.
//
// Oracle: no crash, no sanitizer report, no unbounded allocation (-rss_limit_mb); and every
// file the reader accepts must survive a round trip through the writer: same keys and values,
// same tensor names, types, shapes and bytes, and every tensor's bytes readable in bounds.
//
// Seed mode: with RS_GGUF_WRITE_SEEDS=DIR in the environment the binary writes a few small
// valid GGUF files into DIR (through our writer) and exits; the test script uses them as the
// seed corpus, so no binary seeds are kept in the repository.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "worker/gguf.h"

namespace {

using rs::GgmlType;
using rs::gguf::File;
using rs::gguf::Value;
using rs::gguf::ValueType;
using rs::gguf::Writer;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "gguf_fuzz: %s\n", what.c_str());
  std::abort();
}

bool same_value(const Value& a, const Value& b) {
  if (a.type != b.type || a.u != b.u || a.i != b.i || a.s != b.s) return false;
  if (a.type == ValueType::F32 || a.type == ValueType::F64) {
    // Bitwise for floats (NaN payloads included) after the f32 narrowing the format implies.
    if (a.type == ValueType::F32) {
      float x = static_cast<float>(a.f), y = static_cast<float>(b.f);
      if (std::memcmp(&x, &y, sizeof x) != 0) return false;
    } else if (std::memcmp(&a.f, &b.f, sizeof a.f) != 0) {
      return false;
    }
  }
  if (a.type != ValueType::ARRAY) return true;
  if (a.elem_type != b.elem_type || a.array.size() != b.array.size()) return false;
  for (size_t i = 0; i < a.array.size(); ++i)
    if (!same_value(a.array[i], b.array[i])) return false;
  return true;
}

void check_round_trip(const File& f) {
  Writer w(f.alignment());
  for (const auto& kv : f.metadata()) w.add_kv(kv.key, kv.value);
  for (const auto& t : f.tensors()) {
    const uint8_t* src = f.tensor_data(t);
    absl::Status s = w.add_tensor(t.name, t.type, t.ne, [src](uint8_t* dst, uint64_t n) {
      if (n) std::memcpy(dst, src, n);
      return absl::OkStatus();
    });
    if (!s.ok()) die("writer refused a tensor the reader accepted: " + std::string(s.message()));
  }
  auto buf = w.write_to_buffer();
  if (!buf.ok()) die("writer failed on an accepted file: " + std::string(buf.status().message()));
  auto g = File::FromBuffer(buf->data(), buf->size());
  if (!g.ok()) die("reader refused the writer's output: " + std::string(g.status().message()));
  const File& h = **g;
  if (h.alignment() != f.alignment()) die("alignment changed in the round trip");
  // The writer adds general.alignment when the alignment is not 32 and the key is absent.
  size_t extra = h.metadata().size() - f.metadata().size();
  if (extra > 1) die("metadata grew by more than one key");
  for (const auto& kv : f.metadata()) {
    const Value* v = h.find(kv.key);
    if (!v || !same_value(*v, kv.value)) die("metadata value changed: " + kv.key);
  }
  if (h.tensors().size() != f.tensors().size()) die("tensor count changed");
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const auto& a = f.tensors()[i];
    const auto& b = h.tensors()[i];
    if (a.name != b.name || a.type != b.type || a.ne != b.ne || a.size != b.size)
      die("tensor info changed: " + a.name);
    if (a.size && std::memcmp(f.tensor_data(a), h.tensor_data(b), a.size) != 0)
      die("tensor bytes changed: " + a.name);
  }
}

void write_file(const std::string& dir, const std::string& name, const std::vector<uint8_t>& b) {
  const std::string path = dir + "/" + name;
  FILE* fp = std::fopen(path.c_str(), "wb");
  if (!fp || std::fwrite(b.data(), 1, b.size(), fp) != b.size() || std::fclose(fp) != 0)
    die("cannot write seed " + path);
}

absl::Status fill(uint8_t* dst, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(i * 37 + 11);
  return absl::OkStatus();
}

void write_seeds(const std::string& dir) {
  auto emit = [&](const std::string& name, const Writer& w) {
    auto b = w.write_to_buffer();
    if (!b.ok()) die("seed " + name + ": " + std::string(b.status().message()));
    write_file(dir, name, *b);
  };
  {  // header only
    Writer w;
    emit("empty.gguf", w);
  }
  {  // every value type, nested arrays, arrays of strings
    Writer w;
    w.add_kv("general.architecture", Value::Str("qwen35"));
    w.add_kv("a.u8", Value::U8(7));
    w.add_kv("a.i8", Value::I8(-7));
    w.add_kv("a.u16", Value::U16(700));
    w.add_kv("a.i16", Value::I16(-700));
    w.add_kv("a.u32", Value::U32(70000));
    w.add_kv("a.i32", Value::I32(-70000));
    w.add_kv("a.u64", Value::U64(7000000000ull));
    w.add_kv("a.i64", Value::I64(-7000000000ll));
    w.add_kv("a.f32", Value::F32(0.5f));
    w.add_kv("a.f64", Value::F64(0.25));
    w.add_kv("a.bool", Value::Bool(true));
    w.add_kv("tokenizer.ggml.tokens", Value::StrArray({"<|im_start|>", "a", "b", "\xc4\xa0"}));
    w.add_kv("tokenizer.ggml.token_type", Value::I32Array({3, 1, 1, 1}));
    w.add_kv("n", Value::Array(ValueType::ARRAY, {Value::I32Array({1, 2}), Value::I32Array({})}));
    (void)w.add_tensor("w.f32", GgmlType::F32, {4, 2}, fill);
    (void)w.add_tensor("w.f16", GgmlType::F16, {3}, fill);
    emit("values.gguf", w);
  }
  {  // quantised tensors, alignment 64
    Writer w(64);
    w.add_kv("general.name", Value::Str("seed"));
    (void)w.add_tensor("q4k", GgmlType::Q4_K, {256}, fill);
    (void)w.add_tensor("q8", GgmlType::Q8_0, {32, 2}, fill);
    (void)w.add_tensor("q6k", GgmlType::Q6_K, {256}, fill);
    (void)w.add_tensor("bf16", GgmlType::BF16, {2, 2, 2, 2}, fill);
    (void)w.add_tensor("empty", GgmlType::F32, {0}, fill);
    emit("quant.gguf", w);
  }
  {  // version 2 (same layout): patch the version field of a small file
    Writer w(8);
    w.add_kv("k", Value::U32(1));
    (void)w.add_tensor("t", GgmlType::I32, {2}, fill);
    auto b = w.write_to_buffer();
    if (!b.ok()) die("seed v2");
    (*b)[4] = 2;
    write_file(dir, "v2.gguf", *b);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("RS_GGUF_WRITE_SEEDS")) {
    write_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = File::FromBuffer(data, size);
  if (!f.ok()) {
    if (f.status().message().empty()) die("error without a message");
    return 0;
  }
  const File& g = **f;
  // Every tensor's first and last byte must lie inside the input (ASan checks the read).
  volatile uint8_t sink = 0;
  for (const auto& t : g.tensors()) {
    if (g.find_tensor(t.name) != &t) die("find_tensor mismatch: " + t.name);
    if (t.size) sink = sink + g.tensor_data(t)[0] + g.tensor_data(t)[t.size - 1];
  }
  for (const auto& kv : g.metadata()) {
    if (!g.find(kv.key)) die("find mismatch: " + kv.key);
    (void)g.get_uint(kv.key);
    (void)g.get_int(kv.key);
    (void)g.get_float(kv.key);
    (void)g.get_string(kv.key);
  }
  check_round_trip(g);
  return 0;
}
