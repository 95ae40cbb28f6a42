// KeepTensorBuffersInTheHeap: blocks of tensor size come from the heap, not
// from a fresh mmap each time (ctest runs this test in its own process, so
// glibc's thresholds start at their defaults).
#include "quant/util/allocator.h"

#include <cstdlib>
#include <cstring>

#include "gtest/gtest.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qaas::quant {
namespace {

#if defined(__GLIBC__)
TEST(AllocatorTest, TensorSizedBlocksComeFromTheHeap) {
  constexpr size_t kBytes = 16 << 20;
  auto mmapped_blocks = [] { return mallinfo2().hblks; };
  const size_t before = mmapped_blocks();
  KeepTensorBuffersInTheHeap();
  void* p = std::malloc(kBytes);
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kBytes);
  EXPECT_EQ(mmapped_blocks(), before) << "a 16 MiB block was mmapped";
  const size_t arena = mallinfo2().arena;
  std::free(p);
  // Freed, it stays with the process for the next step (no trim).
  EXPECT_EQ(mallinfo2().arena, arena);
}
#endif

}  // namespace
}  // namespace qaas::quant
