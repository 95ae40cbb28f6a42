// The devices a quantization job can run on, and what is measured of them.
//
// One code path serves both libtorch builds: Debian's CPU libtorch 1.13 and a
// CUDA libtorch (PyTorch 2.x's). Whether this binary was built against a CUDA
// libtorch is fixed at build time (QAAS_WITH_CUDA); whether a CUDA device is
// visible is asked at run time. The caller names the device ("cpu", "cuda",
// "cuda:N", or "auto" for cuda where one is visible, else cpu).
#ifndef QAAS_QUANT_UTIL_DEVICE_H_
#define QAAS_QUANT_UTIL_DEVICE_H_

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"

namespace qaas::quant {

// Whether this binary was built against a CUDA libtorch.
bool BuiltWithCuda();

// "auto" resolved: "cuda" when a CUDA device is visible, else "cpu".
std::string AutoDevice();

// Parses and checks a device name. InvalidArgument names a malformed one;
// FailedPrecondition says why a well-formed one cannot run here (a CPU-only
// build, no CUDA device visible, an index past the devices present).
absl::StatusOr<at::Device> ResolveDevice(const std::string& name);

// Total memory of a CUDA device; 0 for the CPU.
uint64_t DeviceTotalMemoryBytes(const at::Device& device);

// Peak memory over a run: call ResetPeakMemory(device) at its start and
// read the peaks at its end.
struct PeakMemory {
  // The process's resident-set high-water mark (VmHWM) since the reset;
  // nullopt where /proc cannot tell.
  std::optional<uint64_t> host_bytes;
  // CUDA: the caching allocator's peaks since the reset: bytes held by live
  // tensors, and bytes reserved from the driver (what the job occupies,
  // less the CUDA context). nullopt on the CPU.
  std::optional<uint64_t> device_allocated_bytes;
  std::optional<uint64_t> device_reserved_bytes;
};

void ResetPeakMemory(const at::Device& device);
PeakMemory ReadPeakMemory(const at::Device& device);

// Waits for the work queued on a CUDA device (for timings); no-op on the CPU.
void Synchronize(const at::Device& device);

// What decides the order in which floats are summed on the CPU, and so the
// last bits of a result (docs/decisions.md: what resume promises across
// machines): libtorch's version, the vectorised kernel set ATen dispatched to
// on this CPU ("AVX2", "AVX512", "NO AVX" for the default kernels; the variable
// ATEN_CPU_CAPABILITY can lower it) and the BLAS behind its matrix products
// (OpenBLAS names the core its kernels were chosen for).
struct ComputeEnvironment {
  std::string torch_version;   // e.g. "1.13.0"
  std::string cpu_capability;  // empty where libtorch does not say
  std::string blas;            // e.g. "OpenBLAS 0.3.21 ... (core Zen)"; empty where unknown
};
const ComputeEnvironment& DescribeComputeEnvironment();

// Two settings of the CPU runtime that its libraries read when they load,
// before main, so that a process can only set them by re-executing itself:
// - OMP_WAIT_POLICY=PASSIVE: ATen's OpenMP threads otherwise spin for a while
//   after each parallel region, on the cores OpenBLAS's own threads need for
//   the next matrix product (measured: GPTQ 10-18x slower with both pools at
//   2 threads on 2 cores).
// - OPENBLAS_CORETYPE: Debian 12's OpenBLAS (0.3.21) chooses its kernels by
//   CPU model, and on a model newer than it knows (Sapphire Rapids, say) falls
//   back to its generic SSE3 ("Prescott") kernels: matrix products 4-8x slower
//   than the CPU can do. It is set to the core that matches the CPU's features
//   (BlasCoreForThisCpu) where OpenBLAS fell back to Prescott.
// Called first thing in main: sets whichever of the two is unset and needed,
// and if it set any, re-executes the process with the same arguments (once:
// the variables are then set). A variable already set is left as it is; if
// the re-execution fails the process goes on as it was, with a note.
void PrepareCpuRuntime(char** argv);

// The core whose kernels the loaded OpenBLAS chose ("Cooperlake",
// "Prescott", ...); "" where the BLAS is not OpenBLAS.
std::string OpenBlasCore();

// The OpenBLAS core whose kernels suit this CPU's features ("Cooperlake",
// "SkylakeX", "Haswell"), or "" where the generic ones are the best it has.
std::string BlasCoreForThisCpu();

// The CPU cores this process may use: the affinity mask, capped by a cgroup
// v2 CPU quota (a Kubernetes limit) where one is set; at least 1.
int AvailableCpuCores();

// Sizes the CPU thread pools that compute a job: ATen's intra-op pool and,
// where the BLAS is OpenBLAS, its own pool. threads <= 0: AvailableCpuCores().
// Debian's libtorch starts its pool at one thread whatever the machine, so a
// process that quantizes calls this once at start. Returns the count set.
int ConfigureCpuThreads(int threads);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_UTIL_DEVICE_H_
