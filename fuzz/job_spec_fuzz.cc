// libFuzzer target: JobSpec validation, on serialized qaas.v1.JobSpec
// messages. A spec it accepts must come back normalized: a canonical scheme
// shorthand that parses, a non-empty recipe, a model uri.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "quant/scheme.h"
#include "server/spec_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qaas::v1::JobSpec spec;
  if (!spec.ParseFromArray(data, static_cast<int>(size))) return 0;
  qaas::server::ValidationOptions options;
  options.file_roots = {"/nonexistent-qaas-fuzz-root"};
  if (!qaas::server::ValidateJobSpec(options, &spec).ok()) return 0;
  auto scheme = qaas::quant::ParseScheme(spec.scheme().shorthand());
  if (!scheme.ok() || scheme->ToString() != spec.scheme().shorthand() || spec.recipe_size() == 0 ||
      spec.model().empty()) {
    std::fprintf(stderr, "accepted a spec that is not normalized: %s\n", spec.ShortDebugString().c_str());
    std::abort();
  }
  (void)qaas::server::EstimateJobMemory(spec, options.file_roots);
  return 0;
}
