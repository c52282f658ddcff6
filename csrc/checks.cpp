#include "checks.h"

#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

namespace blipx {

namespace {

// The bytes of its storage a strided tensor can touch: [begin, end) from its lowest to one past
// its highest element. Computed from the storage offset rather than data pointers so that it
// works for meta tensors too (they have storages but no data).
struct Extent {
  const c10::StorageImpl* storage;
  int64_t begin, end;
  size_t index;
  bool ema;  // an ema_params entry (written) rather than a params entry (only read)
};

bool extent_of(const at::Tensor& t, size_t index, bool ema, Extent* out) {
  if (!t.defined() || t.numel() == 0 || !t.has_storage()) return false;
  int64_t last = 0;  // offset of the highest element, in elements (PyTorch strides are >= 0)
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const int64_t item = static_cast<int64_t>(t.element_size());
  *out = {t.storage().unsafeGetStorageImpl(), t.storage_offset() * item, (t.storage_offset() + last + 1) * item, index,
          ema};
  return true;
}

std::string extent_name(const Extent& e) {
  return std::string(e.ema ? "ema_params[" : "params[") + std::to_string(e.index) + "]";
}

// EMA tensors are written while every param is read, in parallel and in no fixed order, so an
// EMA that shares memory with another EMA (counted twice, or overlapping views) or with any
// param (its own included) gives results that depend on the thread count or the launch order;
// the kernels also declare the two pointers __restrict__. Params may alias each other (they are
// only read). The address ranges are compared, so interleaved views such as x[0::2] / x[1::2]
// count as overlapping: keep EMA tensors separate. One sort, O(n log n) for n tensors.
void check_ema_no_overlap(at::TensorList ema_params, at::TensorList params) {
  constexpr const char* op = "momentum_update_";
  for (size_t i = 0; i < ema_params.size(); ++i) {
    BLIPX_CHECK(at::has_internal_overlap(ema_params[i]) != at::MemOverlap::Yes, op, "ema_params[", i,
                "] has elements that share memory (e.g. an expand()ed view), so its update would race; "
                "pass a tensor with its own storage");
  }
  std::vector<Extent> spans;
  spans.reserve(2 * ema_params.size());
  for (size_t i = 0; i < ema_params.size(); ++i) {
    Extent e;
    if (extent_of(ema_params[i], i, true, &e)) spans.push_back(e);
    if (extent_of(params[i], i, false, &e)) spans.push_back(e);
  }
  std::sort(spans.begin(), spans.end(), [](const Extent& a, const Extent& b) {
    return std::tie(a.storage, a.begin) < std::tie(b.storage, b.begin);
  });
  // Sweep each storage in address order, remembering the span reaching furthest (of any kind,
  // and among EMAs): a span overlaps an earlier one iff it starts before that one ends.
  const Extent* far_any = nullptr;
  const Extent* far_ema = nullptr;
  const Extent* bad_a = nullptr;
  const Extent* bad_b = nullptr;
  for (const Extent& s : spans) {
    if (far_any != nullptr && far_any->storage != s.storage) far_any = far_ema = nullptr;
    const Extent* hit = s.ema ? far_any : far_ema;
    if (hit != nullptr && hit->end > s.begin) {
      // Several conflicts: report the one with the lowest indices, whatever the storages'
      // addresses, so the message is reproducible.
      const auto key = [](const Extent* a, const Extent* b) {
        return std::make_tuple(std::min(a->index, b->index), std::max(a->index, b->index));
      };
      if (bad_a == nullptr || key(hit, &s) < key(bad_a, bad_b)) bad_a = hit, bad_b = &s;
    }
    if (far_any == nullptr || s.end > far_any->end) far_any = &s;
    if (s.ema && (far_ema == nullptr || s.end > far_ema->end)) far_ema = &s;
  }
  if (bad_a == nullptr) return;
  const Extent* a = bad_a;
  const Extent* b = bad_b;
  // Name the EMA first, then the lower index.
  if (!a->ema || (b->ema && b->index < a->index)) std::swap(a, b);
  if (b->ema) {
    BLIPX_CHECK(false, op, extent_name(*a), " and ", extent_name(*b),
                " share memory (the same tensor twice, or overlapping views of one storage); each EMA tensor ",
                "must appear once and not overlap another, or the result would depend on the thread count");
  }
  BLIPX_CHECK(false, op, extent_name(*a), " shares memory with ", extent_name(*b),
              "; an EMA must be a separate copy of its parameter (e.g. copy.deepcopy of the module), not the "
              "parameter itself or a view of it, since the update reads params while it writes ema_params");
}

bool may_overlap(const at::Tensor& a, const at::Tensor& b) {
  Extent x, y;
  return extent_of(a, 0, false, &x) && extent_of(b, 0, false, &y) && x.storage == y.storage && x.begin < y.end &&
         y.begin < x.end;
}

}  // namespace

static bool is_ema_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

bool ema_dtype_pair_supported(at::ScalarType ema, at::ScalarType param) {
  if (!is_ema_float(ema) || !is_ema_float(param)) return false;
  return ema == param || ema == at::kFloat;
}

void check_momentum_update_args(at::TensorList ema_params, at::TensorList params, double momentum) {
  constexpr const char* op = "momentum_update_";
  BLIPX_CHECK(ema_params.size() == params.size(), op, "ema_params and params must have the same length, got ",
              ema_params.size(), " and ", params.size());
  // `!(a <= b)` also rejects NaN.
  BLIPX_CHECK(momentum >= 0.0 && momentum <= 1.0, op, "momentum must be in [0, 1], got ", momentum);
  if (ema_params.empty()) return;
  const auto device = ema_params[0].device();
  for (size_t i = 0; i < ema_params.size(); ++i) {
    const auto& e = ema_params[i];
    const auto& p = params[i];
    BLIPX_CHECK(e.defined(), op, "ema_params[", i, "] is undefined");
    BLIPX_CHECK(p.defined(), op, "params[", i, "] is undefined");
    BLIPX_CHECK(e.device() == device, op, "ema_params[", i, "] is on ", e.device(), " but ema_params[0] is on ", device,
                "; all tensors must share one device");
    BLIPX_CHECK(p.device() == device, op, "params[", i, "] is on ", p.device(), " but ema_params[0] is on ", device,
                "; all tensors must share one device");
    BLIPX_CHECK(e.sizes() == p.sizes(), op, "ema_params[", i, "] has shape ", e.sizes(), " but params[", i,
                "] has shape ", p.sizes());
    BLIPX_CHECK(ema_dtype_pair_supported(e.scalar_type(), p.scalar_type()), op, "ema_params[", i, "] is ",
                e.scalar_type(), " and params[", i, "] is ", p.scalar_type(),
                "; supported: equal dtypes among float32/float16/bfloat16, or a float32 EMA of float16/bfloat16 params");
  }
  check_ema_no_overlap(ema_params, params);
}

EnqueueShape check_enqueue_args(const at::Tensor& queue, const at::Tensor& ptr, const at::Tensor& feats) {
  constexpr const char* op = "enqueue_";
  BLIPX_CHECK(queue.dim() >= 1, op, "queue must have at least one dimension [Q, ...], got a scalar");
  BLIPX_CHECK(feats.dim() == queue.dim(), op, "feats must have the same number of dimensions as queue ",
              "(queue ", queue.sizes(), ", feats ", feats.sizes(), ")");
  BLIPX_CHECK(feats.sizes().slice(1) == queue.sizes().slice(1), op, "feats rows must match queue rows: queue is ",
              queue.sizes(), " ([Q, ...]) but feats is ", feats.sizes(), " ([N, ...])");
  BLIPX_CHECK(feats.scalar_type() == queue.scalar_type(), op, "feats dtype ", feats.scalar_type(),
              " must match queue dtype ", queue.scalar_type());
  BLIPX_CHECK(ptr.scalar_type() == at::kLong && ptr.numel() == 1, op,
              "ptr must be an int64 tensor with one element, got ", ptr.scalar_type(), " of shape ", ptr.sizes());
  BLIPX_CHECK(feats.device() == queue.device(), op, "feats is on ", feats.device(), " but queue is on ", queue.device());
  BLIPX_CHECK(ptr.device() == queue.device(), op, "ptr is on ", ptr.device(), " but queue is on ", queue.device(),
              "; keep the pointer on the queue's device so advancing it needs no host sync");
  // The copy reads feats and ptr while it writes queue (and then ptr): shared memory would make
  // the result depend on the copy order.
  BLIPX_CHECK(!may_overlap(feats, queue), op, "feats shares memory with queue; enqueue a copy (feats.clone())");
  BLIPX_CHECK(!may_overlap(ptr, queue), op, "ptr shares memory with queue; keep the pointer in its own tensor");
  BLIPX_CHECK(!may_overlap(ptr, feats), op, "ptr shares memory with feats; keep the pointer in its own tensor");
  const int64_t q = queue.size(0);
  const int64_t n = feats.size(0);
  BLIPX_CHECK(q > 0, op, "queue must have at least one row");
  BLIPX_CHECK(n <= q, op, "feats has ", n, " rows but queue holds only ", q, "; N must be <= queue size");
  const int64_t width = q == 0 ? 0 : queue.numel() / q;
  return {q, width, n};
}

HardNegativeShape check_sample_hard_negatives_args(const at::Tensor& sim, const std::optional<at::Tensor>& positive_mask,
                                                   const std::optional<at::Generator>& generator) {
  constexpr const char* op = "sample_hard_negatives";
  BLIPX_CHECK(sim.defined(), op, "sim is undefined");
  BLIPX_CHECK(sim.dim() == 2, op, "sim must be a 2-D [B, N] similarity matrix, got shape ", sim.sizes());
  const auto st = sim.scalar_type();
  BLIPX_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, op,
              "sim must be float32, float16, bfloat16 or float64, got ", st);
  const int64_t b = sim.size(0), n = sim.size(1);
  if (positive_mask.has_value() && positive_mask->defined()) {
    const auto& m = *positive_mask;
    BLIPX_CHECK(m.scalar_type() == at::kBool, op, "positive_mask must be a bool tensor (True = positive), got ",
                m.scalar_type());
    BLIPX_CHECK(m.sizes() == sim.sizes(), op, "positive_mask has shape ", m.sizes(), " but sim has shape ",
                sim.sizes(), "; they must match");
    BLIPX_CHECK(m.device() == sim.device(), op, "positive_mask is on ", m.device(), " but sim is on ", sim.device());
  } else {
    // Without a mask the positive of row i is column i, which only means something for a square
    // matrix: for local rows against gathered candidates [B, W*B] the positive sits at
    // rank*B + i, which this op cannot know.
    BLIPX_CHECK(b == n, op, "sim has shape ", sim.sizes(),
                "; positive_mask is required when sim is not square (the diagonal marks positives only for [B, B])");
  }
  if (generator.has_value() && generator->defined()) {
    BLIPX_CHECK(generator->device().type() == sim.device().type(), op, "generator is a ",
                c10::DeviceTypeName(generator->device().type(), /*lower_case=*/true), " generator but sim is on ",
                sim.device(), "; pass a generator of sim's device type");
  }
  return {b, n};
}

