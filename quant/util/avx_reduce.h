#ifndef QAAS_QUANT_UTIL_AVX_REDUCE_H_
#define QAAS_QUANT_UTIL_AVX_REDUCE_H_

// What the AVX2 kernels (small_head_attention.cc, per_token_kernel.cc)
// share: QAAS_X86_AVX, defined where they can be built (x86-64 with GCC or
// Clang: <immintrin.h> and the `target` attribute), and the horizontal
// reductions of eight floats. The functions carry the `target` attribute
// themselves, so the rest of a file that includes this still builds for any
// x86-64, and they inline into AVX2 and AVX2+FMA callers alike.

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QAAS_X86_AVX 1

namespace qaas::quant::avx {

__attribute__((target("avx2"))) inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2"))) inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2"))) inline float HorizontalMin(__m256 v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  s = _mm_min_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

}  // namespace qaas::quant::avx

#endif

#endif  // QAAS_QUANT_UTIL_AVX_REDUCE_H_
