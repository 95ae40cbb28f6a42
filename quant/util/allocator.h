// glibc malloc settings for a process that quantizes on the CPU.
//
// A layer's forward (and OmniQuant's backward) allocates and frees tensors of
// a few hundred KB to tens of MB at every step. With glibc's defaults those
// are mmap'd and munmap'd each time, or trimmed from the heap top, so every
// step page-faults its buffers in again: on stories260k, OmniQuant spent more
// time in the kernel than in ATen. Keeping such blocks in the heap cuts the
// system time about 3x (docs/decisions.md, 15). One arena for every thread:
// the staged calibration forward (model/staged_forward.h) runs each batch on
// a thread of its own, one at a time, and with an arena per thread each
// would keep its own freed buffers (16 batches of a 768-wide model held
// 5 GB more than one arena does). Small blocks still come from each thread's
// cache without the arena's lock. Call once, early in main(), before other
// threads start.
#ifndef QAAS_QUANT_UTIL_ALLOCATOR_H_
#define QAAS_QUANT_UTIL_ALLOCATOR_H_

namespace qaas::quant {

// Raises the mmap threshold to glibc's maximum (32 MiB), keeps up to 1 GiB
// of freed heap instead of trimming it, grows the heap 64 MiB at a time, and
// gives new threads the one arena.
// A no-op where the C library is not glibc.
void KeepTensorBuffersInTheHeap();

}  // namespace qaas::quant

#endif  // QAAS_QUANT_UTIL_ALLOCATOR_H_
