// CPU kernel for blipx::beam_search_step: one step of HF's vectorised beam search (reference:
// blipx/ops/reference.py: beam_search_step_ref) without the [B, K*V] score matrix.
//
// Stage 1, per beam row (parallel over B*K rows): vectorisable passes for the row max and the
// sum of exp (log-softmax in fp32, the sum accumulated in double), then each candidate's
// processed score -- log-prob, repetition penalty for tokens present in sequences[:, :cur_len]
// (each distinct token once), EOS at -inf while cur_len < min_length, plus the running beam
// score -- and a scan that keeps the row's top 2K in a small sorted array.
// Stage 2, per batch row: a K-way merge of the K sorted lists gives the batch row's top 2K.
// The global top 2K over K*V is contained in the union of the per-beam top 2K (each beam's
// candidates are compared in the same score space), so this is exact.
// Order: score descending, ties to the lower flat index beam * V + token (torch.topk does not
// promise an order for ties).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/fast_math.h"

namespace blipx {
namespace {

using cpu::exp_nonpos;
using cpu::kInf;
using cpu::sum8;

struct Cand {
  float score;
  int64_t flat;  // beam * V + token; -1 = empty
};

// True when a ranks before b.
inline bool before(const Cand& a, const Cand& b) {
  if (a.flat < 0) return false;
  if (b.flat < 0) return true;
  return a.score > b.score || (a.score == b.score && a.flat < b.flat);
}

// Fills top[0, n2k) with beam row `beam`'s best n2k candidates, sorted. `s`, `e`: V-float scratch.
template <typename T>
void beam_row_topk(const T* row, int64_t stride, int64_t v, const int64_t* seq, int64_t seq_stride, int64_t cur_len,
                   float beam_score, int64_t banned, float penalty, int64_t beam, int64_t n2k, float* s, float* e,
                   Cand* top) {
  // fp32 rows with unit stride are read in place; others are converted into s first.
  const float* x = s;
  if constexpr (std::is_same_v<T, float>) {
    if (stride == 1) x = row;
  }
  if (x == s)
    for (int64_t j = 0; j < v; ++j) s[j] = static_cast<float>(row[j * stride]);
  float mx[8] = {-kInf, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf};  // 8 chains hide latency
  int64_t j8 = 0;
  for (; j8 + 8 <= v; j8 += 8)
    for (int u = 0; u < 8; ++u) mx[u] = std::max(mx[u], x[j8 + u]);
  for (; j8 < v; ++j8) mx[0] = std::max(mx[0], x[j8]);
  const float m = *std::max_element(mx, mx + 8);
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) e[j] = exp_nonpos(x[j] - m);
  const float logd = static_cast<float>(std::log(sum8(e, v)));
  // Processed scores: log-prob in torch's log_softmax form plus the running score.
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) s[j] = ((x[j] - m) - logd) + beam_score;
  // The penalty is recomputed from the logit, so a token listed twice is penalised once.
  if (penalty != 1.f) {
    for (int64_t c = 0; c < cur_len; ++c) {
      const int64_t t = seq[c * seq_stride];
      if (t < 0 || t >= v) continue;  // ids outside the vocabulary are ignored
      const float lp = (static_cast<float>(row[t * stride]) - m) - logd;
      s[t] = (lp < 0.f ? lp * penalty : lp / penalty) + beam_score;
    }
  }
  if (banned >= 0) s[banned] = -kInf;
  // Top n2k by insertion into a small sorted array; most columns fail the first compare.
  int64_t filled = 0;
  for (int64_t j = 0; j < v; ++j) {
    if (filled == n2k && !(s[j] > top[n2k - 1].score)) continue;  // ties keep the lower token
    const Cand c{std::isnan(s[j]) ? -kInf : s[j], beam * v + j};
    int64_t pos = filled < n2k ? filled++ : n2k - 1;
    while (pos > 0 && before(c, top[pos - 1])) {
      top[pos] = top[pos - 1];
      --pos;
    }
    top[pos] = c;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_step_cpu(const at::Tensor& logits, const at::Tensor& beam_scores,
                                                                     const at::Tensor& sequences, int64_t num_beams,
                                                                     const std::optional<at::Tensor>& cur_len_t,
                                                                     int64_t eos_token_id, int64_t min_length,
                                                                     double repetition_penalty) {
  const auto shape = check_beam_search_step_args(logits, beam_scores, sequences, cur_len_t, eos_token_id, min_length,
                                                 repetition_penalty, num_beams);
  // The length lives in CPU memory here: reading it is a load, not a sync (checked in range).
  const int64_t cur_len = (cur_len_t.has_value() && cur_len_t->defined()) ? *cur_len_t->const_data_ptr<int64_t>()
                                                                          : sequences.size(1);
  const int64_t b = shape.batch, k = shape.beams, v = shape.vocab, n2k = 2 * k;
  auto scores = at::empty({b, n2k}, logits.options().dtype(at::kFloat));
  auto tokens = at::empty({b, n2k}, logits.options().dtype(at::kLong));
  auto beams = at::empty({b, n2k}, logits.options().dtype(at::kLong));
  if (b == 0) return {scores, tokens, beams};

  // Per beam, min(2K, V) real candidates; V >= 2 (checked) makes K * min(2K, V) >= 2K.
  const int64_t per_beam = std::min(n2k, v);
  std::vector<Cand> cand(static_cast<size_t>(b * k * per_beam));
  const float penalty = static_cast<float>(repetition_penalty);  // torch multiplies fp32 by an fp32 scalar
  const int64_t banned = (cur_len < min_length && eos_token_id >= 0) ? eos_token_id : -1;
  const at::Tensor bs = beam_scores.contiguous();
  const float* bs_ptr = bs.const_data_ptr<float>();
  const int64_t* seq_ptr = sequences.const_data_ptr<int64_t>();
  const int64_t q_row = sequences.stride(0), q_col = sequences.stride(1);
  const int64_t s_row = logits.stride(0), s_col = logits.stride(1);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "beam_search_step_cpu", [&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / v);
    at::parallel_for(0, b * k, grain, [&](int64_t lo, int64_t hi) {
      std::vector<float> scratch(static_cast<size_t>(2 * v));
      for (int64_t r = lo; r < hi; ++r) {
        beam_row_topk<scalar_t>(base + r * s_row, s_col, v, seq_ptr + r * q_row, q_col, cur_len, bs_ptr[r], banned,
                                penalty, r % k, per_beam, scratch.data(), scratch.data() + v, cand.data() + r * per_beam);
      }
    });
  });

