"""The emulated kernels as a third implementation of blipx's ops, for the tests.

Inside ``active()`` every ``torch.ops.blipx.*`` call on CPU tensors is routed (by a
TorchDispatchMode) to ``torch.ops.blipx_simt.*``: the CUDA entry points of csrc/cuda compiled
for the SIMT emulator (tests/simt/build.py). Each call runs TWICE, on fresh guarded copies of its
tensor arguments, under two configurations that differ in thread schedule, block order, poison
byte of shared memory and fresh buffers, and emulated device (SM count, opt-in shared memory,
which flips the cached/uncached paths of the sampling and beam kernels); both runs must produce
bit-identical outputs, and must leave their read-only inputs untouched. Run 1's results are
returned (mutated arguments are written back), so the test's own assertions judge them.

Tests opt in by a parameter value of type ``Simt`` (``SIMT`` for a ``device`` parameter: it
*is* the string "cpu"); tests/conftest.py activates the backend for such cases.

``BLIPX_SIMT_RUNS`` overrides the two configurations, e.g. ``inorder,reverse``; schedules:
inorder, reverse, random, runahead.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SCHEDULES = {"inorder": 0, "reverse": 1, "random": 2, "runahead": 3}


class Simt(str):
    """A parameter value that selects the emulated kernels; compares equal to its string."""

    def __repr__(self) -> str:
        return f"simt:{str.__str__(self)}"


SIMT = Simt("cpu")


@dataclass(frozen=True)
class Run:
    schedule: str
    poison: int
    sm_count: int
    smem_optin: int
    seed: int = 12345

    def __str__(self) -> str:
        return f"schedule {self.schedule}, poison 0x{self.poison:02x}, {self.sm_count} SMs, {self.smem_optin} B smem"


# Run-ahead breaks the warps' lock-step (write-after-read hazards on reused shared memory show
# only when one warp gets ahead); the random schedule reorders threads within every phase. The
# second device (sm_86-like 99 KB of opt-in shared memory, 3 SMs) makes the V = 30524 sampling
# and beam kernels take their uncached path and the EMA grid stride further.
DEFAULT_RUNS = (Run("runahead", 0xFF, 16, 166912), Run("random", 0x7F, 3, 101376))


def runs() -> tuple[Run, Run]:
    spec = os.environ.get("BLIPX_SIMT_RUNS")
    if not spec:
        return DEFAULT_RUNS
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(names) != 2 or any(n not in SCHEDULES for n in names):
        raise ValueError(f"BLIPX_SIMT_RUNS must name two of {sorted(SCHEDULES)}, got {spec!r}")
    return tuple(Run(n, d.poison, d.sm_count, d.smem_optin) for n, d in zip(names, DEFAULT_RUNS))


_loaded: str | None = None


def load() -> None:
    """Builds (if needed) and loads the emulated library once per process. BLIPX_SIMT_LIB names
    a prebuilt one (the negative control passes its planted builds this way)."""
    global _loaded
    if _loaded is not None:
        return
    path = os.environ.get("BLIPX_SIMT_LIB")
    if not path:
        from tests.simt.build import build

        path = str(build())
    torch.ops.load_library(path)
    _loaded = path


def _to_device(x):
    if isinstance(x, torch.Tensor):
        return torch.ops.blipx_simt.to_device(x)
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return [torch.ops.blipx_simt.to_device(t) for t in x]
    return x


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for t in x if isinstance(t, torch.Tensor)]
    return []


def _call(func, args, kwargs):
    schema = func._schema
    name = schema.name.split("::", 1)[1]
    full = []
    for i, a in enumerate(schema.arguments):
        if i < len(args):
            full.append(args[i])
        elif a.name in kwargs:
            full.append(kwargs[a.name])
        else:
            full.append(a.default_value)
    mutable = [a.alias_info is not None and a.alias_info.is_write for a in schema.arguments]
    op = getattr(torch.ops.blipx_simt, name)
    gens = [torch.default_generator] + [g for g in full if isinstance(g, torch.Generator)]
    states = [g.get_state() for g in gens]
    results = []
    for run in runs():
        for g, s in zip(gens, states):  # both runs draw the same numbers
            g.set_state(s)
        torch.ops.blipx_simt.configure(SCHEDULES[run.schedule], run.seed, run.poison, run.sm_count, run.smem_optin)
        dev = [_to_device(x) for x in full]
        torch.ops.blipx_simt.begin_call()
        try:
            out = op(*dev)
        except RuntimeError as e:
            raise RuntimeError(f"blipx::{name} on the SIMT emulator ({run}): {e}") from None
        finally:
            bad = torch.ops.blipx_simt.end_call()
        if bad:
            raise RuntimeError(f"blipx::{name} on the SIMT emulator ({run}): {bad}")
        results.append((out, dev))
    (out_a, dev_a), (out_b, dev_b) = results
    r_a, r_b = runs()
    why = "the result depends on the thread schedule, block order, device limits or uninitialised memory"
    outs_a, outs_b = _tensors(out_a if isinstance(out_a, (list, tuple)) else [out_a]), _tensors(
        out_b if isinstance(out_b, (list, tuple)) else [out_b])
    for k, (a, b) in enumerate(zip(outs_a, outs_b)):
        if not torch.ops.blipx_simt.storage_equal(a, b):
            raise AssertionError(f"blipx::{name}: output {k} differs between ({r_a}) and ({r_b}): {why}")
    for i, arg in enumerate(full):
        for j, (orig, a, b) in enumerate(zip(_tensors(arg), _tensors(dev_a[i]), _tensors(dev_b[i]))):
            what = f"argument {schema.arguments[i].name}" + (f"[{j}]" if isinstance(arg, (list, tuple)) else "")
            if mutable[i]:
                if not torch.ops.blipx_simt.storage_equal(a, b):
                    raise AssertionError(f"blipx::{name}: {what} differs between ({r_a}) and ({r_b}): {why}")
            elif not (torch.ops.blipx_simt.storage_equal(orig, a) and torch.ops.blipx_simt.storage_equal(orig, b)):
                raise AssertionError(f"blipx::{name}: the kernel wrote into its read-only {what}")
    for i, arg in enumerate(full):
        if mutable[i]:
            for orig, a in zip(_tensors(arg), _tensors(dev_a[i])):
                orig.copy_(a)
    return out_a


class _SimtMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "namespace", None) == "blipx":
            return _call(func, args, kwargs)
        return func(*args, **kwargs)


def call(name: str, *args):
    """Runs the emulated entry point ``blipx_simt::<name>`` on CPU tensors as the dispatch mode runs
    blipx's ops (twice, two configurations, guarded copies, outputs compared bitwise), without
    going through ``torch.ops.blipx``: for kernels whose op the loaded blipx._C may not have yet."""
    load()
    torch.ops.blipx_simt.reset()
    return _call(getattr(torch.ops.blipx_simt, name).default, args, {})


@contextlib.contextmanager
def active():
    """blipx's ops run on the emulated kernels inside this context."""
    load()
    torch.ops.blipx_simt.reset()
    with _SimtMode():
        yield
