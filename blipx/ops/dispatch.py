"""The cross-attention backend that can never lose: ``blipx.ops.cross_attention`` runs whichever
candidate is fastest for the call's (device, dtype, head dim, shape bucket, grad or not).

Candidates:

- ``"sdpa"``: ``F.scaled_dot_product_attention`` with the G query groups of an image folded
  into the query length (q [B*G, H, Lq, D] -> [B, H, G*Lq, D], a view for the decode and
  training layouts; K/V are never expanded) and the key padding mask as SDPA's boolean mask;
- ``"blipx"``: blipx's fused op (``blipx::cross_attention_fwd``: the C++ kernel on the CPU, the
  FMA kernels on a GPU);
- ``"blipx_mma"``: the tensor-core kernels (``blipx::cross_attention_mma_fwd``, bf16/fp16), a
  candidate only where the build registered them for the device.

Mode: ``BLIPX_CROSS_ATTENTION=auto|blipx|sdpa|blipx_mma`` (read at import; default ``auto``) or
:func:`set_backend`. ``auto`` times every available candidate once, on the first call of each
key, with the call's own tensors (a few warm-up and timed repetitions: CUDA events on a GPU,
``time.perf_counter`` on the CPU) and keeps the choice in memory. A candidate replaces the
incumbent only when it is at least ``MARGIN`` faster, and SDPA is the incumbent, so ``auto``
never picks a backend measurably slower than SDPA and does not flip between near-equal ones
from run to run. ``BLIPX_USE_KERNELS=0`` (``set_use_kernels(False)``) still means the
pure-PyTorch reference, whatever the mode.

Nothing is timed where timing is impossible or unsafe: while tracing (``torch.compile``: the
lookup is a plain dict hit, so a compiled model uses what an eager call chose), during CUDA-graph
capture (``torch.cuda.is_current_stream_capturing()``), on meta or fake tensors. There an
unknown key gets the static preference (:func:`preferred`) without being recorded.

File cache (opt-in): ``BLIPX_DISPATCH_CACHE=1`` keeps the choices in
``$XDG_CACHE_HOME/blipx/dispatch.json`` (``~/.cache/blipx/dispatch.json``), any other value is the
file's path; ``0`` or unset: memory only. Entries are keyed by the device's name (GPU model, or
CPU with its thread count), torch and blipx versions and the candidate set, so a file shared
between machines or builds never applies a stale choice; writes are atomic
(:func:`blipx.weights.io.write_json`). ``blipx info`` prints the mode and the choices made.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from blipx.ops import _backend, reference
from blipx.ops._checks import check_args

BACKENDS = ("sdpa", "blipx", "blipx_mma")
MODES = ("auto",) + BACKENDS
# A challenger must beat the incumbent by this fraction of its time to be chosen: timing noise
# (a loaded CPU) must not flip the choice between near-equal backends from run to run.
MARGIN = 0.10
WARMUP, REPS = 2, 5

# Head dims the tensor-core kernels are written for (issue: D in {32, 64, 80, 96, 128}).
_MMA_HEAD_DIMS = (32, 64, 80, 96, 128)


def _parse_mode(value: str | None) -> str:
    mode = (value or "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"BLIPX_CROSS_ATTENTION must be one of {', '.join(MODES)}; got {value!r}")
    return mode


_mode = _parse_mode(os.environ.get("BLIPX_CROSS_ATTENTION"))


def mode() -> str:
    """The dispatch mode: ``auto`` or the forced backend."""
    return _mode


def set_backend(value: str) -> None:
    """Force a backend (``"blipx"``, ``"sdpa"``, ``"blipx_mma"``) or go back to ``"auto"``,
    process-wide (what ``BLIPX_CROSS_ATTENTION`` sets at import)."""
    global _mode
    _mode = _parse_mode(value)


# --- the candidates -----------------------------------------------------------------------------


def sdpa_cross_attention(q, k, v, key_padding_mask=None, scale=None) -> torch.Tensor:
    """The op's contract through SDPA: the G query rows of image b are one query sequence of
    length G*Lq against K/V row b, so K/V are read as they are (no repeat_interleave).

    SDPA gives a query that may see no key NaN on some backends; the reference gives it zeros.
    An image whose every key is masked therefore attends to all its keys and its output is
    zeroed (also zeroing its gradients), so no SDPA backend ever sees an empty row."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    check_args("cross_attention", q, k, v, key_padding_mask, scale)
    bg, h, lq, d = q.shape
    b = k.shape[0]
    g = bg // b
    # [B*G, H, Lq, D] -> [B, G, H, Lq, D] -> [B, H, G, Lq, D] -> [B, H, G*Lq, D]: a view when
    # G == 1 or Lq == 1 (training and decoding), a copy of q otherwise.
    qf = q if g == 1 else q.reshape(b, g, h, lq, d).transpose(1, 2).reshape(b, h, g * lq, d)
    mask = empty = None
    if key_padding_mask is not None:
        masked = key_padding_mask.to(torch.bool)
        empty = masked.all(dim=1)  # [B]: images with no key to attend to
        mask = ~(masked & ~empty[:, None])[:, None, None, :]  # SDPA: True = attend
    out = F.scaled_dot_product_attention(qf, k, v, attn_mask=mask, scale=scale)
    if empty is not None:
        out = out.masked_fill(empty[:, None, None, None], 0.0)
    if g == 1:
        return out
    return out.reshape(b, h, g, lq, d).transpose(1, 2).reshape(bg, h, lq, d)


