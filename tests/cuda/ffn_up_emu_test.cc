// The dense FFN's fused up kernel (kernels/cuda/ffn_up_kernel.cuh) built for the host and run
// through the SIMT emulator (ffn_up_test_util.h: the problems and their check): every weight
// format, 1..8 tokens, partial tiles, rows longer than one pass of the lanes, h with a row pitch
// wider than its rows. Runs everywhere (no GPU).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/ffn_up_kernel.cuh"
#include "tests/cuda/ffn_up_test_util.h"

namespace rs::cuda::ffnup {
namespace {

using testing_kernels::FfnUpCase;

template <GgmlType T>
std::string run_type(const Args& a) {
  const simt::Dim grid{static_cast<unsigned>(blocks(a))}, block{kThreads};
  switch (a.n_tok) {
    case 1: return simt::launch(grid, block, 0, ffn_up_kernel<T, 1>, a);
    case 2: return simt::launch(grid, block, 0, ffn_up_kernel<T, 2>, a);
    case 3: return simt::launch(grid, block, 0, ffn_up_kernel<T, 3>, a);
    case 4: return simt::launch(grid, block, 0, ffn_up_kernel<T, 4>, a);
    case 5: return simt::launch(grid, block, 0, ffn_up_kernel<T, 5>, a);
    case 6: return simt::launch(grid, block, 0, ffn_up_kernel<T, 6>, a);
    case 7: return simt::launch(grid, block, 0, ffn_up_kernel<T, 7>, a);
    case 8: return simt::launch(grid, block, 0, ffn_up_kernel<T, 8>, a);
    default: return "n_tok out of range";
  }
}

std::string run(GgmlType t, const Args& a) {
  std::string err = "unsupported type";
  RS_CUDA_TYPE_SWITCH(t, err = run_type<kT>(a));
  return err;
}

class FfnUpEmu : public ::testing::TestWithParam<FfnUpCase> {};

TEST_P(FfnUpEmu, MatchesRowReference) {
  const FfnUpCase c = GetParam();
  simt::set_order(c.N % 2 ? simt::Order::kShuffled : simt::Order::kReverse, 3);
  const auto p = testing_kernels::make_ffn_up(c);
  const float poison = -1234.5f;
  std::vector<float> h(c.N * c.ldh, poison);
  std::vector<int8_t> hq(c.N * c.I, 0);
  std::vector<float> hds(c.N * c.I / 32 * 2, NAN);
  Args a;
  a.gate = p.gate.data();
  a.up = p.up.data();
  a.row_stride = p.rb;
  a.I = c.I;
  a.H = c.H;
  a.n_tok = static_cast<int>(c.N);
  a.x = p.x.data();
  a.ldx = c.H;
  a.xq = p.q8 ? p.xq.data() : nullptr;
  a.xds = p.q8 ? p.xds.data() : nullptr;
  a.h = h.data();
  a.ldh = c.ldh;
  a.hq = c.q8_out ? hq.data() : nullptr;
  a.hds = c.q8_out ? hds.data() : nullptr;
  ASSERT_EQ(run(c.type, a), "");
  testing_kernels::check_ffn_up(p, h, poison, a.hq, a.hds);
  simt::set_order(simt::Order::kForward);
}

INSTANTIATE_TEST_SUITE_P(Formats, FfnUpEmu, ::testing::ValuesIn(testing_kernels::ffn_up_cases()),
                         [](const auto& info) {
                           return std::string(type_name(info.param.type)) + "_" +
                                  std::to_string(info.index);
                         });

}  // namespace
}  // namespace rs::cuda::ffnup
