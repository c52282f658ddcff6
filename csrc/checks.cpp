#include "checks.h"

namespace blipx {

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
    BLIPX_CHECK(generator->device().type() == sim.device().type(), op, "generator is a ", generator->device().type(),
                " generator but sim is on ", sim.device());
  }
  return {b, n};
}

}  // namespace blipx