def _blipx(q, k, v, key_padding_mask, scale):
    return torch.ops.blipx.cross_attention_fwd.default(q, k, v, key_padding_mask, scale)[0]


def _blipx_mma(q, k, v, key_padding_mask, scale):
    return torch.ops.blipx.cross_attention_mma_fwd.default(q, k, v, key_padding_mask, scale)[0]


def _reference(q, k, v, key_padding_mask, scale):
    return reference.cross_attention_ref(q, k, v, key_padding_mask=key_padding_mask, scale=scale)


def _sdpa(q, k, v, key_padding_mask, scale):
    return sdpa_cross_attention(q, k, v, key_padding_mask, scale)


RUN: dict[str, Callable] = {"sdpa": _sdpa, "blipx": _blipx, "blipx_mma": _blipx_mma, "reference": _reference}

# Looked up once, like _backend._AVAILABLE (torch.compile traces a dict lookup).
_KERNELS = {
    (op, dev): _backend.has_kernel(op, dev)
    for op in ("cross_attention_fwd", "cross_attention_mma_fwd")
    for dev in ("cpu", "cuda", "meta")
}


def candidates(device_type: str, dtype: torch.dtype, head_dim: int) -> tuple[str, ...]:
    """The backends that can serve this call, in order of preference for ties and untimed calls."""
    out = []
    mma = (_KERNELS.get(("cross_attention_mma_fwd", device_type), False) and dtype in (torch.float16, torch.bfloat16)
           and head_dim in _MMA_HEAD_DIMS)
    if mma:
        out.append("blipx_mma")
    out.append("sdpa")  # the incumbent: others must beat it by MARGIN
    if _KERNELS.get(("cross_attention_fwd", device_type), False):
        out.append("blipx")
    return tuple(out)


