// The distributed step's row kernels (kernels/cuda/row_ops_kernel.cuh) built for the host and
// run through the SIMT emulator against loops written here: gather with and without a scale and
// a destination index,
// widths that leave a partial block, and the combine in slot order (bit-exact with the host's
// SumExpertSlots + shared add + residual add order), with and without the shared term, k = 0.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cuda/row_ops_kernel.cuh"

namespace rs::cuda::glue {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& f : v) f = nd(rng);
  return v;
}

TEST(RowOpsEmu, GatherRows) {
  simt::set_order(simt::Order::kShuffled, 3);
  for (int64_t width : {1, 31, 256, 300, 777}) {
    for (int mode = 0; mode < 4; ++mode) {
      const bool scaled = mode & 1, scattered = mode & 2;
      const int64_t src_rows = 9, n = 6;
      const std::vector<float> src = Random(src_rows * width, static_cast<uint32_t>(width));
      const std::vector<int32_t> rows = {8, 0, 3, 3, 7, 1};
      const std::vector<float> scale = {0.5f, -1.25f, 3.0f, 0.0f, 1.0f, 7.5f};
      const std::vector<int32_t> dst_rows = {2, 5, 0, 4, 1, 3};
      std::vector<float> dst(n * width + 5, NAN);
      ASSERT_EQ(simt::launch({static_cast<unsigned>(n),
                              static_cast<unsigned>((width + kRowOpsThreads - 1) / kRowOpsThreads)},
                             {kRowOpsThreads}, 0, gather_rows_kernel, dst.data(),
                             scattered ? dst_rows.data() : nullptr, src.data(),
                             rows.data(), scaled ? scale.data() : nullptr, width),
                "");
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < width; ++c) {
          const float v = src[rows[i] * width + c];
          const int64_t d = scattered ? dst_rows[i] : i;
          ASSERT_EQ(dst[d * width + c], scaled ? scale[i] * v : v)
              << "width " << width << " mode " << mode << " row " << i << " col " << c;
        }
      for (int64_t c = n * width; c < n * width + 5; ++c) ASSERT_TRUE(std::isnan(dst[c]));
    }
  }
}

TEST(RowOpsEmu, CombineSlotsInSlotOrder) {
  simt::set_order(simt::Order::kReverse, 2);
  for (int64_t H : {16, 300, 512}) {
    for (int64_t k : {0, 1, 4, 8}) {
      for (bool with_ffn : {false, true}) {
        const int64_t n_tok = 3, n_rows = n_tok * k + 2;
        const std::vector<float> rows = Random(n_rows * H, static_cast<uint32_t>(H + k));
        const std::vector<float> ffn = Random(n_tok * H, 99);
        const std::vector<float> h0 = Random(n_tok * H, 7);
        // A permutation: slot (t, j) is row (t*k + j) * 5 % (n_tok*k) (rows arrive rank by rank).
        std::vector<int32_t> slot_row(n_tok * k);
        for (int64_t s = 0; s < n_tok * k; ++s)
          slot_row[s] = static_cast<int32_t>((s * 5) % (n_tok * k));
        std::vector<float> hidden = h0;
        ASSERT_EQ(simt::launch({static_cast<unsigned>(n_tok),
                                static_cast<unsigned>((H + kRowOpsThreads - 1) / kRowOpsThreads)},
                               {kRowOpsThreads}, 0, combine_slots_kernel, hidden.data(),
                               rows.data(), slot_row.data(), with_ffn ? ffn.data() : nullptr, k, H),
                  "");
        for (int64_t t = 0; t < n_tok; ++t) {
          // The host path: SumExpertSlots into partial, partial += ffn, hidden += partial.
          std::vector<float> partial(H, 0.0f);
          if (k > 0) {
            for (int64_t h = 0; h < H; ++h) partial[h] = rows[slot_row[t * k] * H + h];
            for (int64_t j = 1; j < k; ++j)
              for (int64_t h = 0; h < H; ++h) partial[h] += rows[slot_row[t * k + j] * H + h];
            if (with_ffn)
              for (int64_t h = 0; h < H; ++h) partial[h] += ffn[t * H + h];
          } else if (with_ffn) {
            for (int64_t h = 0; h < H; ++h) partial[h] = ffn[t * H + h];
          }
          for (int64_t h = 0; h < H; ++h)
            ASSERT_EQ(hidden[t * H + h], h0[t * H + h] + partial[h])
                << "H " << H << " k " << k << " ffn " << with_ffn << " token " << t << " h " << h;
        }
      }
    }
  }
}

}  // namespace
}  // namespace rs::cuda::glue
