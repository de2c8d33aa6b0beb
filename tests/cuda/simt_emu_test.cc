// The SIMT emulator itself (kernels/cuda/simt_host.h): barriers, shuffles, votes, shared memory,
// and the errors it reports. Runs everywhere; no GPU involved.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels/cuda/simt.h"

namespace {

using rs::simt::Order;

// Block sum by warp shuffles and a shared array of warp totals.
RS_KERNEL void block_sum_kernel(const int* in, int n, int* out) {
  __shared__ int warp_tot[32];
  int v = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += in[i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) warp_tot[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (unsigned w = 0; w < (blockDim.x + 31) / 32; ++w) s += warp_tot[w];
    out[blockIdx.x] = s;
  }
}

TEST(SimtEmu, BlockSumOverSeveralBlocksAndOrders) {
  std::vector<int> in(10007);
  std::iota(in.begin(), in.end(), -300);
  const long long want = std::accumulate(in.begin(), in.end(), 0LL);
  for (Order o : {Order::kForward, Order::kReverse, Order::kShuffled}) {
    rs::simt::set_order(o, 5);
    std::vector<int> out(3, 0);
    ASSERT_EQ(rs::simt::launch({3}, {256}, 0, block_sum_kernel, in.data(), static_cast<int>(in.size()), out.data()), "");
    EXPECT_EQ(out[0] + out[1] + out[2], want);
  }
  rs::simt::set_order(Order::kForward);
}

// Shuffle variants and votes, one warp plus a partial warp (48 threads).
RS_KERNEL void shuffle_kernel(int* down, int* up, int* idx, unsigned* ballot, int* all) {
  const int t = static_cast<int>(threadIdx.x);
  down[t] = __shfl_down_sync(0xffffffffu, t * 10, 3);
  up[t] = __shfl_up_sync(0xffffffffu, t * 10, 2);
  idx[t] = __shfl_sync(0xffffffffu, t * 10, 5, 8);
  ballot[t] = __ballot_sync(0xffffffffu, t % 3 == 0);
  all[t] = __all_sync(0xffffffffu, t < 40);
}

TEST(SimtEmu, ShufflesAndVotesFollowCudaSemantics) {
  std::vector<int> down(48), up(48), idx(48), all(48);
  std::vector<unsigned> ballot(48);
  ASSERT_EQ(rs::simt::launch({1}, {48}, 0, shuffle_kernel, down.data(), up.data(), idx.data(), ballot.data(), all.data()), "");
  for (int t = 0; t < 48; ++t) {
    const int lane = t % 32, base = t - lane;
    const bool down_in = lane + 3 < 32 && t + 3 < 48;
    // A lane whose source is past the block's last thread reads its own value here (the device
    // leaves it undefined); only in-range lanes are checked.
    if (lane + 3 < 32 && down_in) EXPECT_EQ(down[t], (t + 3) * 10) << t;
    if (lane + 3 >= 32) EXPECT_EQ(down[t], t * 10) << t;
    EXPECT_EQ(up[t], lane >= 2 ? (t - 2) * 10 : t * 10) << t;
    EXPECT_EQ(idx[t], (base + (lane & ~7) + 5) * 10) << t;
    unsigned want = 0;
    for (int l = 0; l < 32 && base + l < 48; ++l)
      if ((base + l) % 3 == 0) want |= 1u << l;
    EXPECT_EQ(ballot[t], want) << t;
    EXPECT_EQ(all[t], base == 0 ? 1 : 0) << t;
  }
}

// Dynamic shared memory and the need for a barrier: without __syncthreads between the write
// and the read, the result depends on the schedule (a race the orders expose).
RS_KERNEL void rotate_kernel(int* out, bool with_barrier) {
  RS_DYN_SHARED(int, buf);
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  buf[t] = t;
  if (with_barrier) __syncthreads();
  out[t] = buf[(t + 1) % n];
}

TEST(SimtEmu, OrdersExposeAMissingBarrier) {
  std::vector<int> fwd(64), rev(64);
  rs::simt::set_order(Order::kForward);
  ASSERT_EQ(rs::simt::launch({1}, {64}, 64 * sizeof(int), rotate_kernel, fwd.data(), false), "");
  rs::simt::set_order(Order::kReverse);
  ASSERT_EQ(rs::simt::launch({1}, {64}, 64 * sizeof(int), rotate_kernel, rev.data(), false), "");
  EXPECT_NE(fwd, rev);
  for (Order o : {Order::kForward, Order::kReverse}) {
    rs::simt::set_order(o);
    std::vector<int> out(64);
    ASSERT_EQ(rs::simt::launch({1}, {64}, 64 * sizeof(int), rotate_kernel, out.data(), true), "");
    for (int t = 0; t < 64; ++t) EXPECT_EQ(out[t], (t + 1) % 64);
  }
  rs::simt::set_order(Order::kForward);
}

RS_KERNEL void divergent_kernel(int* x) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
  }
}

TEST(SimtEmu, ReportsADivergentBarrierAndBadShapes) {
  std::vector<int> x(32);
  const std::string err = rs::simt::launch({1}, {32}, 0, divergent_kernel, x.data());
  EXPECT_NE(err.find("deadlock"), std::string::npos) << err;
  EXPECT_NE(rs::simt::launch({1}, {2048}, 0, divergent_kernel, x.data()), "");
  EXPECT_NE(rs::simt::launch({0}, {32}, 0, divergent_kernel, x.data()), "");
}

}  // namespace
