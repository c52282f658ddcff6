"""Text-to-image cross-attention: blipx.ops.cross_attention vs SDPA (default and each backend) and
the eager matmul-softmax-matmul formulation, forward and forward+backward.

blipx rows: "blipx auto (-> X)" is the public op with its backend chosen by blipx.ops.dispatch
(timed on first use in this run; X is what it chose), then each of its candidates forced: the
fused kernel ("blipx kernel"), the tensor-core kernel where built ("blipx mma"), and SDPA with
the groups folded into the query length ("blipx sdpa-fold"). ``vs_sdpa`` is the SDPA-fold time
over the row's time: for "auto" it must not fall measurably below 1 (the choice never loses).

Shapes: BLIP training B=64, H=12, Lq=35, Lk=577, D=64 in bf16 on a GPU (fp32 and B=8
on the CPU), and the decode shape: 32 images x 3 beams, Lq=1. For the decode shape SDPA gets K/V
already expanded per beam (what a repeat_interleave'd cache holds; the expansion is not timed)
and, as a second baseline, the beams packed into the query length of one K/V row. No key mask
(BLIP's image attention mask is all ones). Reports µs, TFLOP/s (fwd 4*BG*H*Lq*Lk*D FLOPs; the
backward counted as 2.5x the forward, the FlashAttention convention) and GB/s over the bytes of
the K/V-read-once bound (every input read once, every output written once), with that bound's
time at the device-to-device copy bandwidth measured in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Recorder, bench_main, time_fn  # noqa: E402

import blipx  # noqa: E402
from blipx.ops import dispatch  # noqa: E402
from blipx.ops.reference import cross_attention_ref  # noqa: E402


def sdpa_backends(dev: torch.device) -> dict[str, object]:
    """SDPA with its default choice, then pinned to each backend (CUDA only)."""
    out: dict[str, object] = {"sdpa default": None}
    if dev.type == "cuda":
        from torch.nn.attention import SDPBackend

        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            out[f"sdpa {name.lower()}"] = getattr(SDPBackend, name)
    return out


def sdpa_call(backend):
    def call(q, k, v):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return call


def packed(fn, g):
    """Beams packed into the query length: q [B*G, H, Lq, D] -> [B, H, G*Lq, D] against K/V row b."""

    def call(q, k, v):
        bg, h, lq, d = q.shape
        b = bg // g
        qp = q.reshape(b, g, h, lq, d).transpose(1, 2).reshape(b, h, g * lq, d)
        return fn(qp, k, v).reshape(b, h, g, lq, d).transpose(1, 2).reshape(bg, h, lq, d)

    return call


def copy_gbps(dev: torch.device, iters: int) -> float:
    n = 1 << 26 if dev.type == "cuda" else 1 << 24
    a, b = torch.empty(n, device=dev), torch.empty(n, device=dev)
    t = time_fn(lambda: b.copy_(a), dev, iters=iters)
    return 8 * n / t["ms"] / 1e6


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    b_train = (8 if quick else 64) if cuda else (2 if quick else 8)
    b_dec = 32 if not quick else 4
    shapes = [("train", b_train, 1, 12, 35, 577, 64), ("decode", b_dec, 3, 12, 1, 577, 64)]
    iters = 5 if quick else (50 if cuda else 10)
    bw = copy_gbps(dev, iters)
    rec = Recorder("cross_attention", dev)
    gen = torch.Generator(device="cpu").manual_seed(0)
    esize = torch.finfo(dtype).bits // 8
    for label, b, g, h, lq, lk, d in shapes:
        def rnd(*s):
            return torch.randn(*s, generator=gen).to(device=dev, dtype=dtype)

        q, k, v = rnd(b * g, h, lq, d), rnd(b, h, lk, d), rnd(b, h, lk, d)
        k_rep, v_rep = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
        q_elems, kv_elems = q.numel(), k.numel()
        fwd_flops = 4 * b * g * h * lq * lk * d
        providers: dict[str, tuple] = {"blipx auto": (blipx.ops.cross_attention, k, v)}
        forced = {"blipx": "blipx kernel", "blipx_mma": "blipx mma", "sdpa": "blipx sdpa-fold"}
        for name in dispatch.candidates(dev.type, dtype, d):
            providers[forced[name]] = (lambda q, k, v, run=dispatch.RUN[name]: run(q, k, v, None, d ** -0.5), k, v)
        providers["eager (reference)"] = (cross_attention_ref, k, v)
        for name, backend in sdpa_backends(dev).items():
            fn = sdpa_call(backend)
            providers[name + (" (K/V per beam)" if g > 1 else "")] = (fn, k_rep, v_rep)
            if g > 1:
                providers[name + " (beams packed in Lq)"] = (packed(fn, g), k, v)
        for mode in ("fwd", "fwd+bwd"):
            if mode == "fwd":
                nbytes = esize * (2 * q_elems + 2 * kv_elems)  # q, k, v in; out
                flops = fwd_flops
            else:  # + backward: q, k, v, out, dout in; dq, dk, dv out
                nbytes = esize * (2 * q_elems + 2 * kv_elems + 4 * q_elems + 4 * kv_elems)
                flops = 3.5 * fwd_flops
            bound_us = nbytes / bw / 1e3
            mode_rows = []
            for name, (fn, kk, vv) in providers.items():
                if mode == "fwd":
                    def step(fn=fn, kk=kk, vv=vv):
                        with torch.no_grad():
                            return fn(q, kk, vv)
                else:
                    leaves = [x.detach().requires_grad_(True) for x in (q, kk, vv)]
                    dout = torch.randn_like(q)

                    def step(fn=fn, leaves=leaves, dout=dout):
                        out = fn(*leaves)
                        (g_q, *_) = torch.autograd.grad(out, leaves, dout)
                        return g_q
                try:
                    t = time_fn(step, dev, iters=iters)
                except RuntimeError as exc:  # a backend that rejects this shape/dtype
                    rec.add(shape=label, mode=mode, provider=name, us=float("nan"), note=str(exc).splitlines()[0][:60])
                    continue
                us = t["ms"] * 1e3
                if name == "blipx auto":  # what the dispatch chose for this key (timed in the warm-up)
                    key = dispatch.make_key(q, k, None, mode != "fwd")
                    name = f"blipx auto (-> {dispatch.choices()[key].backend})" if key in dispatch.choices() else name
                mode_rows.append(rec.add(shape=label, mode=mode, provider=name, B=b, G=g,
                                         dtype=str(dtype).split(".")[-1], us=us, p20_us=t["p20_ms"] * 1e3,
                                         p80_us=t["p80_ms"] * 1e3, TFLOPs=flops / us / 1e6, GBps=nbytes / us / 1e3,
                                         bound_us=bound_us, frac_bound=bound_us / us))
            sdpa_us = next((r["us"] for r in mode_rows if r["provider"] == "blipx sdpa-fold"), None)
            for r in mode_rows:
                if sdpa_us is not None and r["provider"].startswith("blipx"):
                    r["vs_sdpa"] = sdpa_us / r["us"]
    cols = ["shape", "mode", "provider", "B", "G", "dtype", "us", "p20_us", "p80_us", "vs_sdpa", "TFLOPs", "GBps",
            "bound_us", "frac_bound", "note", "device"]
    return rec.rows, cols


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
