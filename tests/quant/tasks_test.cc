// Zero-shot tasks against lm-evaluation-harness 0.4.13 itself
// (tests/data/task_reference, scripts/reference/make_task_references.py):
// the same requests and token ids, per-request log-likelihoods equal to
// 1e-4 (relative for large sums), and the same acc / acc_norm counts; the
// metrics and standard errors computed as the harness computes them; the
// packed forward equal to request-by-request forwards; bad task files.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <fstream>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "quant/eval/task_eval.h"
#include "quant/eval/tasks.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/tokenizer.h"
#include "quant/pipeline.h"
#include "tests/quant/quant_test_util.h"

namespace qaas::quant {
namespace {

std::string TasksDir() { return ::qaas::testing::SharedDir() + "/data/tasks"; }

const nlohmann::json& TaskReference(const std::string& model) {
  static std::map<std::string, nlohmann::json>* refs = new std::map<std::string, nlohmann::json>();
  auto it = refs->find(model);
  if (it == refs->end()) {
    it = refs->emplace(model, nlohmann::json::parse(::qaas::testing::ReadLocalFile(
                                  ReferencePath("task_reference/" + model + ".json"))))
             .first;
  }
  return it->second;
}

std::string IdsHash(const EncodedRequest& e) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const std::vector<int>* v : {&e.context, &e.continuation}) {
    for (int id : *v) {
      const uint32_t u = static_cast<uint32_t>(id);
      for (int b = 0; b < 4; ++b) {
        h ^= (u >> (8 * b)) & 0xffu;
        h *= 0x100000001b3ull;
      }
    }
  }
  return absl::StrFormat("%016x", h);
}

// The model's float forward over the tasks, layer by layer as the pipeline
// runs it.
std::vector<std::vector<std::vector<RequestScore>>> ForwardAll(const std::string& model_dir,
                                                                const TaskEvaluator& ev) {
  c10::NoGradGuard no_grad;
  auto ck = Checkpoint::Open(model_dir);
  EXPECT_TRUE(ck.ok()) << ck.status();
  auto model = DecoderModel::Create(**ck, at::kCPU, ev.max_length());
  EXPECT_TRUE(model.ok()) << model.status();
  std::vector<at::Tensor> hidden = ev.Embed(**model);
  for (int i = 0; i < (*ck)->config().num_layers; ++i) {
    auto layer = (*model)->LoadLayer(i);
    EXPECT_TRUE(layer.ok()) << layer.status();
    ev.Forward(**model, *layer, &hidden);
  }
  auto scores = ev.Score(**model, hidden);
  EXPECT_TRUE(scores.ok()) << scores.status();
  return *scores;
}

