#include "quant/formats/per_token_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "quant/util/avx_reduce.h"

namespace qaas::quant {

#if QAAS_X86_AVX

namespace {

// Only these functions use AVX2 (the target attribute), so the rest of the
// program runs on any x86-64.
#define QAAS_AVX2 __attribute__((target("avx2")))

// The smallest scale (act_quant.cc's kMinScale, as float: clamp_min on a
// float tensor compares in float).
constexpr float kMinScale = static_cast<float>(1e-12);

// clamp_min(v, kMinScale) as ATen computes it: NaN stays NaN.
float ClampScale(float v) { return std::isnan(v) ? v : std::max(v, kMinScale); }

using avx::HorizontalMax;
using avx::HorizontalMin;

QAAS_AVX2 inline __m256 Round(__m256 v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

// clamp(v, lo, hi) with ATen's NaN propagation: max_ps and min_ps return
// their second operand when either is NaN, so v goes second.
QAAS_AVX2 inline __m256 Clamp(__m256 v, __m256 lo, __m256 hi) {
  return _mm256_min_ps(hi, _mm256_max_ps(lo, v));
}

// One row's minimum and maximum (of |x| when `absolute`), NaN when the row
// has a NaN (as ATen's reductions give it).
QAAS_AVX2 void RowRange(const float* x, int64_t n, bool absolute, float* lo, float* hi) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 vlo = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 vhi = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 unordered = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_loadu_ps(x + j);
    if (absolute) v = _mm256_andnot_ps(sign, v);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    vlo = _mm256_min_ps(vlo, v);
    vhi = _mm256_max_ps(vhi, v);
  }
  float l = HorizontalMin(vlo), h = HorizontalMax(vhi);
  bool nan = _mm256_movemask_ps(unordered) != 0;
  for (; j < n; ++j) {
    const float v = absolute ? std::fabs(x[j]) : x[j];
    nan = nan || std::isnan(v);
    l = std::min(l, v);
    h = std::max(h, v);
  }
  if (nan) l = h = std::numeric_limits<float>::quiet_NaN();
  *lo = l;
  *hi = h;
}

// y = clamp(round(x / scale), -qmax, qmax) * scale
QAAS_AVX2 void SymmetricRow(const float* x, float* y, int64_t n, float qmax) {
  float lo, amax;
  RowRange(x, n, /*absolute=*/true, &lo, &amax);
  const float scale = ClampScale(amax / qmax);
  const __m256 s = _mm256_set1_ps(scale), vlo = _mm256_set1_ps(-qmax), vhi = _mm256_set1_ps(qmax);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 q = Clamp(Round(_mm256_div_ps(_mm256_loadu_ps(x + j), s)), vlo, vhi);
    _mm256_storeu_ps(y + j, _mm256_mul_ps(q, s));
  }
  for (; j < n; ++j) {
    const float q = std::nearbyint(x[j] / scale);
    y[j] = (std::isnan(q) ? q : std::min(qmax, std::max(-qmax, q))) * scale;
  }
}

// zero = round(-lo / scale); y = (clamp(round(x / scale) + zero, 0, qmax) - zero) * scale
QAAS_AVX2 void AsymmetricRow(const float* x, float* y, int64_t n, float qmax) {
  float lo, hi;
  RowRange(x, n, /*absolute=*/false, &lo, &hi);
  const float scale = ClampScale((hi - lo) / qmax);
  const float zero = std::nearbyint(-lo / scale);
  const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(zero), vlo = _mm256_setzero_ps(),
               vhi = _mm256_set1_ps(qmax);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 q = Clamp(_mm256_add_ps(Round(_mm256_div_ps(_mm256_loadu_ps(x + j), s)), z), vlo, vhi);
    _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_sub_ps(q, z), s));
  }
  for (; j < n; ++j) {
    const float q = std::nearbyint(x[j] / scale) + zero;
    y[j] = ((std::isnan(q) ? q : std::min(qmax, std::max(0.0f, q))) - zero) * scale;
  }
}

}  // namespace

at::Tensor FakeQuantizePerTokenKernel(const at::Tensor& x, int bits, bool symmetric) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (!avx2 || !x.defined() || !x.device().is_cpu() || x.scalar_type() != at::kFloat || x.requires_grad() ||
      x.dim() == 0 || !x.is_contiguous() || bits < 2 || bits > 16) {
    return at::Tensor();
  }
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (rows == 0) return y;
  const float qmax = static_cast<float>(symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1);
  const float* src = x.data_ptr<float>();
  float* dst = y.data_ptr<float>();
  // Rows are independent: as many per task as make ~64K values.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / n);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (symmetric) {
        SymmetricRow(src + r * n, dst + r * n, n, qmax);
      } else {
        AsymmetricRow(src + r * n, dst + r * n, n, qmax);
      }
    }
  });
  return y;
}

#else  // not x86-64 with GCC or Clang: the ATen formula everywhere

at::Tensor FakeQuantizePerTokenKernel(const at::Tensor&, int, bool) { return at::Tensor(); }

#endif

}  // namespace qaas::quant
