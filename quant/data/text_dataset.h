// Text datasets for calibration and evaluation: plain text files, or JSONL
// with one {"text": ...} object per line.
#ifndef QAAS_QUANT_DATA_TEXT_DATASET_H_
#define QAAS_QUANT_DATA_TEXT_DATASET_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace qaas::quant {

// The text of a dataset file. ".jsonl" files are joined with blank lines.
// InvalidArgument for an empty file or a malformed JSONL line (naming the line).
absl::StatusOr<std::string> LoadDatasetText(const std::string& path);

// GPTQ's calibration protocol: `num_samples` windows of `seq_len` tokens at
// uniformly random offsets (std::mt19937_64 seeded with `seed`). int64
// [num_samples, seq_len]. InvalidArgument when the text is shorter than
// seq_len + 1 tokens.
absl::StatusOr<at::Tensor> SampleCalibrationWindows(const std::vector<int>& tokens, int num_samples,
                                                    int seq_len, uint64_t seed);

// The perplexity protocol of shared/data/README.md: the token stream (caller
// adds BOS) cut into non-overlapping windows of seq_len, the remainder
// dropped; at most max_windows (0 = all). int64 [windows, seq_len].
absl::StatusOr<at::Tensor> MakeEvaluationWindows(const std::vector<int>& tokens, int seq_len,
                                                 int max_windows);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_DATA_TEXT_DATASET_H_