  float* sc = scores.data_ptr<float>();
  int64_t* tk = tokens.data_ptr<int64_t>();
  int64_t* bm = beams.data_ptr<int64_t>();
  at::parallel_for(0, b, 64, [&](int64_t lo, int64_t hi) {
    std::vector<int64_t> head(static_cast<size_t>(k));
    for (int64_t i = lo; i < hi; ++i) {
      const Cand* lists = cand.data() + i * k * per_beam;
      std::fill(head.begin(), head.end(), 0);
      for (int64_t o = 0; o < n2k; ++o) {  // K-way merge of sorted lists
        int64_t pick = -1;
        for (int64_t beam = 0; beam < k; ++beam) {
          if (head[beam] >= per_beam) continue;
          if (pick < 0 || before(lists[beam * per_beam + head[beam]], lists[pick * per_beam + head[pick]])) pick = beam;
        }
        const Cand& c = lists[pick * per_beam + head[pick]++];
        sc[i * n2k + o] = c.score;
        tk[i * n2k + o] = c.flat % v;
        bm[i * n2k + o] = c.flat / v;
      }
    }
  });
  return {scores, tokens, beams};
}

}  // namespace
}  // namespace blipx

TORCH_LIBRARY_IMPL(blipx, CPU, m) { m.impl("beam_search_step", &blipx::beam_search_step_cpu); }
