#include "quant/formats/packing.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace qaas::quant {
namespace {

at::Tensor IntTensor(const std::vector<int32_t>& v, int64_t rows, int64_t cols) {
  return at::tensor(v, at::TensorOptions().dtype(at::kInt)).reshape({rows, cols});
}

// Scalar reference of packing.h's layout: code i of a column is stream bits
// [i*b, (i+1)*b), least significant first; word w holds stream bits [32w, 32w+32).
std::vector<uint32_t> ReferencePackColumn(const std::vector<uint32_t>& codes, int bits) {
  std::vector<uint32_t> words((codes.size() * bits + 31) / 32, 0);
  for (size_t i = 0; i < codes.size(); ++i) {
    for (int k = 0; k < bits; ++k) {
      const size_t bit = i * bits + k;
      if ((codes[i] >> k) & 1u) words[bit / 32] |= 1u << (bit % 32);
    }
  }
  return words;
}

TEST(PackingTest, KnownFourBitLayout) {
  at::Tensor codes = IntTensor({0, 1, 2, 3, 4, 5, 6, 7}, 8, 1);
  at::Tensor packed = PackRows(codes, 4);
  ASSERT_EQ(packed.sizes().vec(), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(packed.scalar_type(), at::kInt);
  EXPECT_EQ(static_cast<uint32_t>(packed[0][0].item<int32_t>()), 0x76543210u);
}

TEST(PackingTest, KnownTwoAndEightBitLayouts) {
  at::Tensor two = PackRows(IntTensor({1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0}, 16, 1), 2);
  ASSERT_EQ(two.sizes().vec(), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(static_cast<uint32_t>(two[0][0].item<int32_t>()), 0x39393939u);

  // Two columns packed independently; the top byte makes the int32 word negative.
  at::Tensor eight = PackRows(IntTensor({0x11, 0xaa, 0x22, 0xbb, 0x33, 0xcc, 0xf4, 0xdd}, 4, 2), 8);
  ASSERT_EQ(eight.sizes().vec(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(static_cast<uint32_t>(eight[0][0].item<int32_t>()), 0xf4332211u);
  EXPECT_EQ(static_cast<uint32_t>(eight[0][1].item<int32_t>()), 0xddccbbaau);
  EXPECT_TRUE(UnpackRows(eight, 8, 4).equal(IntTensor({0x11, 0xaa, 0x22, 0xbb, 0x33, 0xcc, 0xf4, 0xdd}, 4, 2)));
}

TEST(PackingTest, ThreeBitCodesStraddleWords) {
  // Code 10 occupies stream bits 30..32: two bits in word 0, one in word 1.
  std::vector<int32_t> v = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 7};
  at::Tensor packed = PackRows(IntTensor(v, 11, 1), 3);
  ASSERT_EQ(packed.sizes().vec(), (std::vector<int64_t>{2, 1}));
  std::vector<uint32_t> u(v.begin(), v.end());
  const auto want = ReferencePackColumn(u, 3);
  EXPECT_EQ(static_cast<uint32_t>(packed[0][0].item<int32_t>()), want[0]);
  EXPECT_EQ(static_cast<uint32_t>(packed[1][0].item<int32_t>()), want[1]);
  EXPECT_EQ(want[1], 1u);                      // the straddling code's top bit
  EXPECT_EQ(want[0] >> 30, 3u);                // and its two low bits
  EXPECT_TRUE(UnpackRows(packed, 3, 11).equal(IntTensor(v, 11, 1)));
}

TEST(PackingTest, RoundTripsAndMatchesTheReferenceForEveryWidth) {
  for (int bits : {2, 3, 4, 8}) {
    for (int64_t n : {1, 7, 11, 32, 33, 129, 172}) {
      SCOPED_TRACE(std::to_string(bits) + " bits, " + std::to_string(n) + " rows");
      const int64_t cols = 5;
      at::manual_seed(bits * 1000 + n);
      at::Tensor codes = at::randint(0, 1 << bits, {n, cols}, at::TensorOptions().dtype(at::kInt));
      at::Tensor packed = PackRows(codes, bits);
      ASSERT_EQ(packed.size(0), (n * bits + 31) / 32);
      ASSERT_EQ(packed.size(1), cols);
      EXPECT_TRUE(UnpackRows(packed, bits, n).equal(codes));
      for (int64_t c = 0; c < cols; ++c) {
        std::vector<uint32_t> column;
        for (int64_t i = 0; i < n; ++i) column.push_back(static_cast<uint32_t>(codes[i][c].item<int32_t>()));
        const auto want = ReferencePackColumn(column, bits);
        for (size_t w = 0; w < want.size(); ++w) {
          ASSERT_EQ(static_cast<uint32_t>(packed[w][c].item<int32_t>()), want[w]) << "word " << w << " col " << c;
        }
      }
    }
  }
}

TEST(PackingTest, CodesOutsideTheRangeAreMasked) {
  at::Tensor packed = PackRows(IntTensor({17, 0, 0, 0, 0, 0, 0, 0}, 8, 1), 4);
  EXPECT_EQ(packed[0][0].item<int32_t>(), 1);  // 17 & 0xf
  EXPECT_TRUE(UnpackRows(packed, 4, 8).equal(IntTensor({1, 0, 0, 0, 0, 0, 0, 0}, 8, 1)));
}

TEST(PackingTest, AcceptsNonContiguousAndOtherIntegerTypes) {
  at::manual_seed(3);
  at::Tensor codes = at::randint(0, 16, {6, 9}, at::TensorOptions().dtype(at::kLong));
  at::Tensor t = codes.t();  // [9, 6], not contiguous
  at::Tensor packed = PackRows(t, 4);
  EXPECT_TRUE(UnpackRows(packed, 4, 9).equal(t.to(at::kInt)));
  EXPECT_TRUE(packed.equal(PackRows(t.contiguous().to(at::kInt), 4)));
}

}  // namespace
}  // namespace qaas::quant
