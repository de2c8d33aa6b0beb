// Quantised block formats: hand-built blocks against hand-computed values (proves each layout),
// quantise -> dequantise round trips on random data, fp16/bf16 conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/formats.h"
#include "kernels/quant_blocks.h"

namespace rs {
namespace {

using namespace qblk;

std::vector<float> deq(GgmlType t, const void* block, int64_t n) {
  std::vector<float> out(n);
  dequantize_row_ref(t, block, out.data(), n);
  return out;
}

TEST(Fp16, RoundTripsEveryFiniteHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t hh = static_cast<uint16_t>(h);
    const float f = fp16_to_f32(hh);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fp16_to_f32(f32_to_fp16(f)))) << h;
      continue;
    }
    ASSERT_EQ(f32_to_fp16(f), hh) << "half 0x" << std::hex << h;
  }
  EXPECT_EQ(fp16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_f32(0x7bff), 65504.0f);
  // Round to nearest even at the midpoint between 1 and 1 + 2^-10.
  EXPECT_EQ(f32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(f32_to_fp16(70000.0f), 0x7c00);
}

TEST(Bf16, ConvertsAndRoundsToEven) {
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0x4049), 3.140625f);
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie -> even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie -> even (up)
  for (uint32_t h = 0; h < 65536; h += 7) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) ASSERT_EQ(f32_to_bf16(f), h);
  }
}

TEST(Dequant, FloatTypes) {
  const float f[3] = {1.5f, -2.25f, 1e-3f};
  EXPECT_EQ(deq(GgmlType::F32, f, 3), std::vector<float>(f, f + 3));
  const uint16_t h[3] = {0x3c00, 0xc000, 0x3555};
  EXPECT_EQ(deq(GgmlType::F16, h, 3), (std::vector<float>{1.0f, -2.0f, fp16_to_f32(0x3555)}));
  const uint16_t b[2] = {0x3f80, 0xc049};
  EXPECT_EQ(deq(GgmlType::BF16, b, 2), (std::vector<float>{1.0f, -3.140625f}));
}

TEST(Dequant, Q8_0HandBuilt) {
  BlockQ8_0 b{};
  b.d = 0x3800;  // 0.5
  b.qs[0] = 3;
  b.qs[31] = -128;
  b.qs[7] = 127;
  const auto y = deq(GgmlType::Q8_0, &b, 32);
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_EQ(y[7], 63.5f);
  EXPECT_EQ(y[31], -64.0f);
  EXPECT_EQ(y[1], 0.0f);
}

TEST(Dequant, Q4_0HandBuilt) {
  BlockQ4_0 b[2]{};
  b[0].d = 0x3c00;  // 1
  b[0].qs[0] = 0x2F;   // x0 = 15-8, x16 = 2-8
  b[1].d = 0xb800;  // -0.5
  b[1].qs[15] = 0x80;  // x15 = (0-8)*-0.5 = 4, x31 = (8-8) = 0
  const auto y = deq(GgmlType::Q4_0, b, 64);
  EXPECT_EQ(y[0], 7.0f);
  EXPECT_EQ(y[16], -6.0f);
  EXPECT_EQ(y[1], -8.0f);
  EXPECT_EQ(y[32 + 15], 4.0f);
  EXPECT_EQ(y[32 + 31], 0.0f);
}

// Scales shared by the Q4_K / Q5_K hand-built blocks:
// sub-block 0: sc = 3, m = 4; sub-block 5: sc = 1 | (1 << 4) = 17, m = 2 | (2 << 4) = 34.
template <typename B>
void set_k_scales(B* b) {
  b->d = 0x3c00;     // 1
  b->dmin = 0x3800;  // 0.5
  b->scales[0] = 3;      // sc0
  b->scales[4] = 4;      // m0
  b->scales[9] = 0x21;   // sc5 low 4 bits = 1, m5 low 4 bits = 2
  b->scales[1] = 0x40;   // sc5 high 2 bits = 1 (sc1 = 0)
  b->scales[5] = 0x80;   // m5 high 2 bits = 2 (m1 = 0)
}

