// A RowMemory for tests of the device-rows path without a GPU (parallel_test, distributed_test).
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "parallel/moe_dispatch.h"

namespace rs::par {

// A RowMemory standing in for a GPU's: its own arena, and every pointer a call gets must lie in
// it (a host pointer handed to the "device" side, as a wrong model path would, fails the test).
// The data moves by memcpy, so results are bit-exact.
class FencedRowMemory : public RowMemory {
 public:
  explicit FencedRowMemory(size_t floats = 1 << 20) : arena_(floats, -7.f) {}  // poisoned
  float* Alloc(size_t floats) {
    const size_t need = (floats + 63) / 64 * 64;
    if (used_ + need > arena_.size()) {
      ADD_FAILURE() << "FencedRowMemory: arena of " << arena_.size() << " floats is full";
      return nullptr;
    }
    float* p = arena_.data() + used_;
    used_ += need;
    return p;
  }
  absl::StatusOr<void*> Scratch(int slot, size_t bytes) override {
    if (slot < 0 || slot > 7) return absl::InvalidArgumentError("slot");
    if (cap_[slot] < bytes) {  // a new block: a resize moves the data, as on a device
      scratch_[slot] = Alloc((bytes + 3) / 4);
      if (!scratch_[slot]) return absl::ResourceExhaustedError("arena full");
      cap_[slot] = (bytes + 3) / 4 * 4;
    }
    return static_cast<void*>(scratch_[slot]);
  }
  absl::Status Upload(void* dst, const void* src, size_t bytes) override {
    if (!Mine(dst, bytes) || Mine(src, 1)) return Bad("upload");
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status Download(void* dst, const void* src, size_t bytes) override {
    if (!Mine(src, bytes) || Mine(dst, 1)) return Bad("download");
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status GatherRows(float* dst, const float* src, const int32_t* rows, size_t n,
                          size_t width) override {
    if (!Mine(dst, n * width * 4) || Mine(rows, 1)) return Bad("gather");
    for (size_t i = 0; i < n; ++i) {
      if (!Mine(src + rows[i] * width, width * 4)) return Bad("gather source");
      std::memcpy(dst + i * width, src + rows[i] * width, width * 4);
    }
    return absl::OkStatus();
  }
  const char* name() const override { return "fenced"; }
  bool Mine(const void* p, size_t bytes) const {
    const char* a = reinterpret_cast<const char*>(arena_.data());
    const char* c = static_cast<const char*>(p);
    return c >= a && c + bytes <= a + arena_.size() * 4;
  }

 private:
  absl::Status Bad(const char* what) {
    ADD_FAILURE() << "FencedRowMemory: " << what << " with a pointer on the wrong side";
    return absl::InternalError(what);
  }
  std::vector<float> arena_;
  size_t used_ = 0;
  float* scratch_[8] = {};
  size_t cap_[8] = {};
};

}  // namespace rs::par
