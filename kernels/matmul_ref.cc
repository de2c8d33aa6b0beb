// Reference matmul: each weight row dequantised exactly to f32 (dequantize_row_ref), then a
// plain f32 dot product in index order. Slow, single-threaded, the definition of right.
#include <vector>

#include "kernels/matmul.h"

namespace rs {

void matmul_ref(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                int64_t ldy) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row_ref(w.type, w.row(r), row.data(), w.cols);
    for (int64_t t = 0; t < n_tok; ++t) {
      const float* xt = x + t * ldx;
      float acc = 0;
      for (int64_t c = 0; c < w.cols; ++c) acc += row[c] * xt[c];
      y[t * ldy + r] = acc;
    }
  }
}

}  // namespace rs