TEST(Dequant, Q4_KHandBuilt) {
  BlockQ4_K b{};
  set_k_scales(&b);
  b.qs[0] = 0x05;       // element 0: sub-block 0, q = 5
  b.qs[64 + 1] = 0x70;  // element 64*2 + 32 + 1 = 161: sub-block 5, q = 7
  const auto y = deq(GgmlType::Q4_K, &b, 256);
  EXPECT_EQ(y[0], 1 * 3 * 5 - 0.5f * 4);       // 13
  EXPECT_EQ(y[1], -0.5f * 4);                  // q = 0
  EXPECT_EQ(y[161], 1 * 17 * 7 - 0.5f * 34);   // 102
  EXPECT_EQ(y[160], -0.5f * 34);
  EXPECT_EQ(y[32], 0.0f);                      // sub-block 1: sc = m = 0
}

TEST(Dequant, Q5_KHandBuilt) {
  BlockQ5_K b{};
  set_k_scales(&b);
  b.qs[0] = 0x05;
  b.qs[64 + 1] = 0x70;
  b.qh[0] = 0x01;  // element 0 (c = 0, low nibble): bit 0 -> q = 21
  b.qh[1] = 0x20;  // element 161 (c = 2, high nibble): bit 5 -> q = 23
  const auto y = deq(GgmlType::Q5_K, &b, 256);
  EXPECT_EQ(y[0], 3 * 21 - 0.5f * 4);        // 61
  EXPECT_EQ(y[161], 17 * 23 - 0.5f * 34);    // 374
  EXPECT_EQ(y[33], 0.0f);                    // sub-block 1 unaffected by bit 0 of qh[1]
  EXPECT_EQ(y[1], -2.0f);
}

TEST(Dequant, Q6_KHandBuilt) {
  BlockQ6_K b{};
  b.d = 0x3800;  // 0.5
  b.scales[0] = 2;
  b.scales[2] = -3;
  b.scales[13] = 5;
  b.ql[0] = 0x01;
  b.qh[0] = 0x02;      // element 0: q1 = 1 | (2 << 4) = 33
  b.ql[64 + 17] = 0xA0;
  b.qh[32 + 17] = 0x30;  // element 128 + 64 + 17 = 209: q3 = 10 | (3 << 4) = 58, scale 13
  const auto y = deq(GgmlType::Q6_K, &b, 256);
  EXPECT_EQ(y[0], 0.5f * 2 * (33 - 32));     // 1
  EXPECT_EQ(y[32], 0.5f * -3 * (0 - 32));    // 48: q2 = 0, scale 2
  EXPECT_EQ(y[209], 0.5f * 5 * (58 - 32));   // 65
  EXPECT_EQ(y[1], 0.5f * 2 * -32);           // -32
}

TEST(Dequant, IQ4_XSHandBuilt) {
  BlockIQ4_XS b{};
  b.d = 0x3400;         // 0.25
  b.scales_l[0] = 0x01; // sub-block 0 low bits 1
  b.scales_l[1] = 0x50; // sub-block 3 low bits 5
  b.scales_h = 0x42;    // sub-block 0 high bits 2 (ls = 33), sub-block 3 high bits 1 (ls = 21)
  b.qs[0] = 0xF0;       // y[0] = T[0], y[16] = T[15]
  b.qs[48 + 2] = 0x09;  // y[98] = T[9], y[114] = T[0]
  const auto y = deq(GgmlType::IQ4_XS, &b, 256);
  EXPECT_EQ(y[0], 0.25f * -127);
  EXPECT_EQ(y[16], 0.25f * 113);
  EXPECT_EQ(y[98], -2.75f * 13);
  EXPECT_EQ(y[114], -2.75f * -127);
  EXPECT_EQ(y[32], 0.25f * (0 - 32) * -127);  // sub-block 1: ls = 0, q = 0
}

struct RoundTripCase {
  GgmlType type;
  double max_rel_rms;  // bound on rms(error) / rms(data) for Gaussian data
};

void PrintTo(const RoundTripCase& c, std::ostream* os) {
  *os << type_name(c.type) << " (bound " << c.max_rel_rms << ")";
}

class RoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

// Measured at Gaussian data (seed fixed): F16 2.1e-4, BF16 1.7e-3, Q8_0 5.4e-3, Q6_K 1.7e-2,
// Q5_K 3.6e-2, Q4_K 7.2e-2, IQ4_XS 7.5e-2, Q4_0 8.2e-2 (uniform and shifted data do better,
// outliers up to 1.7x worse); the bounds leave 10-40% head room.
TEST_P(RoundTrip, ErrorWithinBound) {
  const RoundTripCase c = GetParam();
  const TypeInfo* info = type_info(c.type);
  const int64_t n = 256 * 24;
  std::mt19937 rng(1234);
  for (const std::string dist : {"normal", "uniform", "outliers", "shifted"}) {
    std::vector<float> x(n);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
    for (int64_t i = 0; i < n; ++i) {
      if (dist == "normal") x[i] = nd(rng) * 0.02f;
      if (dist == "uniform") x[i] = ud(rng) * 3.0f;
      if (dist == "outliers") x[i] = nd(rng) * (i % 97 == 0 ? 20.0f : 1.0f);
      if (dist == "shifted") x[i] = 0.5f + 0.1f * nd(rng);  // all positive: the min path
    }
    std::vector<uint8_t> q(row_bytes(c.type, n));
    quantize_row_ref(c.type, x.data(), q.data(), n);
    std::vector<uint8_t> q2(q.size());
    quantize_row_ref(c.type, x.data(), q2.data(), n);
    ASSERT_EQ(q, q2) << "quantiser not deterministic for " << info->name;
    std::vector<float> y(n);
    dequantize_row_ref(c.type, q.data(), y.data(), n);
    double se = 0, sx = 0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(y[i]));
      se += (y[i] - x[i]) * static_cast<double>(y[i] - x[i]);
      sx += x[i] * static_cast<double>(x[i]);
    }
    const double rel = std::sqrt(se / sx);
    // Outliers widen the per-block range: allow twice the bound there.
    const double bound = c.max_rel_rms * (dist == "outliers" ? 2.0 : 1.0);
    EXPECT_LT(rel, bound) << info->name << " on " << dist << " data";
    RecordProperty(std::string(info->name) + "_" + dist, std::to_string(rel));
  }
}

TEST_P(RoundTrip, ZerosStayZero) {
  const GgmlType t = GetParam().type;
  const int64_t n = 512;
  std::vector<float> x(n, 0.0f), y(n, 1.0f);
  std::vector<uint8_t> q(row_bytes(t, n));
  quantize_row_ref(t, x.data(), q.data(), n);
  dequantize_row_ref(t, q.data(), y.data(), n);
  for (float v : y) ASSERT_EQ(v, 0.0f) << type_name(t);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, RoundTrip,
    ::testing::Values(RoundTripCase{GgmlType::F32, 1e-9}, RoundTripCase{GgmlType::F16, 5e-4},
                      RoundTripCase{GgmlType::BF16, 4e-3}, RoundTripCase{GgmlType::Q8_0, 7e-3},
                      RoundTripCase{GgmlType::Q4_0, 0.12}, RoundTripCase{GgmlType::Q4_K, 0.085},
                      RoundTripCase{GgmlType::Q5_K, 0.04}, RoundTripCase{GgmlType::Q6_K, 0.02},
                      RoundTripCase{GgmlType::IQ4_XS, 0.09}),
    [](const ::testing::TestParamInfo<RoundTripCase>& i) { return std::string(type_name(i.param.type)); });

TEST(TypeTable, ComputeTypesAndSizes) {
  EXPECT_EQ(row_bytes(GgmlType::Q4_K, 4096), 16u * 144);
  EXPECT_EQ(row_bytes(GgmlType::IQ4_XS, 256), 136u);
  EXPECT_EQ(row_bytes(GgmlType::Q8_0, 64), 68u);
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                     GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS})
    EXPECT_TRUE(is_compute_type(t)) << type_name(t);
  EXPECT_FALSE(is_compute_type(GgmlType::Q2_K));
}

}  // namespace
}  // namespace rs
