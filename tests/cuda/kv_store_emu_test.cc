// The KV-cache store kernels (kernels/cuda/kv_store_kernel.cuh) built for the host and run
// through the SIMT emulator: each row lands at its position, byte for byte what the CPU
// reference conversion gives (quantize_row_ref: F32 copy, F16 round to nearest even, Q8_0
// blocks), K and V in one launch (grid y = 2), nothing written outside the stored rows; and a
// decode batch, each token into its own sequence's caches.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/kv_store_kernel.cuh"
#include "kernels/formats.h"

namespace rs::cuda::glue {
namespace {

struct Case {
  GgmlType type;
  int64_t n_tok, n;
};

// K and V of a's tokens in one launch (grid y = the pair), as cuda_glue.cu launches them.
std::string Launch(GgmlType type, const KvStoreArgs& a) {
  const unsigned blocks =
      static_cast<unsigned>((a.n_tok * a.n + kKvStoreThreads - 1) / kKvStoreThreads);
  const auto kernel = type == GgmlType::F32   ? kv_store_f32_kernel
                      : type == GgmlType::F16 ? kv_store_f16_kernel
                                              : kv_store_q8_kernel;
  return simt::launch({blocks, 2}, {kKvStoreThreads}, 0, kernel, a);
}

class KvStoreEmu : public ::testing::TestWithParam<Case> {};

TEST_P(KvStoreEmu, RowsAtTheirPositionsAsTheReference) {
  const Case c = GetParam();
  simt::set_order(simt::Order::kShuffled, 5);
  const size_t row = row_bytes(c.type, c.n);
  const size_t stride = row + 24;  // padding that must stay untouched
  const int64_t cap = 2 * c.n_tok + 3;
  std::mt19937 rng(static_cast<uint32_t>(c.n * 7 + c.n_tok));
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> k(c.n_tok * c.n), v(c.n_tok * c.n);
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  if (c.n >= 32)
    for (int64_t i = 0; i < 32; ++i) k[i] = 0.0f;  // an all-zero block: d = 0, q = 0
  std::vector<int64_t> pos(c.n_tok);
  for (int64_t t = 0; t < c.n_tok; ++t) pos[t] = cap - 1 - 2 * t;  // descending, with gaps
  std::vector<uint8_t> K(cap * stride, 0xAB), V(cap * stride, 0xCD);
  KvStoreArgs a;
  a.src[0] = k.data();
  a.src[1] = v.data();
  a.dst[0] = K.data();
  a.dst[1] = V.data();
  a.n_tok = c.n_tok;
  a.n = c.n;
  a.row_bytes = stride;
  a.pos = pos.data();
  ASSERT_EQ(Launch(c.type, a), "");
  std::vector<uint8_t> want(row);
  for (int which = 0; which < 2; ++which) {
    const std::vector<float>& src = which ? v : k;
    const std::vector<uint8_t>& cache = which ? V : K;
    const uint8_t fill = which ? 0xCD : 0xAB;
    std::vector<char> stored(cap, 0);
    for (int64_t t = 0; t < c.n_tok; ++t) {
      stored[pos[t]] = 1;
      quantize_row_ref(c.type, src.data() + t * c.n, want.data(), c.n);
      ASSERT_EQ(std::memcmp(cache.data() + pos[t] * stride, want.data(), row), 0)
          << type_name(c.type) << (which ? " V" : " K") << " token " << t;
      for (size_t b = row; b < stride; ++b)
        ASSERT_EQ(cache[pos[t] * stride + b], fill) << "padding written, token " << t;
    }
    for (int64_t r = 0; r < cap; ++r)
      if (!stored[r])
        for (size_t b = 0; b < stride; ++b)
          ASSERT_EQ(cache[r * stride + b], fill) << "row " << r << " written";
  }
}

// A decode batch (dst_tok): token t's K and V rows land at row pos[t] of its own caches, and
// nothing else of any cache is written.
TEST_P(KvStoreEmu, DecodeBatchEachTokenInItsOwnCache) {
  const Case c = GetParam();
  simt::set_order(simt::Order::kReverse, 0);
  const size_t row = row_bytes(c.type, c.n);
  const size_t stride = row + 8;
  const int64_t cap = 9;
  std::mt19937 rng(static_cast<uint32_t>(c.n * 5 + c.n_tok));
  std::normal_distribution<float> nd(0.0f, 1.5f);
  std::vector<float> k(c.n_tok * c.n), v(c.n_tok * c.n);
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  std::vector<int64_t> pos(c.n_tok);
  std::vector<std::vector<uint8_t>> K(c.n_tok), V(c.n_tok);
  std::vector<uint8_t*> kp(c.n_tok), vp(c.n_tok);
  for (int64_t t = 0; t < c.n_tok; ++t) {
    pos[t] = (3 * t + 1) % cap;  // each sequence at its own length
    K[t].assign(cap * stride, 0x11);
    V[t].assign(cap * stride, 0x22);
    kp[t] = K[t].data();
    vp[t] = V[t].data();
  }
  KvStoreArgs a;
  a.src[0] = k.data();
  a.src[1] = v.data();
  a.dst_tok[0] = kp.data();
  a.dst_tok[1] = vp.data();
  a.n_tok = c.n_tok;
  a.n = c.n;
  a.row_bytes = stride;
  a.pos = pos.data();
  ASSERT_EQ(Launch(c.type, a), "");
  std::vector<uint8_t> want(row);
  for (int which = 0; which < 2; ++which)
    for (int64_t t = 0; t < c.n_tok; ++t) {
      const std::vector<uint8_t>& cache = which ? V[t] : K[t];
      const uint8_t fill = which ? 0x22 : 0x11;
      quantize_row_ref(c.type, (which ? v : k).data() + t * c.n, want.data(), c.n);
      for (int64_t r = 0; r < cap; ++r) {
        if (r == pos[t]) {
          ASSERT_EQ(std::memcmp(cache.data() + r * stride, want.data(), row), 0)
              << (which ? "V" : "K") << " of token " << t;
          for (size_t b = row; b < stride; ++b) ASSERT_EQ(cache[r * stride + b], fill);
        } else {
          for (size_t b = 0; b < stride; ++b)
            ASSERT_EQ(cache[r * stride + b], fill)
                << (which ? "V" : "K") << " cache of token " << t << ", row " << r << " written";
        }
      }
    }
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(
    Types, KvStoreEmu,
    ::testing::Values(Case{GgmlType::F32, 1, 37}, Case{GgmlType::F32, 5, 256},
                      Case{GgmlType::F16, 1, 37}, Case{GgmlType::F16, 7, 130},
                      Case{GgmlType::Q8_0, 1, 64}, Case{GgmlType::Q8_0, 6, 96},
                      Case{GgmlType::Q8_0, 3, 512}),
    [](const ::testing::TestParamInfo<Case>& i) {
      return std::string(type_name(i.param.type)) + "_" + std::to_string(i.param.n_tok) + "x" +
             std::to_string(i.param.n);
    });

}  // namespace
}  // namespace rs::cuda::glue
