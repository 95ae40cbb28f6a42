#include "quant/util/device.h"

#include <dlfcn.h>
#include <link.h>
#include <sched.h>
#include <unistd.h>
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifdef QAAS_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace qaas::quant {
namespace {

int CudaDeviceCount() {
#ifdef QAAS_WITH_CUDA
  return at::hasCUDA() ? static_cast<int>(c10::cuda::device_count()) : 0;
#else
  return 0;
#endif
}

// VmHWM from /proc/self/status, in bytes.
std::optional<uint64_t> HostPeakBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view v(line);
    if (!absl::ConsumePrefix(&v, "VmHWM:")) continue;
    v = absl::StripAsciiWhitespace(v);
    if (!absl::ConsumeSuffix(&v, "kB")) return std::nullopt;
    uint64_t kib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &kib)) return std::nullopt;
    return kib * 1024;
  }
  return std::nullopt;
}

// "CPU capability usage: AVX2" from libtorch's build and run-time summary.
std::string CpuCapability() {
  std::istringstream config(at::show_config());
  std::string line;
  while (std::getline(config, line)) {
    // "  - CPU capability usage: AVX2" ("NO AVX" for the default kernels)
    const size_t at = line.find("CPU capability usage:");
    if (at != std::string::npos) {
      return std::string(absl::StripAsciiWhitespace(line.substr(at + std::strlen("CPU capability usage:"))));
    }
  }
  return "";
}

}  // namespace

std::string OpenBlasCore() {
  using Getter = char* (*)();
  auto corename = reinterpret_cast<Getter>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return corename ? corename() : "";
}

namespace {

// OpenBLAS says what it is and which core's kernels it chose; any other BLAS
// is named by the library file loaded for it.
std::string BlasDescription() {
  using Getter = char* (*)();
  if (auto config = reinterpret_cast<Getter>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    std::string s = absl::StrCat("OpenBLAS ", absl::StripAsciiWhitespace(config()));
    if (const std::string core = OpenBlasCore(); !core.empty()) absl::StrAppend(&s, " (core ", core, ")");
    return s;
  }
  std::string found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        if (name.find("blas") != std::string::npos || name.find("mkl") != std::string::npos) {
          *static_cast<std::string*>(out) = name;
          return 1;
        }
        return 0;
      },
      &found);
  return found;
}

}  // namespace

const ComputeEnvironment& DescribeComputeEnvironment() {
  static const ComputeEnvironment* env = [] {
    auto* e = new ComputeEnvironment;
    e->torch_version = absl::StrCat(TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR, ".", TORCH_VERSION_PATCH);
    e->cpu_capability = CpuCapability();
    e->blas = BlasDescription();
    return e;
  }();
  return *env;
}

bool BuiltWithCuda() {
#ifdef QAAS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string AutoDevice() { return CudaDeviceCount() > 0 ? "cuda" : "cpu"; }

absl::StatusOr<at::Device> ResolveDevice(const std::string& name) {
  if (name == "auto") return ResolveDevice(AutoDevice());
  if (name == "cpu") return at::Device(at::kCPU);
  absl::string_view rest(name);
  if (!absl::ConsumePrefix(&rest, "cuda")) {
    return absl::InvalidArgumentError(absl::StrCat("device '", name, "': expected cpu, cuda, cuda:N or auto"));
  }
  int index = 0;
  if (!rest.empty()) {
    if (!absl::ConsumePrefix(&rest, ":") || rest.empty() || rest.size() > 3 ||
        !std::all_of(rest.begin(), rest.end(), absl::ascii_isdigit) || !absl::SimpleAtoi(rest, &index)) {
      return absl::InvalidArgumentError(absl::StrCat("device '", name, "': expected cpu, cuda, cuda:N or auto"));
    }
  }
  if (!BuiltWithCuda()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", name, "': this build uses a CPU-only libtorch; build against a CUDA libtorch (README, GPU)"));
  }
  const int count = CudaDeviceCount();
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrCat("device '", name, "': no CUDA device is visible"));
  }
  if (index >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", name, "': only ", count, " CUDA device", count == 1 ? " is" : "s are", " visible"));
  }
  return at::Device(at::kCUDA, static_cast<at::DeviceIndex>(index));
}

uint64_t DeviceTotalMemoryBytes(const at::Device& device) {
#ifdef QAAS_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device.has_index() ? device.index() : 0) == cudaSuccess) {
      return prop.totalGlobalMem;
    }
  }
#endif
  return 0;
}

void ResetPeakMemory(const at::Device& device) {
  // "5" resets the peak resident set size (Linux 4.0+); where refused, the
  // peak is the process's since it started.
  std::ofstream("/proc/self/clear_refs") << "5";
#ifdef QAAS_WITH_CUDA
  if (device.is_cuda()) {
    // The caching allocator sets a device up at its first allocation; its
    // statistics calls reject a device it has not seen.
    at::empty({1}, at::TensorOptions().device(device));
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
  }
#endif
}

PeakMemory ReadPeakMemory(const at::Device& device) {
  PeakMemory p;
  p.host_bytes = HostPeakBytes();
#ifdef QAAS_WITH_CUDA
  if (device.is_cuda()) {
    at::empty({1}, at::TensorOptions().device(device));  // as in ResetPeakMemory
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    // StatType::AGGREGATE (all pools): index 0 in every libtorch; the enum
    // moved between namespaces in 2.x, the index did not.
    constexpr size_t kAll = 0;
    p.device_allocated_bytes = static_cast<uint64_t>(stats.allocated_bytes[kAll].peak);
    p.device_reserved_bytes = static_cast<uint64_t>(stats.reserved_bytes[kAll].peak);
  }
#endif
  return p;
}

void Synchronize(const at::Device& device) {
#ifdef QAAS_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
}

std::string BlasCoreForThisCpu() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512) return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return "";
}

void PrepareCpuRuntime(char** argv) {
  bool changed = false;
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", /*overwrite=*/0);
    changed = true;
  }
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr && absl::AsciiStrToLower(OpenBlasCore()) == "prescott") {
    const std::string core = BlasCoreForThisCpu();
    if (!core.empty()) {
      setenv("OPENBLAS_CORETYPE", core.c_str(), /*overwrite=*/0);
      changed = true;
    }
  }
  if (!changed) return;
  execv("/proc/self/exe", argv);
  // Still here: exec failed; go on as loaded.
  std::fprintf(stderr,
               "note: could not re-execute with OMP_WAIT_POLICY / OPENBLAS_CORETYPE set (%s); set them in the "
               "environment for faster CPU runs (docs/decisions.md)\n",
               std::strerror(errno));
}

int AvailableCpuCores() {
  int cores = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cores = CPU_COUNT(&set);
  if (cores <= 0) cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // cgroup v2: "max 100000" (no limit) or "<quota> <period>".
  std::ifstream f("/sys/fs/cgroup/cpu.max");
  std::string quota, period;
  if (f >> quota >> period && quota != "max") {
    int64_t q = 0, p = 0;
    if (absl::SimpleAtoi(quota, &q) && absl::SimpleAtoi(period, &p) && q > 0 && p > 0) {
      cores = std::min<int64_t>(cores, std::max<int64_t>(1, (q + p - 1) / p));
    }
  }
  return std::max(1, cores);
}

int ConfigureCpuThreads(int threads) {
  if (threads <= 0) threads = AvailableCpuCores();
  at::set_num_threads(threads);
  using Setter = void (*)(int);
  if (auto set = reinterpret_cast<Setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(threads);
  return threads;
}

}  // namespace qaas::quant