// Every task of the reference file of `model` (stories260k or tiny-opt).
void CheckAgainstHarness(const std::string& model, const std::string& model_dir) {
  const nlohmann::json& ref = TaskReference(model);
  auto tokenizer = Tokenizer::Load(model_dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<TaskInput> inputs;
  std::vector<const nlohmann::json*> refs;
  for (const TaskInfo& task : KnownTasks()) {
    ASSERT_TRUE(ref["tasks"].contains(task.name)) << task.name;
    const nlohmann::json& r = ref["tasks"][task.name];
    const int64_t limit = r["limit"].is_null() ? 0 : r["limit"].get<int64_t>();
    auto docs = LoadTaskDocs(task, TasksDir() + "/" + task.data_file, task.name, limit);
    ASSERT_TRUE(docs.ok()) << docs.status();
    ASSERT_EQ(docs->size(), r["docs"].size()) << task.name;
    inputs.push_back(EncodeTask(task, task.name, *std::move(docs), **tokenizer));
    refs.push_back(&r);
  }
  // The requests, tokenized as the harness tokenizes them.
  for (size_t t = 0; t < inputs.size(); ++t) {
    const nlohmann::json& docs = (*refs[t])["docs"];
    int mismatches = 0;
    for (size_t d = 0; d < inputs[t].docs.size(); ++d) {
      ASSERT_EQ(inputs[t].encoded[d].size(), docs[d]["ll"].size()) << inputs[t].name << " doc " << d;
      if (inputs[t].task->multiple_choice) {
        EXPECT_EQ(inputs[t].docs[d].gold, docs[d]["gold"].get<int>());
      }
      for (size_t r = 0; r < inputs[t].encoded[d].size(); ++r) {
        const EncodedRequest& e = inputs[t].encoded[d][r];
        mismatches += e.context.size() != docs[d]["ctx_tokens"][r].get<size_t>() ||
                      e.continuation.size() != docs[d]["cont_tokens"][r].get<size_t>() ||
                      IdsHash(e) != docs[d]["ids_hash"][r].get<std::string>();
      }
    }
    EXPECT_EQ(mismatches, 0) << inputs[t].name << ": requests tokenized differently from the harness";
  }
  const int64_t max_length = ref["max_length"].get<int64_t>();
  auto ev = TaskEvaluator::Create(inputs, max_length, 4096, at::kCPU);
  ASSERT_TRUE(ev.ok()) << ev.status();
  const auto scores = ForwardAll(model_dir, *ev);
  int64_t truncated_seen = 0;
  for (size_t t = 0; t < inputs.size(); ++t) {
    const TaskInfo& task = *inputs[t].task;
    const nlohmann::json& r = *refs[t];
    const nlohmann::json& docs = r["docs"];
    int64_t truncated = 0;
    double worst = 0;
    for (size_t d = 0; d < inputs[t].docs.size(); ++d) {
      for (size_t q = 0; q < scores[t][d].size(); ++q) {
        const double want = docs[d]["ll"][q].get<double>();
        // float32 sums of up to hundreds of log-probabilities: 1e-4, relative beyond magnitude 1.
        const double err = std::abs(scores[t][d][q].ll - want) / std::max(1.0, std::abs(want));
        worst = std::max(worst, err);
        EXPECT_LE(err, 1e-4) << task.name << " doc " << d << " request " << q << ": " << scores[t][d][q].ll
                             << " vs the harness's " << want;
        EXPECT_EQ(scores[t][d][q].greedy, docs[d]["greedy"][q].get<bool>()) << task.name << " doc " << d;
        truncated += docs[d]["truncated"][q].get<bool>();
      }
    }
    EXPECT_EQ(ev->stats()[t].truncated, truncated) << task.name;
    truncated_seen += truncated;
    // The same counts, hence the same metrics; stderr as the harness's.
    const TaskScores s = ScoreTask(task, inputs[t].docs, scores[t]);
    const nlohmann::json& m = r["metrics"];
    const double n = static_cast<double>(s.docs);
    ASSERT_TRUE(s.acc.has_value());
    EXPECT_EQ(std::lround(s.acc->value * n), std::lround(m["acc"].get<double>() * n)) << task.name << " acc count";
    EXPECT_NEAR(s.acc->value, m["acc"].get<double>(), 1e-12) << task.name;
    EXPECT_NEAR(s.acc->stderr_, m["acc_stderr"].get<double>(), 1e-12) << task.name;
    EXPECT_EQ(s.acc_norm.has_value(), m.contains("acc_norm")) << task.name;
    if (s.acc_norm) {
      EXPECT_EQ(std::lround(s.acc_norm->value * n), std::lround(m["acc_norm"].get<double>() * n))
          << task.name << " acc_norm count";
      EXPECT_NEAR(s.acc_norm->stderr_, m["acc_norm_stderr"].get<double>(), 1e-12) << task.name;
    }
    EXPECT_EQ(s.perplexity.has_value(), m.contains("perplexity")) << task.name;
    if (s.perplexity) {
      // exp of a mean of lls each within 1e-4 relative: the same to 1e-3 relative.
      EXPECT_NEAR(s.perplexity->value / m["perplexity"].get<double>(), 1.0, 1e-3) << task.name;
      EXPECT_NEAR(s.perplexity->stderr_ / m["perplexity_stderr"].get<double>(), 1.0, 1e-2) << task.name;
    }
    std::cout << model << " " << task.name << ": " << s.docs << " docs, worst ll difference " << worst << "\n";
  }
  if (model == "tiny-opt") {
    EXPECT_GT(truncated_seen, 0) << "the tiny model's 128 positions truncate requests";
  }
}

TEST(TasksTest, TinyOptEqualsTheHarness) {
  QAAS_REQUIRE_SHARED();  // the task files
  CheckAgainstHarness("tiny-opt", TinyOptDir());
}

TEST(TasksTest, Stories260kEqualsTheHarness) {
  QAAS_REQUIRE_SHARED();
  CheckAgainstHarness("stories260k", Stories260kDir());
}

// The harness's bootstrap from the harness's own per-document lls: the same
// Python random stream, so the same standard error to rounding.
TEST(TasksTest, BootstrapStderrIsTheHarnesss) {
  for (const char* model : {"stories260k", "tiny-opt"}) {
    const nlohmann::json& r = TaskReference(model)["tasks"]["lambada_openai"];
    std::vector<double> lls;
    for (const auto& d : r["docs"]) lls.push_back(d["ll"][0].get<double>());
    const double want = r["metrics"]["perplexity_stderr"].get<double>();
    EXPECT_NEAR(BootstrapPerplexityStderr(lls, 100000) / want, 1.0, 1e-9) << model;
  }
}

// Python's random.Random(0).random() and Random(1).random(), first values.
TEST(TasksTest, PythonRandomMatchesCPython) {
  EXPECT_DOUBLE_EQ(PythonRandom(0).Random(), 0.8444218515250481);
  EXPECT_DOUBLE_EQ(PythonRandom(1).Random(), 0.13436424411240122);
  PythonRandom r(42);
  EXPECT_DOUBLE_EQ(r.Random(), 0.6394267984578837);
  EXPECT_DOUBLE_EQ(r.Random(), 0.025010755222666936);
}

TEST(TasksTest, StringHelpersFollowPython) {
  EXPECT_EQ(PyStrip("\t a b \n\xc2\xa0"), "a b");  // U+00A0 is whitespace
  EXPECT_EQ(PyStrip("\x1f" "x"), "x");            // so is U+001F, for Python
  EXPECT_EQ(PyStrip(" \t\n"), "");
  EXPECT_EQ(CodePoints("caf\xc3\xa9"), 4);
  EXPECT_EQ(HellaswagPreprocess("[title] Earn money."), " Earn money.");
  EXPECT_EQ(HellaswagPreprocess("Do it [step] now [title] Go"), "Do it now. Go");
  EXPECT_EQ(HellaswagPreprocess("a [b\n] c"), "a [b\n] c");  // no newline inside a bracket
  EXPECT_EQ(HellaswagPreprocess("a   b"), "a  b");            // one pass of "  " -> " "
}

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(TasksTest, BadTaskFilesNameFileLineAndField) {
  const TaskInfo& piqa = *FindTask("piqa");
  const std::string good = R"({"goal": "g", "sol1": "a", "sol2": "b", "label": 0})";
  auto missing = LoadTaskDocs(piqa, WriteTemp("piqa_missing.jsonl", good + "\n\n" + R"({"goal": "g", "sol1": "a", "label": 1})" "\n"),
                              "s3://bucket/piqa.jsonl", 0);
  EXPECT_TRUE(MessageHas(missing, "s3://bucket/piqa.jsonl line 3: field 'sol2' is missing"));
  auto type = LoadTaskDocs(piqa, WriteTemp("piqa_type.jsonl", R"({"goal": 3, "sol1": "a", "sol2": "b", "label": 0})"),
                           "piqa.jsonl", 0);
  EXPECT_TRUE(MessageHas(type, "line 1: field 'goal' is not a string"));
  auto gold = LoadTaskDocs(piqa, WriteTemp("piqa_gold.jsonl", R"({"goal": "g", "sol1": "a", "sol2": "b", "label": 2})"),
                           "piqa.jsonl", 0);
  EXPECT_TRUE(MessageHas(gold, "field 'label' is 2, not the index of one of the 2 choices"));
  auto json = LoadTaskDocs(piqa, WriteTemp("piqa_json.jsonl", good + "\n{not json\n"), "piqa.jsonl", 0);
  EXPECT_TRUE(MessageHas(json, "piqa.jsonl line 2: not a JSON object"));
  auto empty = LoadTaskDocs(piqa, WriteTemp("piqa_empty.jsonl", "\n"), "piqa.jsonl", 0);
  EXPECT_TRUE(MessageHas(empty, "piqa.jsonl: no piqa document"));
  const TaskInfo& arc = *FindTask("arc_easy");
  auto key = LoadTaskDocs(
      arc, WriteTemp("arc.jsonl", R"({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"})"),
      "arc.jsonl", 0);
  EXPECT_TRUE(MessageHas(key, "field 'answerKey' 'C' is not one of choices.label"));
  auto label = LoadTaskDocs(arc, WriteTemp("arc2.jsonl", R"({"question": "q", "choices": {"text": ["a"]}, "answerKey": "A"})"),
                            "arc.jsonl", 0);
  EXPECT_TRUE(MessageHas(label, "field 'choices.label' is missing"));
  // A limit reads only that many documents: a bad line after them is not read.
  auto limited = LoadTaskDocs(piqa, WriteTemp("piqa_limit.jsonl", good + "\n{broken\n"), "piqa.jsonl", 1);
  ASSERT_TRUE(limited.ok()) << limited.status();
  EXPECT_EQ(limited->size(), 1u);
  EXPECT_EQ(FindTask("squad"), nullptr);
}