static void check_row_param(const char* op, const char* name, const std::optional<at::Tensor>& t, const at::Tensor& logits,
                            bool integral) {
  if (!t.has_value() || !t->defined()) return;
  BLIPX_CHECK(t->dim() == 1 && t->size(0) == logits.size(0), op, name, " must be a 1-D tensor with one value per row [",
              logits.size(0), "], got shape ", t->sizes());
  BLIPX_CHECK(t->device() == logits.device(), op, name, " is on ", t->device(), " but logits is on ", logits.device());
  if (integral) {
    BLIPX_CHECK(!at::isFloatingType(t->scalar_type()) && !at::isComplexType(t->scalar_type()) &&
                    t->scalar_type() != at::kBool,
                op, name, " must be an integer tensor, got ", t->scalar_type());
  } else {
    BLIPX_CHECK(at::isFloatingType(t->scalar_type()), op, name, " must be a floating tensor, got ", t->scalar_type());
  }
}

SampleTokensShape check_sample_tokens_args(const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                                           const std::optional<at::Tensor>& temperatures,
                                           const std::optional<at::Tensor>& top_ks,
                                           const std::optional<at::Tensor>& top_ps,
                                           const std::optional<at::Generator>& generator) {
  constexpr const char* op = "sample_tokens";
  BLIPX_CHECK(logits.defined(), op, "logits is undefined");
  BLIPX_CHECK(logits.dim() == 2, op, "logits must be a 2-D [B, V] tensor, got shape ", logits.sizes());
  const auto st = logits.scalar_type();
  BLIPX_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op,
              "logits must be float32, float16 or bfloat16, got ", st);
  BLIPX_CHECK(logits.size(1) >= 1, op, "logits must have at least one column (V >= 1), got shape ", logits.sizes());
  BLIPX_CHECK(logits.size(1) <= int64_t{0x7fffffff}, op, "vocabularies above 2^31 - 1 are not supported");
  // `!(x >= 0)` also rejects NaN.
  BLIPX_CHECK(temperature >= 0.0, op, "temperature must be >= 0 (0 = greedy), got ", temperature);
  BLIPX_CHECK(top_k >= 0, op, "top_k must be >= 0 (0 = off), got ", top_k);
  BLIPX_CHECK(top_p >= 0.0 && top_p <= 1.0, op, "top_p must be in [0, 1] (1 = off), got ", top_p);
  check_row_param(op, "temperatures", temperatures, logits, false);
  check_row_param(op, "top_ks", top_ks, logits, true);
  check_row_param(op, "top_ps", top_ps, logits, false);
  if (generator.has_value() && generator->defined()) {
    BLIPX_CHECK(generator->device().type() == logits.device().type(), op, "generator is a ",
                generator->device().type(), " generator but logits is on ", logits.device());
  }
  return {logits.size(0), logits.size(1)};
}

