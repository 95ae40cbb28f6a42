#include "quant/data/text_dataset.h"

#include <random>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

absl::StatusOr<std::string> LoadDatasetText(const std::string& path) {
  QAAS_ASSIGN_OR_RETURN(auto raw, ReadFile(path));
  std::string text;
  if (absl::EndsWith(path, ".jsonl")) {
    std::istringstream lines(raw);
    std::string line;
    int number = 0;
    while (std::getline(lines, line)) {
      ++number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("text") || !j["text"].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": line ", number, " is not a JSON object with a \"text\" string"));
      }
      if (!text.empty()) text += "\n\n";
      text += j["text"].get<std::string>();
    }
  } else {
    text = std::move(raw);
  }
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": dataset text is empty"));
  }
  return text;
}

absl::StatusOr<at::Tensor> SampleCalibrationWindows(const std::vector<int>& tokens, int num_samples,
                                                    int seq_len, uint64_t seed) {
  if (seq_len <= 0 || num_samples <= 0) {
    return absl::InvalidArgumentError("calibration needs num_samples > 0 and seq_len > 0");
  }
  if (tokens.size() < static_cast<size_t>(seq_len) + 1) {
    return absl::InvalidArgumentError(absl::StrCat("calibration text has ", tokens.size(),
                                                   " tokens; seq_len ", seq_len, " needs at least ",
                                                   seq_len + 1));
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> start(0, tokens.size() - seq_len - 1);
  at::Tensor out = at::empty({num_samples, seq_len}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = out.data_ptr<int64_t>();
  for (int s = 0; s < num_samples; ++s) {
    const size_t i = start(rng);
    for (int t = 0; t < seq_len; ++t) p[int64_t{s} * seq_len + t] = tokens[i + t];
  }
  return out;
}

absl::StatusOr<at::Tensor> MakeEvaluationWindows(const std::vector<int>& tokens, int seq_len,
                                                 int max_windows) {
  if (seq_len < 2) return absl::InvalidArgumentError("evaluation seq_len must be at least 2");
  int64_t windows = static_cast<int64_t>(tokens.size()) / seq_len;
  if (max_windows > 0 && windows > max_windows) windows = max_windows;
  if (windows == 0) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation text has ", tokens.size(),
                                                   " tokens, fewer than one window of ", seq_len));
  }
  at::Tensor out = at::empty({windows, seq_len}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < windows * seq_len; ++i) p[i] = tokens[i];
  return out;
}

}  // namespace qaas::quant
