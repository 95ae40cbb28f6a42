// glibc malloc settings for a process that quantizes on the CPU.
//
// A layer's forward (and OmniQuant's backward) allocates and frees tensors of
// a few hundred KB to tens of MB at every step. With glibc's defaults those
// are mmap'd and munmap'd each time, or trimmed from the heap top, so every
// step page-faults its buffers in again: on stories260k, OmniQuant spent more
// time in the kernel than in ATen. Keeping such blocks in the heap cuts the
// system time about 3x (docs/decisions.md, 15). Call once, early in main().
#ifndef QAAS_QUANT_UTIL_ALLOCATOR_H_
#define QAAS_QUANT_UTIL_ALLOCATOR_H_

namespace qaas::quant {

// Raises the mmap threshold to glibc's maximum (32 MiB), keeps up to 1 GiB
// of freed heap instead of trimming it, and grows the heap 64 MiB at a time.
// A no-op where the C library is not glibc.
void KeepTensorBuffersInTheHeap();

}  // namespace qaas::quant

#endif  // QAAS_QUANT_UTIL_ALLOCATOR_H_