BeamStepShape check_beam_search_step_args(const at::Tensor& logits, const at::Tensor& beam_scores,
                                          const at::Tensor& sequences, const std::optional<at::Tensor>& cur_len,
                                          int64_t eos_token_id, int64_t min_length, double repetition_penalty,
                                          int64_t num_beams) {
  constexpr const char* op = "beam_search_step";
  BLIPX_CHECK(logits.defined() && beam_scores.defined() && sequences.defined(), op, "logits, beam_scores and sequences must be defined");
  BLIPX_CHECK(logits.dim() == 2, op, "logits must be a 2-D [B*num_beams, V] tensor, got shape ", logits.sizes());
  const auto st = logits.scalar_type();
  BLIPX_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op,
              "logits must be float32, float16 or bfloat16, got ", st);
  BLIPX_CHECK(num_beams >= 1, op, "num_beams must be >= 1, got ", num_beams);
  BLIPX_CHECK(num_beams <= 64, op, "num_beams must be <= 64, got ", num_beams);
  const int64_t rows = logits.size(0), v = logits.size(1);
  BLIPX_CHECK(rows % num_beams == 0, op, "logits has ", rows, " rows, not a multiple of num_beams = ", num_beams);
  // top-2K over K*V candidates needs K*V >= 2K.
  BLIPX_CHECK(v >= 2, op, "logits must have at least 2 columns (V >= 2), got shape ", logits.sizes());
  BLIPX_CHECK(v <= int64_t{0x7fffffff}, op, "vocabularies above 2^31 - 1 are not supported");
  BLIPX_CHECK(beam_scores.scalar_type() == at::kFloat, op, "beam_scores must be float32, got ", beam_scores.scalar_type());
  BLIPX_CHECK(beam_scores.dim() == 1 && beam_scores.size(0) == rows, op, "beam_scores must have shape [", rows,
              "] (one score per logits row), got ", beam_scores.sizes());
  BLIPX_CHECK(sequences.scalar_type() == at::kLong, op, "sequences must be int64, got ", sequences.scalar_type());
  BLIPX_CHECK(sequences.dim() == 2 && sequences.size(0) == rows, op, "sequences must have shape [", rows,
              ", T] (one row per logits row), got ", sequences.sizes());
  if (cur_len.has_value() && cur_len->defined()) {
    const auto& c = *cur_len;
    BLIPX_CHECK(c.scalar_type() == at::kLong && c.numel() == 1, op,
                "cur_len must be an int64 tensor with one element (the current length), got ", c.scalar_type(),
                " of shape ", c.sizes());
    BLIPX_CHECK(c.device() == logits.device(), op, "cur_len is on ", c.device(), " but logits is on ", logits.device(),
                "; keep the length on the logits' device so reading it needs no host sync");
    // A CPU value is read for free; a GPU one would cost a sync (the kernel clamps it instead).
    if (c.device().is_cpu()) {
      const int64_t n = *c.const_data_ptr<int64_t>();
      BLIPX_CHECK(n >= 0 && n <= sequences.size(1), op, "cur_len must be in [0, ", sequences.size(1),
                  "] (the columns of sequences), got ", n);
    }
  }
  BLIPX_CHECK(eos_token_id < v, op, "eos_token_id ", eos_token_id, " is outside the vocabulary of ", v,
              " tokens (pass -1 for none)");
  BLIPX_CHECK(repetition_penalty > 0.0, op, "repetition_penalty must be > 0, got ", repetition_penalty);
  BLIPX_CHECK(beam_scores.device() == logits.device(), op, "beam_scores is on ", beam_scores.device(),
              " but logits is on ", logits.device());
  BLIPX_CHECK(sequences.device() == logits.device(), op, "sequences is on ", sequences.device(), " but logits is on ",
              logits.device());
  (void)min_length;  // any value is meaningful: EOS is banned while cur_len < min_length
  return {rows / num_beams, num_beams, v};
}

}  // namespace blipx