// The packed batches (shared contexts, padding, truncation) give every
// request the log-likelihood of its own forward: the same scores as one
// request per batch without sharing, to float rounding.
TEST(TasksTest, PackingEqualsRequestByRequest) {
  QAAS_REQUIRE_SHARED();
  auto tokenizer = Tokenizer::Load(TinyOptDir());
  ASSERT_TRUE(tokenizer.ok());
  std::vector<TaskInput> packed, single;
  for (const char* name : {"hellaswag", "boolq", "winogrande"}) {
    const TaskInfo& task = *FindTask(name);
    auto docs = LoadTaskDocs(task, TasksDir() + "/" + task.data_file, name, 6);
    ASSERT_TRUE(docs.ok()) << docs.status();
    packed.push_back(EncodeTask(task, name, *docs, **tokenizer));
    // One document per request: nothing shared.
    for (const TaskDoc& d : *docs) {
      for (const TaskRequest& r : d.requests) {
        TaskDoc alone = d;
        alone.requests = {r};
        single.push_back(EncodeTask(task, name, {alone}, **tokenizer));
      }
    }
  }
  auto a = TaskEvaluator::Create(packed, 128, 2048, at::kCPU);
  auto b = TaskEvaluator::Create(single, 128, 1, at::kCPU);  // a batch per sequence: no padding
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LT(a->stats()[0].tokens, a->stats()[0].request_tokens) << "hellaswag's contexts are shared";
  EXPECT_GT(a->stats()[1].truncated, 0) << "boolq's passages exceed 128 tokens";
  const auto sa = ForwardAll(TinyOptDir(), *a);
  const auto sb = ForwardAll(TinyOptDir(), *b);
  size_t k = 0;
  for (size_t t = 0; t < sa.size(); ++t) {
    for (const auto& doc : sa[t]) {
      for (const RequestScore& s : doc) {
        const RequestScore& want = sb[k++][0][0];
        EXPECT_NEAR(s.ll, want.ll, 1e-4 * std::max(1.0, std::abs(want.ll)));
        EXPECT_EQ(s.greedy, want.greedy);
      }
    }
  }
  EXPECT_EQ(k, sb.size());
}

