// A free list of reusable buffers (the CUDA model's sequence-state buffers): allocated once at
// load and recycled, so starting, keeping and dropping sequences allocates nothing. Take gives
// the smallest free buffer of at least `bytes`; Give puts one back. Thread-safe. Buf: movable,
// with size() in bytes.
#pragma once

#include <cstddef>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

namespace rs {

template <class Buf>
class BufferPool {
 public:
  std::optional<Buf> Take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end()) return std::nullopt;
    Buf b = std::move(it->second);
    free_.erase(it);
    return b;
  }
  void Give(Buf b) {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t n = b.size();
    free_.emplace(n, std::move(b));
  }
  size_t free_count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return free_.size();
  }

 private:
  mutable std::mutex mu_;
  std::multimap<size_t, Buf> free_;
};

}  // namespace rs
