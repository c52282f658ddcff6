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
  // One token per row of logits [B, V]: temperature (0 = greedy argmax), then top-k (ties with
  // the k-th value kept), then top-p (a token is kept when the mass strictly above it is < p),
  // then a draw from the renormalised rest; no sort, no host sync. Scalars apply to every row;
  // the optional [B] tensors override them per row.
  m.def("sample_tokens(Tensor logits, float temperature=1., int top_k=0, float top_p=1., Tensor? temperatures=None, "
        "Tensor? top_ks=None, Tensor? top_ps=None, Generator? generator=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  // One beam-search step as HF's vectorised beam search: log_softmax(logits) in fp32, repetition
  // penalty over sequences[:, :cur_len], EOS banned while cur_len < min_length, plus beam_scores,
  // then the top 2K of each batch row's K*V candidates: (scores [B, 2K], tokens, source beams).
  // cur_len is an int64 tensor of one element on the logits' device (None: all T columns), read
  // by the kernel itself, so a decode loop passes its device-side position and one captured
  // CUDA graph serves every step.
  m.def("beam_search_step(Tensor logits, Tensor beam_scores, Tensor sequences, int num_beams, Tensor? cur_len, "
        "int eos_token_id, int min_length=0, float repetition_penalty=1.) -> (Tensor, Tensor, Tensor)");
  // Text-to-image attention where G query rows share one K/V row: q [B*G, H, Lq, D], k/v
  // [B, H, Lk, D], query rows b*G .. b*G+G-1 use K/V row b; key_padding_mask bool [B, Lk], True =
  // ignore. Returns out [B*G, H, Lq, D] (a query with every key masked gets zeros) and the
  // logsumexp of the scaled scores [B*G, H, Lq] (float32; float64 for float64 inputs; -inf for
  // such a query), which the backward uses to recompute the probabilities.
  m.def("cross_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, float scale) -> (Tensor, Tensor)");
  // Gradients of cross_attention_fwd's out: (dq, dk, dv); dk/dv summed over the G query groups.
  m.def("cross_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor out, "
        "Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
  // cross_attention_fwd / _bwd on the tensor cores (mma.sync): bf16 / fp16 only, CUDA only; the
  // same inputs and outputs, so the two backwards are interchangeable.
  m.def("cross_attention_mma_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, float scale) -> "
        "(Tensor, Tensor)");
  m.def("cross_attention_mma_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor out, "
        "Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
}