// The pipeline's "before" is the harness's figure: a job on tiny-opt with
// winogrande and boolq (whose passages the 128 positions truncate) reports
// the harness's acc counts for the original model; its quantized model
// (RTN W8) stays close; the report's tables name every task.
TEST(TasksTest, PipelineReportsTheHarnesssOriginalAccuracy) {
  QAAS_REQUIRE_SHARED();
  ::qaas::testing::ScopedTempDir dir;
  PipelineOptions o;
  o.model_dir = TinyOptDir();
  o.output_dir = dir.path() + "/out";
  o.scheme = MustParse("W8A16");
  o.device = "cpu";
  const int64_t limit = 50;
  for (const char* name : {"winogrande", "boolq"}) {
    const TaskInfo& task = *FindTask(name);
    o.tasks.push_back({name, TasksDir() + "/" + task.data_file, std::string("file:///tasks/") + task.data_file});
  }
  o.task_limit = limit;
  auto report = RunPipeline(o);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_TRUE(report->tasks.has_value());
  EXPECT_EQ(report->tasks->max_length, 128);
  ASSERT_EQ(report->tasks->tasks.size(), 2u);
  for (size_t t = 0; t < 2; ++t) {
    const TaskReport& r = report->tasks->tasks[t];
    const nlohmann::json& docs = TaskReference("tiny-opt")["tasks"][r.task]["docs"];
    int want = 0;
    for (int64_t d = 0; d < limit; ++d) want += docs[d]["acc"].get<int>();
    EXPECT_EQ(r.docs, limit);
    ASSERT_EQ(r.metrics.size(), 1u);
    EXPECT_EQ(r.metrics[0].metric, "acc");
    EXPECT_EQ(std::lround(r.metrics[0].original * limit), want) << r.task;
    // 8-bit weights move a few near-ties at most.
    EXPECT_LE(r.changed_docs, limit / 5) << r.task;
    EXPECT_NEAR(r.metrics[0].quantized, r.metrics[0].original, 0.2) << r.task;
  }
  EXPECT_GT(report->tasks->tasks[1].truncated_requests, 0);
  const std::string md = ToMarkdown(*report);
  EXPECT_NE(md.find("| winogrande | 50 | acc |"), std::string::npos) << md;
  EXPECT_NE(md.find("| boolq | 50 | acc |"), std::string::npos) << md;
  const nlohmann::json j = ToJson(*report);
  EXPECT_EQ(j["tasks"]["results"][0]["data"], "file:///tasks/winogrande.validation.jsonl");
  EXPECT_GT(j["tasks"]["tokens_per_second"].get<double>(), 0);
}

