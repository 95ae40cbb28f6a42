#include "quant/eval/task_eval.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace qaas::quant {

TaskInput EncodeTask(const TaskInfo& task, std::string name, std::vector<TaskDoc> docs, const Tokenizer& tokenizer) {
  TaskInput in;
  in.task = &task;
  in.name = std::move(name);
  in.docs = std::move(docs);
  for (const TaskDoc& d : in.docs) {
    std::vector<EncodedRequest> enc;
    for (const TaskRequest& r : d.requests) enc.push_back(EncodeRequest(tokenizer, r));
    in.encoded.push_back(std::move(enc));
  }
  return in;
}

namespace {

// One packed sequence before batching.
struct Sequence {
  std::vector<int64_t> ids, positions;
  std::vector<int> branch;  // 0: seen by every later token; k > 0: only by branch k
  struct Scored {
    int task, doc, request;
    std::vector<int64_t> rows;  // indices into the sequence
    std::vector<int64_t> targets;
  };
  std::vector<Scored> scored;
};

}  // namespace

absl::StatusOr<TaskEvaluator> TaskEvaluator::Create(std::vector<TaskInput> inputs, int64_t max_length,
                                                    int64_t token_budget, const at::Device& device) {
  if (max_length < 1) return absl::InvalidArgumentError(absl::StrCat("task max_length must be positive, got ", max_length));
  TaskEvaluator ev;
  ev.max_length_ = max_length;
  std::vector<Sequence> seqs;
  for (size_t t = 0; t < inputs.size(); ++t) {
    const TaskInput& in = inputs[t];
    TaskPackStats st;
    const size_t first_seq = seqs.size();
    for (size_t d = 0; d < in.encoded.size(); ++d) {
      std::map<std::vector<int>, size_t> shared;  // context ids -> its sequence
      bool doc_truncated = false;
      for (size_t r = 0; r < in.encoded[d].size(); ++r) {
        const EncodedRequest& e = in.encoded[d][r];
        const int64_t c = static_cast<int64_t>(e.context.size()), n = static_cast<int64_t>(e.continuation.size());
        ++st.requests;
        if (n == 0) {
          return absl::InvalidArgumentError(absl::StrCat(in.name, " document ", in.docs[d].doc_id, " request ", r,
                                                         ": the continuation has no token"));
        }
        if (n > max_length) {
          return absl::InvalidArgumentError(absl::StrCat(
              in.name, " document ", in.docs[d].doc_id, " request ", r, ": its continuation has ", n,
              " tokens, more than max_length ", max_length,
              " (lm-evaluation-harness refuses it too); raise tasks.max_length or limit the documents"));
        }
        st.request_tokens += std::min(c + n - 1, max_length);
        if (c + n > max_length + 1) {  // the harness's left truncation: its own sequence
          ++st.truncated;
          doc_truncated = true;
          std::vector<int64_t> whole(e.context.begin(), e.context.end());
          whole.insert(whole.end(), e.continuation.begin(), e.continuation.end());
          Sequence s;
          s.ids.assign(whole.end() - (max_length + 1), whole.end() - 1);
          s.positions.resize(s.ids.size());
          std::iota(s.positions.begin(), s.positions.end(), 0);
          s.branch.assign(s.ids.size(), 0);
          Sequence::Scored sc{static_cast<int>(t), static_cast<int>(d), static_cast<int>(r), {}, {}};
          for (int64_t j = 0; j < n; ++j) {
            sc.rows.push_back(max_length - n + j);
            sc.targets.push_back(e.continuation[j]);
          }
          s.scored.push_back(std::move(sc));
          seqs.push_back(std::move(s));
          continue;
        }
        auto it = shared.find(e.context);
        if (it == shared.end()) {
          Sequence s;
          s.ids.assign(e.context.begin(), e.context.end());
          s.positions.resize(s.ids.size());
          std::iota(s.positions.begin(), s.positions.end(), 0);
          s.branch.assign(s.ids.size(), 0);
          it = shared.emplace(e.context, seqs.size()).first;
          seqs.push_back(std::move(s));
        }
        Sequence& s = seqs[it->second];
        const int branch = static_cast<int>(s.scored.size()) + 1;
        Sequence::Scored sc{static_cast<int>(t), static_cast<int>(d), static_cast<int>(r), {c - 1}, {}};
        for (int64_t j = 0; j < n; ++j) {
          sc.targets.push_back(e.continuation[j]);
          if (j + 1 == n) break;  // the last token is predicted, never input
          sc.rows.push_back(static_cast<int64_t>(s.ids.size()));
          s.ids.push_back(e.continuation[j]);
          s.positions.push_back(c + j);
          s.branch.push_back(branch);
        }
        s.scored.push_back(std::move(sc));
      }
      if (doc_truncated) ++st.truncated_docs;
    }
    for (size_t k = first_seq; k < seqs.size(); ++k) st.tokens += static_cast<int64_t>(seqs[k].ids.size());
    ev.stats_.push_back(st);
  }

  // Longest first; a batch takes sequences while batch x longest fits the budget.
  std::vector<size_t> order(seqs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return seqs[a].ids.size() > seqs[b].ids.size(); });
  for (size_t i = 0; i < order.size();) {
    const int64_t T = static_cast<int64_t>(seqs[order[i]].ids.size());
    size_t j = i + 1;
    while (j < order.size() && static_cast<int64_t>(j - i + 1) * T <= token_budget) ++j;
    const int64_t B = static_cast<int64_t>(j - i);
    at::Tensor ids = at::zeros({B, T}, at::kLong), positions = at::zeros({B, T}, at::kLong);
    // Padding is a branch of its own: it attends to the context and itself
    // (its softmax stays finite) and no real token attends to it.
    at::Tensor branches = at::full({B, T}, std::numeric_limits<int32_t>::max(), at::kLong);
    auto pid = ids.accessor<int64_t, 2>();
    auto ppos = positions.accessor<int64_t, 2>();
    auto pbr = branches.accessor<int64_t, 2>();
    Batch batch;
    std::vector<int64_t> rows, targets;
    int64_t max_position = 1;
    for (int64_t b = 0; b < B; ++b) {
      const Sequence& s = seqs[order[i + static_cast<size_t>(b)]];
      const int64_t len = static_cast<int64_t>(s.ids.size());
      for (int64_t q = 0; q < len; ++q) {
        pid[b][q] = s.ids[q];
        ppos[b][q] = s.positions[q];
        pbr[b][q] = s.branch[q];
        max_position = std::max(max_position, s.positions[q] + 1);
      }
      for (const Sequence::Scored& sc : s.scored) {
        Slot slot{sc.task, sc.doc, sc.request, static_cast<int64_t>(rows.size()), static_cast<int64_t>(sc.rows.size())};
        for (size_t k = 0; k < sc.rows.size(); ++k) {
          rows.push_back(b * T + sc.rows[k]);
          targets.push_back(sc.targets[k]);
        }
        batch.slots.push_back(slot);
      }
    }
    batch.ids = ids.to(device);
    batch.layout.positions = positions.to(device);
    batch.layout.branches = branches.to(device);
    batch.layout.max_position = max_position;
    batch.score_rows = at::tensor(rows, at::kLong).to(device);
    batch.targets = at::tensor(targets, at::kLong).to(device);
    ev.batches_.push_back(std::move(batch));
    i = j;
  }
  ev.inputs_ = std::move(inputs);
  return ev;
}

