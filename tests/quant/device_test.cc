#include "quant/util/device.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "quant/pipeline.h"
#include "tests/quant/quant_test_util.h"
#include "tests/quant/random_model_fixture.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::LocalPathExists;
using ::qaas::testing::ReadLocalFile;

constexpr uint64_t kMiB = 1024 * 1024;

TEST(ResolveDeviceTest, CpuAndAutoWithoutCuda) {
  auto cpu = ResolveDevice("cpu");
  QAAS_ASSERT_OK(cpu);
  EXPECT_TRUE(cpu->is_cpu());
  auto automatic = ResolveDevice("auto");
  QAAS_ASSERT_OK(automatic);
  EXPECT_EQ(automatic->is_cuda(), at::hasCUDA());
  EXPECT_EQ(AutoDevice(), at::hasCUDA() ? "cuda" : "cpu");
  EXPECT_EQ(DeviceTotalMemoryBytes(*cpu), 0u);
}

TEST(ResolveDeviceTest, MalformedNamesAreInvalidArgumentNamingThem) {
  for (const char* name : {"", "gpu", "CUDA", "cuda0", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda: 1",
                           "cuda:1234", "cpu:0", "mps"}) {
    auto d = ResolveDevice(name);
    SCOPED_TRACE(name);
    QAAS_EXPECT_CODE(d, kInvalidArgument);
    EXPECT_TRUE(MessageHas(d, std::string("'") + name + "'"));
    EXPECT_TRUE(MessageHas(d, "cpu, cuda, cuda:N or auto"));
  }
}

TEST(ResolveDeviceTest, CudaWithoutOneSaysWhy) {
  if (at::hasCUDA()) GTEST_SKIP() << "a CUDA device is visible";
  for (const char* name : {"cuda", "cuda:0", "cuda:3"}) {
    auto d = ResolveDevice(name);
    SCOPED_TRACE(name);
    QAAS_EXPECT_CODE(d, kFailedPrecondition);
    EXPECT_TRUE(MessageHas(d, BuiltWithCuda() ? "no CUDA device is visible" : "CPU-only libtorch")) << d.status();
  }
}

TEST(ResolveDeviceTest, CudaIndexPastTheDevicesSaysHowManyThereAre) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto d = ResolveDevice("cuda:99");
  QAAS_EXPECT_CODE(d, kFailedPrecondition);
  EXPECT_TRUE(MessageHas(d, "visible"));
  auto first = ResolveDevice("cuda");
  QAAS_ASSERT_OK(first);
  EXPECT_EQ(first->index(), 0);
  EXPECT_GT(DeviceTotalMemoryBytes(*first), 1024 * kMiB);
}

TEST(PeakMemoryTest, HostPeakFollowsWhatTheProcessTouchesAndResets) {
  const at::Device cpu(at::kCPU);
  ResetPeakMemory(cpu);
  const PeakMemory before = ReadPeakMemory(cpu);
  ASSERT_TRUE(before.host_bytes.has_value()) << "no VmHWM in /proc/self/status";
  EXPECT_FALSE(before.device_allocated_bytes.has_value());
  EXPECT_FALSE(before.device_reserved_bytes.has_value());
  {
    at::Tensor big = at::ones({256 * static_cast<int64_t>(kMiB) / 4}, at::kFloat);  // 256 MiB, every page written
    EXPECT_EQ(big.sum().item<double>(), 256.0 * kMiB / 4);
  }
  const PeakMemory during = ReadPeakMemory(cpu);
  EXPECT_GE(*during.host_bytes, *before.host_bytes + 200 * kMiB);
  ResetPeakMemory(cpu);  // the tensor is freed: the new peak is what is resident now
  const PeakMemory after = ReadPeakMemory(cpu);
  EXPECT_LT(*after.host_bytes, *during.host_bytes - 100 * kMiB);
}

TEST(PeakMemoryTest, CudaPeaksComeFromTheCachingAllocator) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  ResetPeakMemory(cuda);
  {
    at::Tensor big = at::ones({64 * static_cast<int64_t>(kMiB)}, at::TensorOptions().device(cuda));  // 256 MiB
    Synchronize(cuda);
  }
  const PeakMemory p = ReadPeakMemory(cuda);
  ASSERT_TRUE(p.device_allocated_bytes.has_value());
  ASSERT_TRUE(p.device_reserved_bytes.has_value());
  EXPECT_GE(*p.device_allocated_bytes, 256 * kMiB);
  EXPECT_GE(*p.device_reserved_bytes, *p.device_allocated_bytes);
}

