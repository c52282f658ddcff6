"""The decode loop shared by greedy search, sampling and beam search.

A decoding mode is a :class:`DecodeRun`: a :class:`~blipx.generation.cache.CachedDecoder` plus
fixed-shape state tensors, and :meth:`DecodeRun.iterate`, one prefill-free decode iteration --
logits processors, the token choice (``argmax`` / :func:`blipx.ops.sample_tokens` /
:func:`blipx.ops.beam_search_step`), the bookkeeping, the cache reorder and the decoder step on
the static KV cache -- that reads no host value (the current length is the cache's device-side
position) and writes every result back into the same tensors. Such an iteration can be captured
once as a CUDA graph and replayed (:mod:`blipx.generation.graphs`); on the CPU the very same
method runs eagerly.

:func:`run_loop` drives it: at most ``max_length - prompt`` iterations (a host-side count, no
sync), and every ``check_every`` iterations one host read of "is anything still running" --
which is also where finished images leave the decoder (compaction). An iteration after every
row finished changes no result (finished rows emit padding, finished beam sets are closed), so
the cadence never changes the ids. The last allowed iteration runs eagerly without the decoder
step (its logits would never be used).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from blipx.generation.cache import CachedDecoder


class DecodeRun:
    """A decode in progress: ``dec`` and the state tensors named in ``BUFFERS`` (None allowed for
    optional ones). :meth:`iterate` must update every buffer in place (``copy_``), never rebind
    it: a captured graph keeps writing to the addresses it saw."""

    BUFFERS: tuple[str, ...] = ()
    dec: CachedDecoder

    def buffers(self) -> list[torch.Tensor]:
        return [t for t in (getattr(self, n) for n in self.BUFFERS) if t is not None]

    def load_(self, other: DecodeRun) -> None:
        """Copy ``other``'s state (same type and shapes) into this run's buffers and decoder, and
        draw from ``other``'s generator in the iterations that run eagerly."""
        for dst, src in zip(self.buffers(), other.buffers(), strict=True):
            dst.copy_(src)
        self.dec.load_(other.dec)
        if hasattr(other, "generator"):
            self.generator = other.generator

    def shape_key(self) -> tuple:
        """Everything a captured iteration's kernels depend on besides the settings: shapes,
        dtypes and which optional buffers exist."""
        return (type(self).__name__, self.dec.shape_key(),
                tuple((n, None if getattr(self, n) is None else (tuple(getattr(self, n).shape), getattr(self, n).dtype))
                      for n in self.BUFFERS))

    def iterate(self, decode_next: bool = True) -> None:
        raise NotImplementedError


def run_loop(
    run: DecodeRun,
    n_steps: int,
    check: Callable[[DecodeRun], DecodeRun | None],
    check_every: int,
    graphs=None,
) -> DecodeRun:
    """Run up to ``n_steps`` iterations of ``run``; every ``check_every`` iterations call
    ``check(run)`` (the host read), which returns None to stop or the run to continue with
    (compacted or not). With ``graphs`` (a :class:`blipx.generation.graphs.StepGraphs`) the
    iterations replay a captured graph; the run returned may then be the graph's own copy of
    the state. Returns the final run."""
    done = 0
    while done < n_steps:
        last = done == n_steps - 1
        if graphs is None or last:
            run.iterate(decode_next=not last)
        else:
            run = graphs.iterate(run)
        done += 1
        if last:
            break
        if done % check_every == 0:
            nxt = check(run)
            if nxt is None:
                break
            run = nxt
    return run


def divide_like_torch(x: torch.Tensor, den: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """``x / d`` as PyTorch computes a tensor divided by a Python float ``d`` on x's device, for
    a ``d`` that lives on the device (``den`` = fp32(d), ``inv`` = fp32 1/fp32(d), looked up per
    step): the CPU kernel divides, the CUDA kernel multiplies by the fp32 reciprocal
    (aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu). HF's beam scores are divided by a
    Python float, so the same expression keeps its ties and its ids."""
    return x * inv if x.is_cuda else x / den


def length_penalty_table(n: int, length_penalty: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 ``j ** length_penalty``, its fp32 reciprocal) for j = 0 .. n, as Python computes the
    power (in double) and torch rounds it to the tensor's fp32; built once per generate call."""
    den = torch.tensor([float(j) ** length_penalty if j > 0 else 1.0 for j in range(n + 1)], dtype=torch.float64)
    den = den.to(torch.float32)
    return den.to(device), (1.0 / den).to(device)