// A packed sequence (a shared prefix, two continuations at the positions
// they have after it) gives each continuation the hidden states of its own
// causal forward, in every family's forward: sliding windows shorter than
// the sequence (Mistral, Gemma 2/3), Gemma 3's local RoPE, Gemma 2's
// softcap, Phi-3's partial rotary, mixtures of experts.
TEST(TasksTest, PackedLayoutEqualsCausalForwardsInEveryFamily) {
  c10::NoGradGuard no_grad;
  for (const char* family : {"llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral",
                             "qwen2-moe", "llama-dynamic", "llama-longrope"}) {
    SCOPED_TRACE(family);
    auto ck = Checkpoint::Open(ReferencePath(std::string("families/") + family));
    ASSERT_TRUE(ck.ok()) << ck.status();
    auto model = DecoderModel::Create(**ck, at::kCPU, 32);
    ASSERT_TRUE(model.ok()) << model.status();
    const int64_t P = 10, N = 6, vocab = (*ck)->config().vocab_size;
    at::manual_seed(3);
    const at::Tensor prefix = at::randint(vocab, {P}, at::kLong), x = at::randint(vocab, {N}, at::kLong),
                     y = at::randint(vocab, {N}, at::kLong);
    const at::Tensor a = at::cat({prefix, x}).unsqueeze(0), b = at::cat({prefix, y}).unsqueeze(0);
    TokenLayout layout;
    layout.positions = at::cat({at::arange(P), at::arange(P, P + N), at::arange(P, P + N)}).unsqueeze(0);
    layout.branches = at::cat({at::zeros({P}, at::kLong), at::ones({N}, at::kLong), at::full({N}, 2, at::kLong)})
                          .unsqueeze(0);
    layout.max_position = P + N;
    at::Tensor ha = (*model)->Embed(a), hb = (*model)->Embed(b);
    at::Tensor hp = (*model)->Embed(at::cat({prefix, x, y}).unsqueeze(0), layout);
    for (int i = 0; i < (*ck)->config().num_layers; ++i) {
      auto layer = (*model)->LoadLayer(i);
      ASSERT_TRUE(layer.ok()) << layer.status();
      ha = (*model)->LayerForward(*layer, ha);
      hb = (*model)->LayerForward(*layer, hb);
      hp = (*model)->LayerForward(*layer, hp, layout);
    }
    const double scale = ha.abs().max().item<double>();
    EXPECT_TRUE(at::allclose(hp.narrow(1, 0, P + N), ha, 1e-4, 1e-5 * scale)) << (hp.narrow(1, 0, P + N) - ha).abs().max();
    EXPECT_TRUE(at::allclose(hp.narrow(1, P + N, N), hb.narrow(1, P, N), 1e-4, 1e-5 * scale))
        << (hp.narrow(1, P + N, N) - hb.narrow(1, P, N)).abs().max();
  }
}

TEST(TasksTest, ContinuationLongerThanMaxLengthIsRefused) {
  auto tokenizer = Tokenizer::Load(TinyOptDir());
  ASSERT_TRUE(tokenizer.ok());
  TaskDoc doc;
  doc.requests = {{"Question: q\nAnswer:", " " + std::string(400, 'x')}};
  doc.choice_chars = {400};
  auto ev = TaskEvaluator::Create({EncodeTask(*FindTask("piqa"), "piqa.jsonl", {doc}, **tokenizer)}, 16, 4096,
                                  at::kCPU);
  EXPECT_TRUE(MessageHas(ev, "piqa.jsonl document 0 request 0: its continuation has"));
  EXPECT_TRUE(MessageHas(ev, "more than max_length 16"));
}

}  // namespace
}  // namespace qaas::quant