// The random model's pipeline run, on the devices.
class DevicePipelineTest : public RandomModelPipelineTest {};

TEST_F(DevicePipelineTest, ReportRecordsTheDeviceAndPeakMemory) {
  PipelineOptions o = Options();
  o.device = "auto";
  auto report = RunPipeline(o);
  QAAS_ASSERT_OK(report);
  const std::string device = at::hasCUDA() ? "cuda:0" : "cpu";
  const nlohmann::json j = ToJson(*report);
  EXPECT_EQ(j["environment"]["device"], device);
  const nlohmann::json& memory = j["memory"];
  // At least the libtorch runtime and the model's weights are resident.
  EXPECT_GT(memory["peak_host_bytes"].get<uint64_t>(), 10 * kMiB);
  EXPECT_EQ(memory.contains("peak_device_reserved_bytes"), at::hasCUDA());
  EXPECT_EQ(memory.contains("peak_device_allocated_bytes"), at::hasCUDA());
  EXPECT_NE(ReadLocalFile(o.output_dir + "/report.md").find("- peak host memory: "), std::string::npos);
  // What fixes the CPU's summation order is recorded: the kernel set ATen
  // dispatched to and the BLAS (Debian's libtorch reports both).
  const nlohmann::json& env = j["environment"];
  EXPECT_EQ(env["torch_version"], DescribeComputeEnvironment().torch_version);
  EXPECT_FALSE(env["torch_version"].get<std::string>().empty());
  EXPECT_FALSE(env["cpu_capability"].get<std::string>().empty());
  EXPECT_FALSE(env["blas"].get<std::string>().empty());
}

// ATEN_CPU_CAPABILITY lowers the kernel set (scripts/test reruns the numeric
// suites that way); the report says which one ran.
// --threads: both pools follow it, and 0 means the cores this process may
// use (its affinity, capped by a cgroup quota), at least one.
TEST(CpuThreadsTest, ConfigureSizesTheAtenPoolAndZeroMeansTheAvailableCores) {
  const int cores = AvailableCpuCores();
  EXPECT_GE(cores, 1);
  EXPECT_LE(static_cast<unsigned>(cores), std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(ConfigureCpuThreads(1), 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(ConfigureCpuThreads(0), cores);
  EXPECT_EQ(at::get_num_threads(), cores);
}

// The OpenBLAS core named for a CPU matches its features: an AVX-512 core
// only where AVX-512 is there, none without AVX2 (the generic kernels are
// then the best OpenBLAS has).
TEST(CpuThreadsTest, BlasCoreFollowsTheCpuFeatures) {
  __builtin_cpu_init();
  const std::string core = BlasCoreForThisCpu();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    EXPECT_TRUE(core == "SkylakeX" || core == "Cooperlake") << core;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_EQ(core, "Haswell");
  } else {
    EXPECT_EQ(core, "");
  }
}

TEST(ComputeEnvironmentTest, CapabilityFollowsAtenCpuCapability) {
  const char* requested = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string capability = DescribeComputeEnvironment().cpu_capability;
  ASSERT_FALSE(capability.empty());
  if (requested && std::string(requested) == "default") EXPECT_EQ(capability, "NO AVX");
  if (requested && std::string(requested) == "avx2") EXPECT_EQ(capability, "AVX2");
}

TEST_F(DevicePipelineTest, UnavailableDeviceFailsBeforeWritingAnything) {
  if (at::hasCUDA()) GTEST_SKIP() << "a CUDA device is visible";
  PipelineOptions o = Options();
  o.device = "cuda";
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kFailedPrecondition);
  EXPECT_TRUE(MessageHas(report, "device 'cuda'"));
  EXPECT_FALSE(LocalPathExists(o.output_dir));

  o.device = "tpu";
  report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "device 'tpu'"));
  EXPECT_FALSE(LocalPathExists(o.output_dir));
}

}  // namespace
}  // namespace qaas::quant
