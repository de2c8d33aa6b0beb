// GGUF v2/v3 reader (mmap) and writer. Layout: ../shared/spec/qwen35.md §6.1.
//
// The reader validates everything it reads and never trusts a length from the file: every
// malformed input becomes an absl::Status naming the problem and the byte offset.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/formats.h"

namespace rs::gguf {

enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8,
  ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* value_type_name(ValueType t);  // "u8", ..., "string", "array"

// One metadata value. Scalars live in the matching member; arrays hold their elements in
// `array` (each element a Value of type `elem_type`; nested arrays allowed).
struct Value {
  ValueType type = ValueType::U8;
  uint64_t u = 0;      // U8 U16 U32 U64 BOOL
  int64_t i = 0;       // I8 I16 I32 I64
  double f = 0;        // F32 F64
  std::string s;       // STRING
  ValueType elem_type = ValueType::U8;  // ARRAY
  std::vector<Value> array;              // ARRAY

  static Value U8(uint8_t v);
  static Value I8(int8_t v);
  static Value U16(uint16_t v);
  static Value I16(int16_t v);
  static Value U32(uint32_t v);
  static Value I32(int32_t v);
  static Value U64(uint64_t v);
  static Value I64(int64_t v);
  static Value F32(float v);
  static Value F64(double v);
  static Value Bool(bool v);
  static Value Str(std::string v);
  static Value Array(ValueType elem, std::vector<Value> items);
  static Value StrArray(const std::vector<std::string>& items);
  static Value I32Array(const std::vector<int32_t>& items);
  static Value F32Array(const std::vector<float>& items);

  bool is_integer() const;                    // any of the 8 integer types or BOOL
  bool is_float() const { return type == ValueType::F32 || type == ValueType::F64; }
};

struct KeyValue {
  std::string key;
  Value value;
};

struct TensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;   // ggml order: ne[0] contiguous
  uint64_t offset = 0;       // relative to the data section
  uint64_t size = 0;         // bytes
  int64_t n_elements() const;
};

class File {
 public:
  // mmaps the file read-only and parses header, metadata and tensor infos.
  static absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path);
  // Parses a GGUF image in memory (tests, the fuzzer). `keepalive` owns the bytes.
  static absl::StatusOr<std::unique_ptr<File>> FromBuffer(const uint8_t* data, size_t size,
                                                          std::shared_ptr<void> keepalive = {});
  // A model assembled in memory without a file (--synthetic): metadata, tensor table and a
  // data section at `data_base` (offsets relative to it). Checked like a parsed file.
  static absl::StatusOr<std::unique_ptr<File>> FromParts(std::vector<KeyValue> metadata,
                                                         std::vector<TensorInfo> tensors,
                                                         const uint8_t* data_base,
                                                         uint64_t data_size,
                                                         std::shared_ptr<void> keepalive);
  ~File();

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the data section
  uint64_t data_size() const { return data_size_; }

  const std::vector<KeyValue>& metadata() const { return kv_; }
  const Value* find(std::string_view key) const;
  // Typed getters: NotFound if absent, InvalidArgument (naming key, wanted and found type)
  // if the type does not fit. Integers accept any integer type that holds the value;
  // floats accept F32 or F64.
  absl::StatusOr<uint64_t> get_uint(std::string_view key) const;
  absl::StatusOr<int64_t> get_int(std::string_view key) const;
  absl::StatusOr<double> get_float(std::string_view key) const;
  absl::StatusOr<bool> get_bool(std::string_view key) const;
  absl::StatusOr<std::string> get_string(std::string_view key) const;
  // With a default when absent (type errors still reported).
  absl::StatusOr<uint64_t> get_uint_or(std::string_view key, uint64_t dflt) const;
  absl::StatusOr<double> get_float_or(std::string_view key, double dflt) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;
  const uint8_t* tensor_data(const TensorInfo& t) const { return data_base_ + t.offset; }

 private:
  File() = default;
  absl::Status Parse();          // parses buf_[0, size_)
  absl::Status Index();          // builds the lookup maps, checks duplicates/overlaps
  // Checks one tensor info (type, dims, shape, byte size, alignment, bounds) and sets t.size.
  absl::Status CheckTensor(TensorInfo& t, size_t index) const;
  std::string Where(const std::vector<uint64_t>& offsets, size_t index) const;

  std::string path_;
  const uint8_t* buf_ = nullptr;
  size_t size_ = 0;
  void* map_ = nullptr;          // munmap on destruction when set
  size_t map_size_ = 0;
  std::shared_ptr<void> keepalive_;
  uint32_t version_ = 3;
  uint32_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  uint64_t data_size_ = 0;
  const uint8_t* data_base_ = nullptr;
  std::vector<KeyValue> kv_;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> kv_index_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
  // File offsets of each key / tensor info (parsed files only; empty for FromParts).
  std::vector<uint64_t> kv_offsets_;
  std::vector<uint64_t> tensor_offsets_;
};

// Streams a GGUF v3 file: metadata and tensor infos first, then each tensor's bytes from a
// producer callback (so multi-GB models are written without holding them in memory).
class Writer {
 public:
  // Fills `dst` (exactly `size` bytes: the tensor's data) for tensor `index`.
  using Producer = std::function<absl::Status(uint8_t* dst, uint64_t size)>;

  explicit Writer(uint32_t alignment = 32) : alignment_(alignment) {}
  void add_kv(std::string key, Value v);
  // The tensor's byte size follows from type and shape; data comes from `producer`.
  absl::Status add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne,
                          Producer producer);
  absl::Status add_tensor_bytes(std::string name, GgmlType type, std::vector<int64_t> ne,
                                std::vector<uint8_t> bytes);
  // Tensor infos with offsets as they will be written.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::vector<KeyValue>& metadata() const { return kv_; }
  absl::Status write(const std::string& path) const;
  absl::StatusOr<std::vector<uint8_t>> write_to_buffer() const;  // small files, tests

 private:
  uint32_t alignment_;
  uint64_t next_offset_ = 0;
  std::vector<KeyValue> kv_;
  std::vector<TensorInfo> tensors_;
  std::vector<Producer> producers_;
};

}  // namespace rs::gguf
