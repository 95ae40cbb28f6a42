// Validation of a submitted JobSpec: everything that can be checked without
// running the model (the job contract of docs/api.md).
#ifndef QAAS_SERVER_SPEC_VALIDATION_H_
#define QAAS_SERVER_SPEC_VALIDATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "qaas/v1/job.pb.h"

namespace qaas::server {

struct ValidationOptions {
  // file:// uris must resolve inside one of these absolute directories.
  std::vector<std::string> file_roots;
  // Where a job's zero-shot task files are when its tasks.data is empty
  // (qaas-server --task_data); "" = the job must name them.
  std::string default_task_data;
};

// Checks `spec` and fills its defaults in place: a preset becomes its recipe
// steps, the scheme gets its structured fields and canonical shorthand,
// calibration.num_samples defaults to 128.
//
// InvalidArgument names the field and the value (unknown scheme token, uri
// outside the allowed roots, model directory without config.json, a recipe
// option out of the method table's bounds: "recipe[0].gptq.damp: ...").
// Unimplemented: per-tensor FP8 weights (not implemented).
// Zero-shot tasks: each name one of quant::KnownTasks() (INVALID_ARGUMENT
// naming an unknown one), tasks.data (default: options.default_task_data,
// filled in) required and each task's file (TaskFileUri) checked as a dataset.
absl::Status ValidateJobSpec(const ValidationOptions& options, v1::JobSpec* spec);

// EstimatePipelineMemory (server/placement.h) for a validated spec: the
// model's shape from its config.json and the evaluation sets' and task
// files' sizes (a file of B bytes counted as B/4 tokens unless max_windows or
// the task limit bounds it). 0 when the
// config cannot be read here (an s3:// model, one outside `roots`, or one
// that does not parse: the worker reports that). Files are read beneath the
// roots, as the worker reads them.
uint64_t EstimateJobMemory(const v1::JobSpec& spec, const std::vector<std::string>& roots);

// Checks a file:// or s3:// uri; file uris must resolve inside `roots`.
absl::Status ValidateUri(const std::string& field, const std::string& uri,
                         const std::vector<std::string>& roots);

}  // namespace qaas::server

#endif  // QAAS_SERVER_SPEC_VALIDATION_H_
