// KeepTensorBuffersInTheHeap: blocks of tensor size come from the heap, not
// from a fresh mmap each time (ctest runs this test in its own process, so
// glibc's thresholds start at their defaults).
#include "quant/util/allocator.h"

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qaas::quant {
namespace {

#if defined(__GLIBC__)
// The process's malloc arenas, as malloc_info lists them.
int Arenas() {
  char* text = nullptr;
  size_t size = 0;
  FILE* f = open_memstream(&text, &size);
  if (f == nullptr) return -1;
  malloc_info(0, f);
  std::fclose(f);
  int n = 0;
  for (const char* p = text; (p = std::strstr(p, "<heap nr=")) != nullptr; ++p) ++n;
  std::free(text);
  return n;
}

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

TEST(AllocatorTest, ThreadsReuseTheBlocksOtherLiveThreadsFreed) {
  // The staged calibration forward's pattern: a thread per batch, alive all
  // along, one running at a time. What one frees the next one reuses, so
  // the process holds one batch's transient buffers, not one per thread.
  constexpr size_t kBytes = 16 << 20;
  // glibc fixes its arena limit once a process has made 9 arenas; threads of
  // earlier tests in this process may have (ctest runs each test alone).
  if (Arenas() > 1) GTEST_SKIP() << Arenas() << " arenas before the test: run it in a process of its own";
  KeepTensorBuffersInTheHeap();
  auto touch = [] {
    void* p = std::malloc(kBytes);
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, kBytes);
    std::free(p);
  };
  touch();
  const size_t held = mallinfo2().arena;  // every arena's, summed
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    std::atomic<bool> done{false};
    threads.emplace_back([&] {
      touch();
      done = true;
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return release; });  // stays alive, as a parked batch does
    });
    while (!done) std::this_thread::yield();
  }
  EXPECT_LT(mallinfo2().arena, held + kBytes) << "a thread's block came from an arena of its own";
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
}
#endif

}  // namespace
}  // namespace qaas::quant
