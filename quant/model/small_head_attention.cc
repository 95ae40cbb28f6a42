#include "quant/model/small_head_attention.h"

#include <ATen/Parallel.h>

#include <vector>

#include "quant/util/avx_reduce.h"

namespace qaas::quant {

#if QAAS_X86_AVX

namespace {

// Only these functions use AVX2 and FMA (the target attribute), so the rest
// of the program runs on any x86-64; they call nothing but each other and
// avx_reduce.h's reductions.
#define QAAS_AVX2_FMA __attribute__((target("avx2,fma")))

// e^x for x <= 0, eight at a time: 2^n e^r with n = round(x / ln 2) and
// r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in two, Cody and Waite, so
// r is exact to float rounding), e^r by its Taylor polynomial to r^7 (the
// remainder, r^8 / 8!, is under 6e-9 of it there: below float's rounding),
// 2^n written into the exponent bits. x is first raised to -87, so 2^n stays
// a normal float: e^-87 (1.6e-38) for what is 0 to float anyway; the caller
// zeroes masked lanes itself.
QAAS_AVX2_FMA inline __m256 ExpNonPositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

using avx::HorizontalMax;
using avx::HorizontalSum;

// Lanes j .. j+7 that are keys of the query: lo <= j + lane <= i.
QAAS_AVX2_FMA inline __m256 KeyMask(int64_t j, int64_t lo, int64_t i) {
  const __m256i lane = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i below = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lo)), lane);
  const __m256i above = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(static_cast<int>(i)));
  return _mm256_castsi256_ps(_mm256_xor_si256(_mm256_or_si256(below, above), _mm256_set1_epi32(-1)));
}

QAAS_AVX2_FMA void Rows(const float* q, const float* kt, const float* vt, float* out, int64_t row_begin,
                        int64_t row_end, int64_t t, int64_t tpad, int hd, int window, float scale, float* scratch) {
  const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
  __m256 qs[kSmallHeadMaxDim];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t bh = row / t, i = row % t;
    const int64_t lo = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
    const int64_t first = lo & ~int64_t{7}, end = (i & ~int64_t{7}) + 8;  // whole vectors of keys
    const float* qi = q + row * hd;
    const float* k = kt + bh * hd * tpad;
    const float* v = vt + bh * hd * tpad;
    for (int d = 0; d < hd; ++d) qs[d] = _mm256_set1_ps(qi[d] * scale);
    // The scores, and their maximum.
    __m256 high = minus_inf;
    for (int64_t j = first; j < end; j += 8) {
      __m256 s = _mm256_setzero_ps();
      for (int d = 0; d < hd; ++d) s = _mm256_fmadd_ps(qs[d], _mm256_loadu_ps(k + d * tpad + j), s);
      if (j < lo || j + 8 > i + 1) s = _mm256_blendv_ps(minus_inf, s, KeyMask(j, lo, i));
      _mm256_storeu_ps(scratch + j, s);
      high = _mm256_max_ps(high, s);
    }
    const __m256 max = _mm256_set1_ps(HorizontalMax(high));
    // The weights e^(s - max) (0 for lanes that are not keys), their sum.
    __m256 total = _mm256_setzero_ps();
    for (int64_t j = first; j < end; j += 8) {
      __m256 p = ExpNonPositive(_mm256_sub_ps(_mm256_loadu_ps(scratch + j), max));
      if (j < lo || j + 8 > i + 1) p = _mm256_and_ps(p, KeyMask(j, lo, i));
      _mm256_storeu_ps(scratch + j, p);
      total = _mm256_add_ps(total, p);
    }
    const float inv = 1.0f / HorizontalSum(total);
    // The weighted values, coordinate by coordinate.
    float* oi = out + row * hd;
    for (int d = 0; d < hd; ++d) {
      const float* vd = v + d * tpad;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t j = first; j < end; j += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(scratch + j), _mm256_loadu_ps(vd + j), acc);
      }
      oi[d] = HorizontalSum(acc) * inv;
    }
  }
}

}  // namespace

bool SmallHeadAttentionAvailable() {
  static const bool available = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return available;
}

void SmallHeadAttentionRows(const float* q, const float* kt, const float* vt, float* out, int64_t row_begin,
                            int64_t row_end, int64_t t, int64_t tpad, int hd, int window, float scale,
                            float* scratch) {
  Rows(q, kt, vt, out, row_begin, row_end, t, tpad, hd, window, scale, scratch);
}

#else  // not x86-64: CausalAttention keeps the matrix-product form

bool SmallHeadAttentionAvailable() { return false; }

void SmallHeadAttentionRows(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int,
                            int, float, float*) {
  TORCH_CHECK(false, "the small-head attention kernel needs x86-64 with AVX2 and FMA");
}

#endif

at::Tensor SmallHeadCausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int window,
                                    double scale) {
  const int64_t BH = q.size(0), T = q.size(1), hd = q.size(2);
  if (!q.device().is_cpu() || hd > kSmallHeadMaxDim || q.scalar_type() != at::kFloat ||
      k.scalar_type() != at::kFloat || v.scalar_type() != at::kFloat || !SmallHeadAttentionAvailable()) {
    return {};
  }
  const int64_t tpad = (T + 7) / 8 * 8;
  const at::Tensor qc = q.contiguous();
  at::Tensor kt = at::zeros({BH, hd, tpad}, q.options()), vt = at::zeros({BH, hd, tpad}, q.options());
  kt.narrow(2, 0, T).copy_(k.transpose(1, 2));
  vt.narrow(2, 0, T).copy_(v.transpose(1, 2));
  at::Tensor out = at::empty({BH, T, hd}, q.options());
  const float *qp = qc.data_ptr<float>(), *kp = kt.data_ptr<float>(), *vp = vt.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // ATen's parallel_for is OpenMP in the TU that calls it: this file is
  // compiled with OpenMP (quant/CMakeLists.txt), or it would run serially.
  at::parallel_for(0, BH * T, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(tpad);
    SmallHeadAttentionRows(qp, kp, vp, op, begin, end, T, tpad, static_cast<int>(hd), window,
                           static_cast<float>(scale), scratch.data());
  });
  return out;
}

}  // namespace qaas::quant
