// main() of the test binaries that compute: the CPU runtime a worker process
// runs under (quant/util/device.h: PrepareCpuRuntime, ConfigureCpuThreads),
// so that what a test computes in process matches what the qaas-worker
// processes it starts compute, bit for bit, and the suites run with the
// kernels production uses.
#include <gtest/gtest.h>

#include "quant/util/device.h"

int main(int argc, char** argv) {
  qaas::quant::PrepareCpuRuntime(argv);  // first: may re-execute the process
  qaas::quant::ConfigureCpuThreads(0);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
