#include "quant/formats/packing.h"

#include <cstdint>

namespace qaas::quant {

at::Tensor PackRows(const at::Tensor& codes_in, int bits) {
  at::Tensor codes = codes_in.to(at::kInt).contiguous().cpu();
  const int64_t n = codes.size(0), cols = codes.size(1);
  const int64_t words = (n * bits + 31) / 32;
  at::Tensor packed = at::zeros({words, cols}, at::TensorOptions().dtype(at::kInt));
  const int32_t* src = codes.data_ptr<int32_t>();
  uint32_t* dst = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
  const uint32_t mask = bits == 32 ? 0xffffffffu : ((1u << bits) - 1u);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits, word = bit / 32, shift = bit % 32;
    for (int64_t c = 0; c < cols; ++c) {
      const uint64_t v = static_cast<uint32_t>(src[i * cols + c]) & mask;
      const uint64_t placed = v << shift;
      dst[word * cols + c] |= static_cast<uint32_t>(placed);
      if (shift + bits > 32) dst[(word + 1) * cols + c] |= static_cast<uint32_t>(placed >> 32);
    }
  }
  return packed;
}

at::Tensor UnpackRows(const at::Tensor& packed_in, int bits, int64_t n) {
  at::Tensor packed = packed_in.to(at::kInt).contiguous().cpu();
  const int64_t cols = packed.size(1);
  at::Tensor codes = at::empty({n, cols}, at::TensorOptions().dtype(at::kInt));
  const uint32_t* src = reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>());
  int32_t* dst = codes.data_ptr<int32_t>();
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  const int64_t words = packed.size(0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits, word = bit / 32, shift = bit % 32;
    for (int64_t c = 0; c < cols; ++c) {
      uint64_t v = src[word * cols + c];
      if (shift + bits > 32 && word + 1 < words) v |= uint64_t{src[(word + 1) * cols + c]} << 32;
      dst[i * cols + c] = static_cast<int32_t>((v >> shift) & mask);
    }
  }
  return codes;
}

}  // namespace qaas::quant
