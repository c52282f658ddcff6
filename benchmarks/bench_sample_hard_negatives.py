"""ITM hard-negative sampling: one draw per row of a B x B similarity with the diagonal excluded.

Providers (each includes turning logits into weights, as the training step must):
- official loop: ``softmax(sim) + 1e-4``, ``fill_diagonal_(0)``, then a Python loop of
  ``torch.multinomial(w[b], 1).item()`` (BLIP pretraining; B host syncs),
- batched multinomial: ``softmax``, ``fill_diagonal_(0)``, one ``torch.multinomial(w, 1)``,
- reference: blipx's pure-PyTorch Gumbel-max twin,
- blipx: ``blipx.ops.sample_hard_negatives(sim)`` (one launch on CUDA, no sync).
B in {64, 256, 1024}; ``speedup`` is relative to the batched multinomial of the same B.
A second row times the training step's contrastive part on B = 256 features, through the code
the tasks run (``ContrastiveTask.contrastive_step``): EMA step, ITC against a queue (momentum
distillation), enqueue, both hard-negative draws, the 3B ITM rows' gather and the ITM loss, on a
linear head in place of the fusion encoder (owned by the models, timed by the model benchmarks).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Recorder, bench_main, time_fn  # noqa: E402

import blipx.ops  # noqa: E402
from blipx.models.outputs import MomentumOutput, RetrieverOutput  # noqa: E402
from blipx.ops.reference import sample_hard_negatives_ref  # noqa: E402
from blipx.train.task import ContrastiveTask, StepContext  # noqa: E402

TEMP = 0.07


def official_loop(sim: torch.Tensor) -> list[int]:
    w = F.softmax(sim, dim=1) + 1e-4
    w.fill_diagonal_(0)
    return [torch.multinomial(w[b], 1).item() for b in range(sim.shape[0])]


def batched_multinomial(sim: torch.Tensor) -> torch.Tensor:
    w = F.softmax(sim, dim=1)
    w.fill_diagonal_(0)
    return torch.multinomial(w, 1).squeeze(1)


class FeatureModel(torch.nn.Module):
    """The model as ``ContrastiveTask.contrastive_step`` sees it, with the encoders replaced by fixed
    features: momentum forward = stored features, ITM = a linear head on (text CLS + image CLS),
    one EMA pair (the head and its copy)."""

    def __init__(self, mom, width: int, dim: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(embed_dim=dim)
        self.temp = torch.nn.Parameter(torch.tensor(TEMP))
        self.itm_head, self.itm_head_m = torch.nn.Linear(width, 2), torch.nn.Linear(width, 2)
        self.has_momentum, self._mom = True, mom

    def momentum_pairs(self):
        return [(self.itm_head, self.itm_head_m)]

    def momentum_features(self, pixel_values, input_ids, attention_mask):
        return self._mom

    def itm_logits(self, image_embeds, text_embeds, attention_mask):
        return self.itm_head(text_embeds[:, 0] + image_embeds[:, 0])


def loss_step_fn(dev: torch.device, b: int, queue_size: int, dim: int = 256, tokens: int = 35, width: int = 768):
    """The training step's contrastive part as the tasks run it (``contrastive_step``): EMA step,
    ITC against [momentum batch; queue] with distillation, enqueue, both hard-negative draws, the
    3B ITM rows' gather, ITM loss; then backward."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(dev)

    img, txt, img_m, txt_m = (unit(b, dim).requires_grad_(i < 2) for i in range(4))
    text_embeds = torch.randn(b, tokens, width, generator=g).to(dev)
    text_atts = torch.ones(b, tokens, dtype=torch.long, device=dev)
    image_embeds = torch.randn(b, 1, width, generator=g).to(dev).requires_grad_(True)
    mom = MomentumOutput(image_embeds.detach(), img_m, text_embeds, txt_m)
    task = ContrastiveTask(FeatureModel(mom, width, dim), queue_size=queue_size).to(dev)
    online = RetrieverOutput(image_embeds, image_feat=img, text_feat=txt)
    ctx = StepContext(alpha=0.4)

    def step():
        out = task.contrastive_step(ctx, online, None, None, text_atts, itm_texts=text_embeds)
        loss = out.itc.loss + out.loss_itm
        loss.backward()
        return loss

    return step


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = (64, 256) if quick else (64, 256, 1024)
    rec = Recorder("sample_hard_negatives", dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    for b in sizes:
        feats = F.normalize(torch.randn(b, 256, generator=g), dim=1).to(dev)
        sim = feats @ F.normalize(torch.randn(b, 256, generator=g), dim=1).to(dev).t() / TEMP
        iters = 5 if quick else 20
        providers = {
            "official loop (.item() per row)": lambda: official_loop(sim),
            "batched torch.multinomial": lambda: batched_multinomial(sim),
            "reference (Gumbel-max, torch)": lambda: sample_hard_negatives_ref(sim),
            "blipx": lambda: blipx.ops.sample_hard_negatives(sim),
        }
        times = {}
        for name, fn in providers.items():
            n = max(3, iters // 4) if name.startswith("official") and b >= 1024 else iters
            times[name] = time_fn(fn, dev, iters=n)
        base = times["batched torch.multinomial"]["ms"]
        for name, t in times.items():
            rec.add(provider=name, B=b, ms=t["ms"], p20_ms=t["p20_ms"], p80_ms=t["p80_ms"], us=t["ms"] * 1e3,
                    speedup=base / t["ms"])
    queue = 57600 if dev.type == "cuda" else (1024 if quick else 4096)
    t = time_fn(loss_step_fn(dev, 256, queue), dev, iters=3 if quick else 10)
    rec.add(provider=f"contrastive_step (ITC queue {queue} + ITM) fwd+bwd", B=256, ms=t["ms"], p20_ms=t["p20_ms"],
            p80_ms=t["p80_ms"], us=t["ms"] * 1e3)
    return rec.rows, ["provider", "B", "ms", "us", "p20_ms", "p80_ms", "speedup", "device"]


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