def preferred(device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """The choice where nothing can be timed: the tensor-core kernels where they exist, else
    SDPA (on a GPU the FMA kernels cannot match SDPA's tensor cores; on the CPU SDPA's flash
    kernel is the safe side of "never slower than SDPA")."""
    return candidates(device_type, dtype, head_dim)[0]


# --- keys and the choice table ------------------------------------------------------------------


def _p2(n: int) -> int:
    """n rounded up to a power of two (the shape buckets). A loop, which torch.compile traces."""
    v = 1
    while v < n:
        v *= 2
    return v


def bucket(q: torch.Tensor, k: torch.Tensor, masked: bool) -> tuple:
    """(B*H, G*Lq, Lk) rounded up to powers of two, and whether a mask is given: the sizes that
    decide which backend wins (parallel rows, query rows per K/V, keys)."""
    bg, h, lq, _ = q.shape
    b, lk = k.shape[0], k.shape[2]
    g = bg // max(b, 1)
    return (_p2(b * h), _p2(g * lq), _p2(lk), bool(masked))


def make_key(q, k, key_padding_mask, grad: bool) -> tuple:
    dev = q.device
    return (dev.type, dev.index, q.dtype, int(q.shape[-1]), bucket(q, k, key_padding_mask is not None), bool(grad))


@dataclass
class Choice:
    backend: str
    times_us: dict[str, float] = field(default_factory=dict)  # measured; empty when forced or read
    source: str = "timed"  # "timed" | "file"


_choices: dict[tuple, Choice] = {}
_lock = threading.Lock()
_warned: set[str] = set()


def choices() -> dict[tuple, Choice]:
    """The choices made so far in this process (timed, or read from the file cache)."""
    return dict(_choices)


def reset() -> None:
    """Forget every choice (the next call of each key times again; the file is read again)."""
    global _file_loaded
    _choices.clear()
    _file_entries.clear()
    _file_loaded = False


# --- timing -------------------------------------------------------------------------------------

Timer = Callable[[str, Callable[[], object], torch.device], float]


def default_timer(name: str, fn: Callable[[], object], device: torch.device) -> float:
    """Seconds per call of ``fn``: WARMUP calls, then the fastest of REPS timed ones (the minimum
    is the least disturbed by a loaded machine). CUDA events on a GPU (the synchronisations are
    the price of choosing, once per key); ``time.perf_counter`` on the CPU."""
    for _ in range(WARMUP):
        fn()
    best = math.inf
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(REPS):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            best = min(best, a.elapsed_time(b) / 1e3)
    else:
        for _ in range(REPS):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


_timer: Timer = default_timer


def set_timer(timer: Timer | None) -> None:
    """Replace the timer (``timer(backend_name, fn, device) -> seconds per call``); None restores
    :func:`default_timer`. The tests inject a fake one."""
    global _timer
    _timer = default_timer if timer is None else timer


def _bench_call(name: str, q, k, v, mask, scale, grad: bool) -> Callable[[], object]:
    """One call of backend ``name`` on the call's own inputs: forward only, or forward and
    backward on detached copies (the caller's autograd graph is never touched)."""
    run = RUN[name]
    if not grad:
        def fwd():
            with torch.no_grad():
                return run(q, k, v, mask, scale)

        return fwd
    leaves = [x.detach().requires_grad_(x.requires_grad) for x in (q, k, v)]
    wants = [x for x in leaves if x.requires_grad]
    # Not randn: timing must not draw from the global RNG (a run that timed and one that did not,
    # e.g. a resumed one, would then see different random streams).
    dout = torch.ones(q.shape, device=q.device, dtype=q.dtype)

    def fwd_bwd():
        with torch.enable_grad():
            out = run(*leaves, mask, scale)
            return torch.autograd.grad(out, wants, dout)

    return fwd_bwd


def _time_candidates(names, q, k, v, mask, scale, grad) -> Choice:
    times: dict[str, float] = {}
    for name in names:
        try:
            times[name] = _timer(name, _bench_call(name, q, k, v, mask, scale, grad), q.device)
        except RuntimeError as exc:  # a backend that refuses this shape / dtype / device
            if name not in _warned:
                _warned.add(name)
                warnings.warn(f"blipx.ops.cross_attention: backend {name!r} failed while being timed and is "
                              f"skipped for this shape: {str(exc).splitlines()[0]}", RuntimeWarning, stacklevel=4)
    if not times:
        raise RuntimeError("blipx.ops.cross_attention: no backend could run this call")
    # SDPA is the incumbent; any other candidate must beat the best so far by MARGIN.
    best = None
    for name in sorted(names, key=lambda n: n != "sdpa"):
        if name in times and (best is None or times[name] < (1.0 - MARGIN) * times[best]):
            best = name
    return Choice(best, {n: t * 1e6 for n, t in times.items()})


def _can_time(q: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or q.device.type == "meta" or q.is_meta:
        return False
    from blipx.ops._checks import _traced

    if _traced(q):
        return False
    if q.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _traced_choice(key: tuple, fallback: str) -> str:
    hit = _choices.get(key)
    return fallback if hit is None else hit.backend


# What torch.compiler.assume_constant_result sets (without importing torch._dynamo here): the
# traced call is replaced by its result, with no guard on the table, so a choice made later by
# an eager call does not recompile a compiled model (it keeps what it saw when traced).
_traced_choice._dynamo_marked_constant = True  # type: ignore[attr-defined]


def select(q, k, v, key_padding_mask, scale: float) -> str:
    """The backend for this call (``"reference"`` with kernels off)."""
    if not _backend.use_kernels():
        return "reference"
    dev = q.device.type
    if dev == "meta":  # shape propagation: the fake kernel
        return "blipx" if _KERNELS.get(("cross_attention_fwd", "meta"), False) else "reference"
    if q.dim() != 4 or k.dim() != 4:  # no key to make: refused with the op's message
        check_args("cross_attention", q, k, v, key_padding_mask, scale)
    avail = candidates(dev, q.dtype, q.shape[-1])
    if _mode != "auto":
        return _forced(_mode, avail, dev)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if torch.compiler.is_compiling():
        if not all(isinstance(n, int) for n in (*q.shape, *k.shape)):
            return avail[0]  # symbolic shapes: no bucket to look up
        return _traced_choice(make_key(q, k, key_padding_mask, grad), avail[0])
    key = make_key(q, k, key_padding_mask, grad)
    hit = _choices.get(key)
    if hit is not None:  # the steady state, and all that a traced or captured call does
        return hit.backend
    if not _can_time(q):
        return avail[0]
    # Wrong arguments must fail with the op's message, not inside a candidate being timed.
    check_args("cross_attention", q, k, v, key_padding_mask, scale)
    with _lock:
        hit = _choices.get(key)
        if hit is None:
            _load_file()
            hit = _lookup_file(key, avail)
            if hit is None:
                hit = _time_candidates(avail, q, k, v, key_padding_mask, scale, grad)
                _save_file(key, hit, avail)
            _choices[key] = hit
    return hit.backend


def _forced(name: str, avail: tuple[str, ...], dev: str) -> str:
    """A forced backend; "blipx" without a kernel for the device becomes the reference later
    (with _backend's one-time warning), a missing "blipx_mma" becomes "blipx" (warned here)."""
    if name == "blipx" or name in avail:
        return name
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"BLIPX_CROSS_ATTENTION={name}: no such kernel for this call ({dev}); using blipx",
                      RuntimeWarning, stacklevel=4)
    return "blipx"


def cross_attention(q, k, v, key_padding_mask=None, scale=None) -> torch.Tensor:
    """Dispatch one call (see the module docstring); the public API is
    :func:`blipx.ops.cross_attention`."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if k.shape[0] == 0:  # an empty batch: no group size to fold, nothing worth timing
        return RUN["reference"](q, k, v, key_padding_mask, scale)
    name = select(q, k, v, key_padding_mask, scale)
    if name == "blipx" and not _backend.kernel_for("cross_attention_fwd", q.device):
        name = "reference"
    return RUN[name](q, k, v, key_padding_mask, scale)


# --- the file cache -----------------------------------------------------------------------------

_FILE_VERSION = 1
_file_loaded = False


def cache_path() -> Path | None:
    """The file of the choices, or None when the file cache is off (the default)."""
    value = os.environ.get("BLIPX_DISPATCH_CACHE", "").strip()
    if value.lower() in ("", "0", "false", "no", "off"):
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "blipx" / "dispatch.json"
    return Path(value).expanduser()


def _device_name(device_type: str, index: int | None) -> str:
    if device_type == "cuda":
        return torch.cuda.get_device_name(index if index is not None else torch.cuda.current_device())
    import platform

    return f"{device_type} {platform.machine()} {platform.processor() or ''}".strip() + f" x{torch.get_num_threads()}"


def _file_key(key: tuple, avail: tuple[str, ...]) -> str:
    dev, index, dtype, d, bkt, grad = key
    return "|".join([_device_name(dev, index), str(dtype).removeprefix("torch."), f"D{d}", "x".join(map(str, bkt[:3])),
                     "mask" if bkt[3] else "nomask", "grad" if grad else "nograd", "+".join(sorted(avail))])


def _versions() -> dict[str, str]:
    import blipx

    return {"torch": torch.__version__, "blipx": blipx.__version__}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _FILE_VERSION or data.get("builds") != _versions():
        return {}  # another format or another build: its timings say nothing about this one
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _load_file() -> None:
    """Read the file's entries for the keys this process may meet (once; cheap)."""
    global _file_loaded
    if _file_loaded:
        return
    _file_loaded = True
    path = cache_path()
    if path is None:
        return
    _file_entries.update(_read(path))


_file_entries: dict[str, dict] = {}


def _lookup_file(key: tuple, avail: tuple[str, ...]) -> Choice | None:
    entry = _file_entries.get(_file_key(key, avail))
    if isinstance(entry, dict) and entry.get("backend") in avail:
        return Choice(entry["backend"], dict(entry.get("times_us", {})), source="file")
    return None


def _save_file(key: tuple, choice: Choice, avail: tuple[str, ...]) -> None:
    path = cache_path()
    if path is None or choice.source != "timed":
        return
    from blipx.weights.io import write_json  # lazy: blipx.weights imports blipx.layers, which imports ops

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read(path)  # merge with what other processes wrote meanwhile
        entries[_file_key(key, avail)] = {"backend": choice.backend, "times_us": choice.times_us}
        write_json(path, {"version": _FILE_VERSION, "builds": _versions(), "entries": entries})
        _file_entries.update(entries)
    except OSError as exc:  # a read-only home must not break attention
        if "file" not in _warned:
            _warned.add("file")
            warnings.warn(f"blipx dispatch cache {path} not written: {exc}", RuntimeWarning, stacklevel=4)


def describe() -> list[str]:
    """Lines for ``blipx info``: the mode, the file cache and every choice so far."""
    env = os.environ.get("BLIPX_CROSS_ATTENTION")
    lines = [f"cross_attention backend: {_mode}" + (f" (BLIPX_CROSS_ATTENTION={env})" if env is not None else "")
             + ("" if _backend.use_kernels() else "; kernels off: the reference runs")]
    path = cache_path()
    lines.append(f"  choice cache file: {path if path is not None else 'off (BLIPX_DISPATCH_CACHE=1 to keep choices)'}")
    for dev in ("cpu", "cuda"):
        fp32, bf16 = (", ".join(candidates(dev, t, 64)) for t in (torch.float32, torch.bfloat16))
        lines.append(f"  {dev} candidates: fp32 {fp32}; bf16/fp16 {bf16} (D 64)")
    if path is not None:
        _load_file()
        for fk, entry in sorted(_file_entries.items()):
            lines.append(f"  file: {fk} -> {entry.get('backend')}")
    if not _choices:
        lines.append("  choices made in this process: none yet")
    for key, c in sorted(_choices.items(), key=lambda kv: str(kv[0])):
        dev, index, dtype, d, bkt, grad = key
        times = ", ".join(f"{n} {t:.0f} us" for n, t in c.times_us.items())
        where = dev if index is None else f"{dev}:{index}"
        lines.append(f"  {where} {str(dtype).removeprefix('torch.')} D{d} B*H<={bkt[0]} G*Lq<={bkt[1]} Lk<={bkt[2]}"
                     f"{' mask' if bkt[3] else ''} {'fwd+bwd' if grad else 'fwd'} -> {c.backend}"
                     + (f" ({times})" if times else f" ({c.source})"))
    return lines
