// The only TORCH_LIBRARY(blipx, ...) block: every op's schema, declared once. Device kernels
// register beside their code (cpu/*.cpp, cuda/*.cu) with TORCH_LIBRARY_IMPL; fake kernels and
// autograd formulas are registered from Python (blipx/ops/_fake.py).
#include <torch/library.h>

TORCH_LIBRARY(blipx, m) {
  // ema = momentum * ema + (1 - momentum) * param, in place, for every pair of the two lists.
  m.def("momentum_update_(Tensor(a!)[] ema_params, Tensor[] params, float momentum) -> ()");
  // Ring write of feats' N rows into queue at the device-side pointer, wrapping around; then
  // ptr = (ptr + N) % Q on the device.
  m.def("enqueue_(Tensor(a!) queue, Tensor(b!) ptr, Tensor feats) -> ()");
  // One draw per row of sim [B, N]: column j with probability proportional to exp(sim[i, j]) over
  // the columns not marked in positive_mask (default: the diagonal; sim must then be square) and
  // not NaN; -1 where no column has positive mass. Seeded by `generator` (tagged so tracing
  // treats it as random, like torch.multinomial).
  m.def("sample_hard_negatives(Tensor sim, Tensor? positive_mask=None, Generator? generator=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
}
