"""Training-step throughput: BLIP captioning fine-tune step (blipx CaptionTask vs HF
``BlipForConditionalGeneration`` + AdamW on the same random weights and shapes) and the full BLIP
pretraining step (ITC + ITM + LM, momentum encoders, queue, hard negatives). BLIP-base, 224 px,
batch 64, bf16 autocast on GPU; ``--quick`` or CPU: the tiny config, batch 4, fp32.

Reports ms, images/s, peak memory and MFU from an explicit FLOP count (matmuls and attention of
every pass, x3 for forward + backward; momentum forwards x1).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_captioning import _hf_config  # noqa: E402
from harness import Recorder, bench_main, time_fn  # noqa: E402

from blipx.models import BlipCaptioner, BlipPretrainer  # noqa: E402
from blipx.train.finetune import CaptionTask  # noqa: E402
from blipx.train.task import BlipPretrainTask  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def tower_flops(cfg, batch: int, text_len: int) -> dict[str, float]:
    """Forward FLOPs of one pass of each tower (2 per multiply-add)."""
    v, t = cfg.vision, cfg.text
    n_img = (v.image_size // v.patch_size) ** 2 + 1
    vis = v.depth * (2 * n_img * (4 * v.width**2 + 2 * v.width * v.mlp_dim) + 4 * n_img**2 * v.width)
    vis += 2 * n_img * 3 * v.patch_size**2 * v.width
    h, L = t.hidden_size, t.num_layers
    self_attn = 2 * text_len * 4 * h**2 + 4 * text_len**2 * h
    cross = 2 * text_len * 2 * h**2 + 2 * n_img * 2 * t.encoder_width * h + 4 * text_len * n_img * h
    ffn = 2 * text_len * 2 * h * t.intermediate_size
    text = L * (self_attn + ffn)
    lm_head = 2 * text_len * h * t.vocab_size + 2 * text_len * h * h
    return {"vision": batch * vis, "text": batch * text, "cross": batch * L * cross, "lm_head": batch * lm_head}


def caption_step_flops(cfg, batch, text_len):
    f = tower_flops(cfg, batch, text_len)
    return 3 * (f["vision"] + f["text"] + f["cross"] + f["lm_head"])


def pretrain_step_flops(cfg, batch, text_len):
    f = tower_flops(cfg, batch, text_len)
    # online passes: vision, unimodal text (ITC), image-grounded encoder on 3B pairs (ITM), decoder (LM)
    online = f["vision"] + f["text"] + 3 * (f["text"] + f["cross"]) + (f["text"] + f["cross"] + f["lm_head"])
    momentum = f["vision"] + f["text"]  # momentum encoders: forward only
    return 3 * online + momentum


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    from transformers import BlipForConditionalGeneration

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    small = quick or dev.type == "cpu"
    batch, text_len = (4, 16) if small else (64, 30)
    amp = dev.type == "cuda"
    torch.manual_seed(0)
    hf_cfg = _hf_config(small)
    if not small:
        hf_cfg.vision_config.image_size = 224
    hf = BlipForConditionalGeneration(hf_cfg).to(dev).train()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = BlipCaptioner.from_pretrained(d).to(dev).train()
    size = ours.config.vision.image_size
    g = torch.Generator().manual_seed(1)
    px = torch.randn(batch, 3, size, size, generator=g).to(dev)
    ids = torch.randint(1000, 3000, (batch, text_len), generator=g).to(dev)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    fused = dev.type == "cuda"

    def stepper(model, loss_fn):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=fused or None)

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    task = CaptionTask(ours, prompt_length=0)
    batch_in = {"pixel_values": px, "input_ids": ids, "attention_mask": mask}
    hf_ids = ids.clone()
    hf_ids[:, 0] = 30522
    steps = {
        ("caption", "hf"): stepper(hf, lambda: hf(pixel_values=px, input_ids=hf_ids, attention_mask=mask, labels=hf_ids).loss),
        ("caption", "blipx"): stepper(ours, lambda: task(batch_in)["loss"]),
    }
    pre = BlipPretrainer(ours.config.with_overrides()).to(dev).train()
    pre_task = BlipPretrainTask(pre, queue_size=4 * batch)
    steps[("pretrain", "blipx")] = stepper(pre_task, lambda: pre_task(batch_in)["loss"])
    flops = {"caption": caption_step_flops(ours.config, batch, text_len),
             "pretrain": pretrain_step_flops(ours.config, batch, text_len)}
    peak = next((v for k, v in PEAK_BF16.items() if dev.type == "cuda" and k in torch.cuda.get_device_name(dev)), None)
    rec = Recorder("train", dev)
    base = None
    for (what, provider), fn in steps.items():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t = time_fn(fn, dev, warmup=2, iters=3 if small else 20)
        base = t["ms"] if (what, provider) == ("caption", "hf") else base
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        rec.add(step=what, provider=provider, batch=batch, image_size=size, ms=t["ms"], p20_ms=t["p20_ms"],
                p80_ms=t["p80_ms"], images_per_s=batch * 1e3 / t["ms"], tflops=flops[what] / t["ms"] / 1e9,
                mfu=(flops[what] / (t["ms"] / 1e3) / peak) if peak else float("nan"), peak_gib=mem,
                speedup_vs_hf_caption=base / t["ms"] if what == "caption" else float("nan"))
    cols = ["step", "provider", "batch", "image_size", "ms", "p20_ms", "p80_ms", "images_per_s", "tflops", "mfu",
            "peak_gib", "speedup_vs_hf_caption", "device"]
    return rec.rows, cols


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