namespace blipx {

CrossAttentionShape check_cross_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const std::optional<at::Tensor>& key_padding_mask, double scale,
                                               bool allow_double) {
  constexpr const char* op = "cross_attention";
  BLIPX_CHECK(q.defined() && k.defined() && v.defined(), op, "q, k and v must be defined");
  BLIPX_CHECK(q.dim() == 4, op, "q must be 4-D [B*G, H, Lq, D], got shape ", q.sizes());
  BLIPX_CHECK(k.dim() == 4, op, "k must be 4-D [B, H, Lk, D], got shape ", k.sizes());
  BLIPX_CHECK(v.dim() == 4, op, "v must be 4-D [B, H, Lk, D], got shape ", v.sizes());
  const auto st = q.scalar_type();
  const bool ok_dtype = st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || (allow_double && st == at::kDouble);
  BLIPX_CHECK(ok_dtype, op, "q must be float32, float16 or bfloat16", allow_double ? " (or float64 on the CPU)" : "",
              ", got ", st);
  BLIPX_CHECK(k.scalar_type() == st, op, "k dtype ", k.scalar_type(), " must match q dtype ", st);
  BLIPX_CHECK(v.scalar_type() == st, op, "v dtype ", v.scalar_type(), " must match q dtype ", st);
  BLIPX_CHECK(k.device() == q.device(), op, "k is on ", k.device(), " but q is on ", q.device());
  BLIPX_CHECK(v.device() == q.device(), op, "v is on ", v.device(), " but q is on ", q.device());
  BLIPX_CHECK(v.sizes() == k.sizes(), op, "v has shape ", v.sizes(), " but k has shape ", k.sizes(), "; they must match");
  const int64_t b = k.size(0), h = k.size(1), lk = k.size(2), d = k.size(3);
  BLIPX_CHECK(b >= 1, op, "k must have at least one row (B >= 1), got shape ", k.sizes());
  BLIPX_CHECK(q.size(1) == h, op, "q has ", q.size(1), " heads but k has ", h, " (q ", q.sizes(), ", k ", k.sizes(), ")");
  BLIPX_CHECK(q.size(3) == d, op, "q head dim ", q.size(3), " must match k head dim ", d);
  BLIPX_CHECK(d >= 1, op, "head dim D must be >= 1, got shape ", k.sizes());
  BLIPX_CHECK(lk >= 1, op, "k must have at least one key (Lk >= 1), got shape ", k.sizes());
  BLIPX_CHECK(q.size(0) >= b && q.size(0) % b == 0, op, "q rows (", q.size(0), ") must be a positive multiple G*B of k rows (",
              b, "): rows b*G .. b*G+G-1 share K/V row b");
  BLIPX_CHECK(std::isfinite(scale), op, "scale must be finite, got ", scale);
  if (key_padding_mask.has_value() && key_padding_mask->defined()) {
    const auto& m = *key_padding_mask;
    BLIPX_CHECK(m.scalar_type() == at::kBool, op, "key_padding_mask must be bool (True = ignore the key), got ",
                m.scalar_type());
    BLIPX_CHECK(m.dim() == 2 && m.size(0) == b && m.size(1) == lk, op, "key_padding_mask must have shape [B, Lk] = [", b,
                ", ", lk, "], got ", m.sizes());
    BLIPX_CHECK(m.device() == q.device(), op, "key_padding_mask is on ", m.device(), " but q is on ", q.device());
  }
  return {b, q.size(0) / b, h, q.size(2), lk, d};
}