int64_t TaskEvaluator::padded_tokens() const {
  int64_t n = 0;
  for (const Batch& b : batches_) n += b.ids.numel();
  return n;
}

std::vector<at::Tensor> TaskEvaluator::Embed(const DecoderModel& model) const {
  std::vector<at::Tensor> hidden;
  for (const Batch& b : batches_) hidden.push_back(model.Embed(b.ids, b.layout));
  return hidden;
}

void TaskEvaluator::Forward(const DecoderModel& model, const DecoderLayer& layer,
                            std::vector<at::Tensor>* hidden) const {
  for (size_t k = 0; k < batches_.size(); ++k) {
    (*hidden)[k] = model.LayerForward(layer, (*hidden)[k], batches_[k].layout);
  }
}

absl::StatusOr<std::vector<std::vector<std::vector<RequestScore>>>> TaskEvaluator::Score(
    const DecoderModel& model, const std::vector<at::Tensor>& hidden) const {
  std::vector<std::vector<std::vector<RequestScore>>> scores(inputs_.size());
  for (size_t t = 0; t < inputs_.size(); ++t) {
    scores[t].resize(inputs_[t].docs.size());
    for (size_t d = 0; d < inputs_[t].docs.size(); ++d) scores[t][d].resize(inputs_[t].docs[d].requests.size());
  }
  for (size_t k = 0; k < batches_.size(); ++k) {
    const Batch& b = batches_[k];
    const at::Tensor flat = hidden[k].reshape({-1, hidden[k].size(-1)});
    // As the harness: log-softmax in float32 over the vocabulary; the
    // continuation's token log-probabilities summed; greedy when every
    // token is the argmax (the first on ties). Rows in chunks, so the
    // logits of a large vocabulary stay bounded.
    constexpr int64_t kRows = 1024;
    std::vector<at::Tensor> lps, greedies;
    for (int64_t r = 0; r < b.score_rows.size(0); r += kRows) {
      const int64_t n = std::min(kRows, b.score_rows.size(0) - r);
      const at::Tensor targets = b.targets.narrow(0, r, n);
      const at::Tensor logits = model.Logits(flat.index_select(0, b.score_rows.narrow(0, r, n))).to(at::kFloat);
      lps.push_back(at::log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1).to(at::kCPU));
      greedies.push_back(logits.argmax(-1).eq(targets).to(at::kCPU));
    }
    const at::Tensor logp = at::cat(lps), greedy = at::cat(greedies);
    const auto plp = logp.accessor<float, 1>();
    const auto pg = greedy.accessor<bool, 1>();
    for (const Slot& s : b.slots) {
      double ll = 0;
      bool all = true;
      for (int64_t j = s.first; j < s.first + s.count; ++j) {
        ll += plp[j];
        all = all && pg[j];
      }
      if (!std::isfinite(ll)) {
        return absl::FailedPreconditionError(absl::StrCat(inputs_[s.task].name, " document ",
                                                          inputs_[s.task].docs[s.doc].doc_id, " request ", s.request,
                                                          ": its log-likelihood is ", ll));
      }
      scores[s.task][s.doc][s.request] = {ll, all};
    }
  }
  return scores;
}

}  // namespace qaas::quant
