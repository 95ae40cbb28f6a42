// qaas-make-model: writes a random-initialised Hugging Face LLaMA checkpoint
// of any shape (for tests, benchmarks and the demo when no real model is at hand).
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "quant/model/outliers.h"
#include "quant/model/random_model.h"
#include "quant/util/files.h"

ABSL_FLAG(std::string, output, "", "directory to create");
ABSL_FLAG(int, hidden, 64, "hidden_size");
ABSL_FLAG(int, intermediate, 172, "intermediate_size");
ABSL_FLAG(int, layers, 2, "num_hidden_layers");
ABSL_FLAG(int, heads, 4, "num_attention_heads");
ABSL_FLAG(int, kv_heads, 2, "num_key_value_heads");
ABSL_FLAG(int, vocab, 512, "vocab_size");
ABSL_FLAG(int, context, 512, "max_position_embeddings");
ABSL_FLAG(std::string, dtype, "float32", "float32, float16 or bfloat16");
ABSL_FLAG(int, shards, 1, "safetensors shards (> 1 writes an index)");
ABSL_FLAG(uint64_t, seed, 0, "seed");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.model to copy");
ABSL_FLAG(std::string, tokenizer_text, "", "text file to train a BPE tokenizer on instead");
ABSL_FLAG(std::string, outliers_from, "",
          "instead of a random model: copy this model with activation-outlier channels added "
          "(function-preserving; see quant/model/outliers.h)");
ABSL_FLAG(int, outlier_channels, 4, "--outliers_from: outlier channels per norm");
ABSL_FLAG(double, outlier_min, 30, "--outliers_from: smallest scale factor");
ABSL_FLAG(double, outlier_max, 100, "--outliers_from: largest scale factor");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes a random LLaMA in Hugging Face layout (config.json, model.safetensors, a BPE tokenizer), or, with\n"
      "--outliers_from, a copy of a model with LLM-like activation outlier channels (function-preserving).");
  // --help lists this file's flags (Abseil's default looks for qaas-make-model.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return absl::EndsWith(file, "cli/qaas_make_model.cc"); };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_outliers_from).empty()) {
    if (absl::GetFlag(FLAGS_output).empty()) {
      std::cerr << "qaas-make-model: --output is required\n";
      return 2;
    }
    qaas::quant::OutlierOptions oo;
    oo.channels = absl::GetFlag(FLAGS_outlier_channels);
    oo.min_factor = absl::GetFlag(FLAGS_outlier_min);
    oo.max_factor = absl::GetFlag(FLAGS_outlier_max);
    oo.seed = absl::GetFlag(FLAGS_seed);
    auto record = qaas::quant::MakeOutlierModel(absl::GetFlag(FLAGS_outliers_from), absl::GetFlag(FLAGS_output), oo);
    if (!record.ok()) {
      std::cerr << "qaas-make-model: " << record.status() << "\n";
      return 1;
    }
    std::cout << record->dump() << "\n";
    return 0;
  }
  qaas::quant::RandomModelOptions o;
  o.hidden_size = absl::GetFlag(FLAGS_hidden);
  o.intermediate_size = absl::GetFlag(FLAGS_intermediate);
  o.num_layers = absl::GetFlag(FLAGS_layers);
  o.num_heads = absl::GetFlag(FLAGS_heads);
  o.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  o.vocab_size = absl::GetFlag(FLAGS_vocab);
  o.max_position_embeddings = absl::GetFlag(FLAGS_context);
  o.dtype = absl::GetFlag(FLAGS_dtype);
  o.shards = absl::GetFlag(FLAGS_shards);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.tokenizer_model = absl::GetFlag(FLAGS_tokenizer);
  if (!absl::GetFlag(FLAGS_tokenizer_text).empty()) {
    auto text = qaas::quant::ReadFile(absl::GetFlag(FLAGS_tokenizer_text));
    if (!text.ok()) {
      std::cerr << "qaas-make-model: " << text.status() << "\n";
      return 2;
    }
    o.tokenizer_text = *text;
  }
  if (absl::GetFlag(FLAGS_output).empty()) {
    std::cerr << "qaas-make-model: --output is required\n";
    return 2;
  }
  auto st = qaas::quant::WriteRandomLlama(o, absl::GetFlag(FLAGS_output));
  if (!st.ok()) {
    std::cerr << "qaas-make-model: " << st << "\n";
    return 1;
  }
  std::cout << absl::GetFlag(FLAGS_output) << "\n";
  return 0;
}