CrossAttentionShape check_cross_attention_mma_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const std::optional<at::Tensor>& key_padding_mask, double scale) {
  const auto sh = check_cross_attention_args(q, k, v, key_padding_mask, scale, /*allow_double=*/false);
  BLIPX_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, "cross_attention_mma",
              "q must be float16 or bfloat16 for the tensor-core kernel (float32 runs on cross_attention_fwd), got ",
              q.scalar_type());
  return sh;
}

void check_cross_attention_bwd_args(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& out,
                                    const at::Tensor& lse) {
  constexpr const char* op = "cross_attention_bwd";
  BLIPX_CHECK(dout.defined() && out.defined() && lse.defined(), op, "dout, out and lse must be defined");
  BLIPX_CHECK(dout.sizes() == q.sizes(), op, "dout has shape ", dout.sizes(), " but q has shape ", q.sizes());
  BLIPX_CHECK(out.sizes() == q.sizes(), op, "out has shape ", out.sizes(), " but q has shape ", q.sizes());
  BLIPX_CHECK(dout.scalar_type() == q.scalar_type(), op, "dout dtype ", dout.scalar_type(), " must match q dtype ",
              q.scalar_type());
  BLIPX_CHECK(out.scalar_type() == q.scalar_type(), op, "out dtype ", out.scalar_type(), " must match q dtype ",
              q.scalar_type());
  // lse is kept in the accumulation type: float32, or float64 for float64 inputs (CPU only).
  const auto lse_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  BLIPX_CHECK(lse.scalar_type() == lse_type, op, "lse must be ", lse_type, " for ", q.scalar_type(), " inputs, got ",
              lse.scalar_type());
  BLIPX_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) && lse.size(2) == q.size(2), op,
              "lse must have shape [B*G, H, Lq] = [", q.size(0), ", ", q.size(1), ", ", q.size(2), "], got ", lse.sizes());
  BLIPX_CHECK(dout.device() == q.device() && out.device() == q.device() && lse.device() == q.device(), op,
              "dout, out and lse must be on q's device ", q.device());
}

}  // namespace blipx

