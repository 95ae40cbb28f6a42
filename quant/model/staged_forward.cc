#include "quant/model/staged_forward.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "absl/strings/str_cat.h"

namespace qaas::quant {

namespace {

// Thrown by a parked batch's hook when the object is destroyed: its forward
// unwinds (LayerForward is exception safe: the early end of a group's
// gathering leaves it the same way) and Run catches it.
struct Unwind {};

}  // namespace

int64_t StagedBytesPerToken(const ModelConfig& config) {
  const int64_t attn_width = static_cast<int64_t>(config.num_heads) * config.head_dim;
  const int64_t wide = std::max<int64_t>(config.hidden_size, attn_width);
  // Live at a pause: the residual and the waiting linear's input (down_proj:
  // intermediate-wide); then each batch's output and its copy in the
  // concatenated stream, and the heap's fragmentation among 16 threads'
  // buffers. Measured: 26 KB a token more peak RSS at hidden 768 /
  // intermediate 2048 (bench/peers' model), where this gives 28.7 KB.
  return 4 * (4 * wide + 2 * std::max<int64_t>(config.intermediate_size, wide));
}

StagedLayerForward::StagedLayerForward(const DecoderModel& model, const DecoderLayer* layer, const at::Tensor& hidden,
                                       int batch, int64_t num_batches, const std::vector<LinearGroup>& groups)
    : model_(model), layer_(layer), hidden_(hidden), batch_(batch), group_sizes_(groups.size()) {
  num_batches = std::max<int64_t>(0, std::min<int64_t>(num_batches, (hidden.size(0) + batch - 1) / batch));
  slots_ = std::vector<Slot>(static_cast<size_t>(num_batches));
  staged_windows_ = std::min<int64_t>(hidden.size(0), num_batches * batch);
  for (size_t g = 0; g < groups.size(); ++g) {
    for (int j : groups[g].linears) group_of_[model.LinearNames()[j]] = static_cast<int>(g);
    group_sizes_[g] = groups[g].linears.size();
  }
}

StagedLayerForward::~StagedLayerForward() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    abort_ = true;
  }
  cv_.notify_all();
  for (Slot& s : slots_) {
    if (s.thread.joinable()) s.thread.join();
  }
}

void StagedLayerForward::OnLinear(int64_t b, const std::string& name, const at::Tensor& x) {
  auto it = group_of_.find(name);
  if (it == group_of_.end()) return;
  const int group = it->second;
  std::unique_lock<std::mutex> lock(mu_);
  Slot& slot = slots_[b];
  if (group != slot.group) {
    // The forward moves on to the next group only once it has met all of
    // this one's linears (their weights were then final when it applied
    // them), and meets the groups in order.
    const bool complete = slot.group < 0 || slot.seen.size() == group_sizes_[slot.group];
    if (group != slot.group + 1 || !complete) {
      throw std::logic_error(absl::StrCat("staged layer forward: the forward reached ", name, " (group ", group,
                                          ") after ", slot.seen.size(), " linears of group ", slot.group,
                                          "; its hook must meet each group's linears whole, in group order"));
    }
    slot.group = group;
    slot.seen.clear();
  }
  if (!slot.seen.insert(name).second) {
    throw std::logic_error(absl::StrCat("staged layer forward: ", name, " reached twice"));
  }
  if (group != group_) {
    throw std::logic_error(absl::StrCat("staged layer forward: ", name, " (group ", group,
                                        ") reached while gathering group ", group_));
  }
  if (hook_ && *hook_) {
    const LinearInputHook& hook = *hook_;
    lock.unlock();  // the caller waits meanwhile
    hook(name, x);
    lock.lock();
  }
  if (slot.seen.size() == group_sizes_[group]) {
    // The group's inputs are gathered: wait, before the forward applies its
    // linears, until the caller has quantized them.
    slot.parked = true;
    turn_ = -1;
    cv_.notify_all();
    cv_.wait(lock, [&] { return abort_ || (turn_ == b && group_ > group); });
    slot.parked = false;
    if (abort_) throw Unwind();
  }
}

void StagedLayerForward::Run(int64_t b) {
  at::ThreadLocalStateGuard state(state_);
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return abort_ || turn_ == b; });
    if (abort_) {
      slots_[b].done = true;
      return;
    }
  }
  at::Tensor out;
  std::exception_ptr error;
  const int64_t first = b * batch_;
  const int64_t n = std::min<int64_t>(batch_, hidden_.size(0) - first);
  try {
    out = model_.LayerForward(*layer_, hidden_.narrow(0, first, n),
                              [&](const std::string& name, const at::Tensor& x) { OnLinear(b, name, x); });
  } catch (const Unwind&) {
  } catch (...) {
    error = std::current_exception();
  }
  std::lock_guard<std::mutex> lock(mu_);
  Slot& slot = slots_[b];
  if (!error && !abort_ && slot.group + 1 != static_cast<int>(group_sizes_.size())) {
    error = std::make_exception_ptr(std::logic_error(
        absl::StrCat("staged layer forward: the forward ended after group ", slot.group, " of ", group_sizes_.size())));
  }
  slot.out = std::move(out);
  slot.error = error;
  slot.done = true;
  turn_ = -1;
  cv_.notify_all();
}

void StagedLayerForward::Step(int64_t b, std::unique_lock<std::mutex>& lock) {
  Slot& s = slots_[b];
  if (!s.done) {
    turn_ = b;
    if (!s.started) {
      s.started = true;
      s.thread = std::thread([this, b] { Run(b); });
    }
    cv_.notify_all();
    cv_.wait(lock, [&] { return turn_ == -1 && (s.parked || s.done); });
  }
  if (s.error) std::rethrow_exception(s.error);
}

void StagedLayerForward::Advance(int group, const LinearInputHook& hook) {
  std::unique_lock<std::mutex> lock(mu_);
  if (group != group_ + 1 || static_cast<size_t>(group) >= group_sizes_.size()) {
    throw std::logic_error(absl::StrCat("staged layer forward: Advance(", group, ") after group ", group_, " of ",
                                        group_sizes_.size()));
  }
  group_ = group;
  hook_ = &hook;
  struct Clear {
    const LinearInputHook** hook;
    ~Clear() { *hook = nullptr; }
  } clear{&hook_};
  for (int64_t b = 0; b < num_batches(); ++b) Step(b, lock);
}

at::Tensor StagedLayerForward::Finish() {
  std::vector<at::Tensor> outs;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (static_cast<size_t>(group_ + 1) != group_sizes_.size()) {
      throw std::logic_error(absl::StrCat("staged layer forward: Finish after group ", group_, " of ",
                                          group_sizes_.size()));
    }
    group_ = static_cast<int>(group_sizes_.size());
    for (int64_t b = 0; b < num_batches(); ++b) {
      Step(b, lock);
      outs.push_back(slots_[b].out);
    }
  }
  for (Slot& s : slots_) {
    if (s.thread.joinable()) s.thread.join();
  }
  return outs.empty() ? at::Tensor() : at::cat(outs, 0);
}

}  // namespace qaas::quant