// The checks as ops of their own, blipx::_check_<op>, taking the op's arguments and returning
// nothing. The kernels call the check functions directly; these let the paths that never reach a
// kernel run the very same rules: the pure-PyTorch references (BLIPX_USE_KERNELS=0, or no kernel
// for the device) and the fake kernels when they receive real meta tensors (a meta tensor mixed
// with CPU ones dispatches to the fake kernel). Registered as CompositeImplicitAutograd, so they
// run on every device, meta included. Declared here, not in registry.cpp, because they are part of
// the checks, not ops of the library's API. Not in the SIMT emulator build (tests/simt), which
// links this file into its own library beside blipx's and must not register blipx ops twice.
#ifndef BLIPX_SIMT
namespace blipx {
namespace {

void check_momentum_update_op(at::TensorList ema_params, at::TensorList params, double momentum) {
  check_momentum_update_args(ema_params, params, momentum);
}

void check_enqueue_op(const at::Tensor& queue, const at::Tensor& ptr, const at::Tensor& feats) {
  check_enqueue_args(queue, ptr, feats);
}

void check_sample_hard_negatives_op(const at::Tensor& sim, const std::optional<at::Tensor>& positive_mask,
                                    const std::optional<at::Generator>& generator) {
  check_sample_hard_negatives_args(sim, positive_mask, generator);
}

void check_sample_tokens_op(const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                            const std::optional<at::Tensor>& temperatures, const std::optional<at::Tensor>& top_ks,
                            const std::optional<at::Tensor>& top_ps, const std::optional<at::Generator>& generator) {
  check_sample_tokens_args(logits, temperature, top_k, top_p, temperatures, top_ks, top_ps, generator);
}

void check_beam_search_step_op(const at::Tensor& logits, const at::Tensor& beam_scores, const at::Tensor& sequences,
                               int64_t num_beams, const std::optional<at::Tensor>& cur_len, int64_t eos_token_id,
                               int64_t min_length, double repetition_penalty) {
  check_beam_search_step_args(logits, beam_scores, sequences, cur_len, eos_token_id, min_length, repetition_penalty,
                              num_beams);
}

// float64 is a CPU-kernel feature; the rule follows the device the kernel would run on (meta:
// allowed, as the fake kernel accepts it).
bool cross_attention_allows_double(const at::Tensor& q) { return !q.is_cuda(); }

void check_cross_attention_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& key_padding_mask, double scale) {
  check_cross_attention_args(q, k, v, key_padding_mask, scale, cross_attention_allows_double(q));
}

void check_cross_attention_mma_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const std::optional<at::Tensor>& key_padding_mask, double scale) {
  check_cross_attention_mma_args(q, k, v, key_padding_mask, scale);
}

void check_cross_attention_bwd_op(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v, const std::optional<at::Tensor>& key_padding_mask,
                                  const at::Tensor& out, const at::Tensor& lse, double scale) {
  check_cross_attention_args(q, k, v, key_padding_mask, scale, cross_attention_allows_double(q));
  check_cross_attention_bwd_args(dout, q, out, lse);
}

}  // namespace
}  // namespace blipx

TORCH_LIBRARY_FRAGMENT(blipx, m) {
  m.def("_check_momentum_update(Tensor[] ema_params, Tensor[] params, float momentum) -> ()");
  m.def("_check_enqueue(Tensor queue, Tensor ptr, Tensor feats) -> ()");
  m.def("_check_sample_hard_negatives(Tensor sim, Tensor? positive_mask=None, Generator? generator=None) -> ()");
  m.def("_check_sample_tokens(Tensor logits, float temperature=1., int top_k=0, float top_p=1., "
        "Tensor? temperatures=None, Tensor? top_ks=None, Tensor? top_ps=None, Generator? generator=None) -> ()");
  m.def("_check_beam_search_step(Tensor logits, Tensor beam_scores, Tensor sequences, int num_beams, Tensor? cur_len, "
        "int eos_token_id, int min_length=0, float repetition_penalty=1.) -> ()");
  m.def("_check_cross_attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, float scale) -> ()");
  m.def("_check_cross_attention_mma(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, float scale) -> ()");
  m.def("_check_cross_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor out, "
        "Tensor lse, float scale) -> ()");
}

TORCH_LIBRARY_IMPL(blipx, CompositeImplicitAutograd, m) {
  m.impl("_check_momentum_update", &blipx::check_momentum_update_op);
  m.impl("_check_enqueue", &blipx::check_enqueue_op);
  m.impl("_check_sample_hard_negatives", &blipx::check_sample_hard_negatives_op);
  m.impl("_check_sample_tokens", &blipx::check_sample_tokens_op);
  m.impl("_check_beam_search_step", &blipx::check_beam_search_step_op);
  m.impl("_check_cross_attention", &blipx::check_cross_attention_op);
  m.impl("_check_cross_attention_mma", &blipx::check_cross_attention_mma_op);
  m.impl("_check_cross_attention_bwd", &blipx::check_cross_attention_bwd_op);
}
#endif  // BLIPX_SIMT
