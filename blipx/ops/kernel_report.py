"""Static report of blipx's compiled CUDA kernels: resources, theoretical occupancy, SASS facts.

No GPU needed. For every kernel and architecture in the built extension (``blipx._C``) the
report reads, from the toolkit's binary tools (``cuobjdump -res-usage``, ``nvdisasm``):

* registers per thread, stack frame bytes (spills, or an intentional local array), static
  shared memory;
* the dynamic shared memory and block size the launchers use at the design shape
  (:data:`LAUNCHES`, read off the launchers in ``csrc/include/blipx/*.cuh``);
* the theoretical occupancy on sm_80 and sm_90 from those numbers, with the rules of CUDA's
  ``cuda_occupancy.h`` (:func:`theoretical_occupancy`);
* SASS facts that decide speed: the widths of global loads/stores (``LDG.E.128`` = 16-byte
  vectors), tensor-core instructions (``HMMA``/``HGMMA``), local-memory traffic (``LDL``/``STL``).

Each ``__global__`` kernel in the headers states what it was designed for in one comment line
just above it (before its ``template`` line, if any)::

    // blipx-design: occupancy >= 50%[, sm_90 occupancy >= 75%][, local <= 256 B][, ldg128][, mma] -- why

``occupancy >= N%`` applies to every arch unless prefixed by one; ``local <= N B`` allows a
stack frame of N bytes for an intentional local array (anything beyond is a spill); ``ldg128``
expects 16-byte global loads and ``mma`` tensor-core instructions in every instantiation.
:func:`check` turns the report into a list of problems (spills, occupancy below design, missing
or unreadable design comments, missing SASS facts); ``tests/ops/test_kernel_report.py`` fails on
any. ``blipx info --kernels`` prints the table and the problems.

Torch-free except :func:`locate_extension`, which asks ``blipx._native`` (and so torch) where
the loaded extension lives.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Per-SM limits and the occupancy arithmetic
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of one compute capability (CUDA programming guide, table of technical
    specifications; the same values as cudaDeviceProp on A100 / H100)."""

    name: str
    smem_per_sm: int  # bytes, the largest carveout
    smem_per_block_optin: int  # bytes, with cudaFuncAttributeMaxDynamicSharedMemorySize
    regs_per_sm: int = 64 * 1024
    max_warps: int = 64
    max_blocks: int = 32
    max_threads_per_block: int = 1024
    max_regs_per_thread: int = 255
    reg_granularity: int = 256  # registers allocated per warp in units of 256
    sub_partitions: int = 4  # registers are allocated per SM sub-partition (quarter)
    smem_per_block_default: int = 48 * 1024  # without the opt-in attribute
    smem_granularity: int = 128
    reserved_smem_per_block: int = 1024  # the driver's per-block reservation (sm_80 and later)
    warp_size: int = 32


ARCH_LIMITS: dict[str, ArchLimits] = {
    "sm_80": ArchLimits("sm_80", smem_per_sm=164 * 1024, smem_per_block_optin=163 * 1024),
    "sm_90": ArchLimits("sm_90", smem_per_sm=228 * 1024, smem_per_block_optin=227 * 1024),
}


@dataclasses.dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float  # active warps / max warps
    limiter: str  # "registers", "shared memory", "warps", "blocks"; "launch fails: ..." at 0

    @property
    def percent(self) -> float:
        return 100.0 * self.fraction


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def theoretical_occupancy(
    arch: ArchLimits, threads: int, regs: int, smem: int, *, smem_opt_in: bool = False
) -> Occupancy:
    """Resident blocks and warps per SM for one kernel launch, as cuda_occupancy.h computes them.

    threads: block size; regs: registers per thread; smem: static + dynamic shared memory per
    block in bytes, *without* the driver's 1 KB reservation (added here, once, for every arch).
    smem_opt_in: the launcher raised cudaFuncAttributeMaxDynamicSharedMemorySize, so a block may
    use more than 48 KB.
    """
    if threads < 1 or threads > arch.max_threads_per_block:
        return Occupancy(0, 0, 0.0, f"launch fails: {threads} threads per block")
    warps = -(-threads // arch.warp_size)
    limits: dict[str, int] = {"blocks": arch.max_blocks, "warps": arch.max_warps // warps}

    # Registers: per-warp allocation rounded to the granularity, warps packed per sub-partition.
    regs_per_warp = _round_up(max(regs, 1) * arch.warp_size, arch.reg_granularity)
    # The hardware's per-block check assumes every sub-partition gets the same warp count.
    if regs > arch.max_regs_per_thread or regs_per_warp * _round_up(warps, arch.sub_partitions) > arch.regs_per_sm:
        return Occupancy(0, 0, 0.0, f"launch fails: {regs} registers x {threads} threads")
    per_sub = (arch.regs_per_sm // arch.sub_partitions) // regs_per_warp
    limits["registers"] = per_sub * arch.sub_partitions // warps

    # Shared memory: the reservation plus the kernel's bytes, in allocation units.
    cap = arch.smem_per_block_optin if smem_opt_in else arch.smem_per_block_default
    if smem > cap:
        return Occupancy(0, 0, 0.0, f"launch fails: {smem} B shared memory > {cap} B per block")
    per_block = _round_up(smem + arch.reserved_smem_per_block, arch.smem_granularity)
    limits["shared memory"] = arch.smem_per_sm // per_block

    # Ties go to the first named; registers and shared memory are the actionable ones.
    order = ("registers", "shared memory", "warps", "blocks")
    limiter = min(order, key=lambda k: limits[k])
    blocks = limits[limiter]
    return Occupancy(blocks, blocks * warps, blocks * warps / arch.max_warps, limiter)


# --------------------------------------------------------------------------------------------
# How the launchers launch each kernel (csrc/include/blipx/*.cuh), at the design shape
# --------------------------------------------------------------------------------------------

# BLIP's text vocabulary (bert-base-uncased, 30522, plus [DEC] and [ENC]): the design shape of
# the decoding kernels, whose block size and shared-memory cache depend on V.
DESIGN_VOCAB = 30524


def _vocab_mask_bytes(v: int) -> int:
    return (v + 31) // 32 * 4


@dataclasses.dataclass(frozen=True)
class Launch:
    """Block size and dynamic shared memory one kernel is launched with."""

    threads: int
    why: str
    # Dynamic shared memory in bytes for one instantiation (its demangled template arguments).
    dynamic_smem: Callable[[tuple[str, ...]], int] = lambda args: 0
    smem_opt_in: bool = False  # the launcher sets the max-dynamic-smem attribute above 48 KB


def _cache_flag(args: tuple[str, ...]) -> bool:
    return len(args) > 1 and args[1] == "true"


def mma_fwd_smem(head_dim: int, row_warps: int) -> int:
    """Dynamic shared memory of cross_attn_mma_fwd_kernel<T, kD, kWm> (MmaFwdConfig in
    blipx/cross_attention_mma.cuh): the Q tile, double-buffered K and V tiles and key biases, or
    the fp32 epilogue that reuses them, whichever is larger."""
    kd, kwm = head_dim, row_warps
    kwn = 4 // kwm
    base = 64 if kd <= 64 else 32
    keys_per_warp = max(16, base // kwn)
    block_n, block_m, ld = keys_per_warp * kwn, 16 * kwm, kd + 8
    ld_acc = kd + ((8 - kd % 32) + 32) % 32
    main = block_m * ld * 2 + 4 * block_n * ld * 2 + 2 * block_n * 4
    epilogue = kwn * block_m * (ld_acc + 2) * 4
    return max(main, epilogue)


def mma_bwd_smem(head_dim: int, kernel: str) -> int:
    """Dynamic shared memory of the tensor-core backward kernels (MmaBwdConfig<kD>): the dq
    kernel's Q and dO tiles of 64 rows, double-buffered K/V tiles of 32 keys, key biases and row
    stats; the dk/dv kernel's K and V of 64 keys, double-buffered Q/dO tiles of 32 rows, row stats."""
    row = (head_dim + 8) * 2
    if kernel == "dq":
        return 2 * 64 * row + 4 * 32 * row + 2 * 32 * 4 + 2 * 64 * 4
    return 2 * 64 * row + 4 * 32 * row + 4 * 32 * 4


LAUNCHES: dict[str, Launch] = {
    "momentum_update_kernel": Launch(256, "kEmaThreads"),
    "enqueue_rows_kernel": Launch(256, "enqueue_launch: threads = 256"),
    "enqueue_advance_kernel": Launch(1, "enqueue_launch: <<<1, 1>>>"),
    "cross_attn_fwd_kernel": Launch(256, "kAttnThreads"),
    "cross_attn_fwd_small_kernel": Launch(256, "kAttnThreads"),
    "cross_attn_bwd_dq_kernel": Launch(256, "kAttnThreads"),
    "cross_attn_bwd_dkdv_kernel": Launch(256, "kAttnThreads"),
    "cross_attn_mma_fwd_kernel": Launch(
        128,
        "kMmaThreads; dyn smem: MmaFwdConfig<kD, kWm>::kSmemBytes",
        lambda a: mma_fwd_smem(int(a[1]), int(a[2])),
        smem_opt_in=True,
    ),
    "cross_attn_mma_bwd_dq_kernel": Launch(
        128, "kMmaThreads; dyn smem: MmaBwdConfig<kD>::kDqSmem", lambda a: mma_bwd_smem(int(a[1]), "dq"), smem_opt_in=True
    ),
    "cross_attn_mma_bwd_dkdv_kernel": Launch(
        128, "kMmaThreads; dyn smem: MmaBwdConfig<kD>::kKvSmem", lambda a: mma_bwd_smem(int(a[1]), "dkdv"),
        smem_opt_in=True,
    ),
    "beam_step_stage1_kernel": Launch(
        1024,
        f"beam_step_threads(V={DESIGN_VOCAB}); dyn smem: token bitmask (+ V floats when kCache)",
        lambda a: _vocab_mask_bytes(DESIGN_VOCAB) + (4 * DESIGN_VOCAB if _cache_flag(a) else 0),
        smem_opt_in=True,
    ),
    "beam_step_stage2_kernel": Launch(128, "beam_search_step_launch: 128 threads"),
    "sample_tokens_kernel": Launch(
        1024,
        f"sample_tokens_threads(V={DESIGN_VOCAB}); dyn smem: V floats when kCache",
        lambda a: 4 * DESIGN_VOCAB if _cache_flag(a) else 0,
        smem_opt_in=True,
    ),
    "sample_hard_negatives_kernel": Launch(
        512, "hard_negative_threads(N=600): BLIP pretraining, 8 GPUs x 75 gathered candidates"
    ),
}


# --------------------------------------------------------------------------------------------
# Design comments in the headers
# --------------------------------------------------------------------------------------------

DESIGN_TAG = "blipx-design:"
_OCC_RE = re.compile(r"^(?:(sm_\d+)\s+)?occupancy\s*>=\s*(\d+(?:\.\d+)?)\s*%$")
_LOCAL_RE = re.compile(r"^local\s*<=\s*(\d+)\s*B$")
_KERNEL_RE = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\(([^)]*)\)\s*)?(\w+)\s*\(")


@dataclasses.dataclass
class Design:
    occupancy: dict[str, float]  # arch ("*" = every arch) -> minimum occupancy in percent
    local_bytes: int = 0
    ldg128: bool = False
    mma: bool = False
    why: str = ""
    text: str = ""
    errors: list[str] = dataclasses.field(default_factory=list)

    def min_occupancy(self, arch: str) -> float | None:
        return self.occupancy.get(arch, self.occupancy.get("*"))


def parse_design(comment: str) -> Design:
    """Parses the text after ``blipx-design:``; unreadable items land in ``errors``."""
    spec, _, why = comment.partition(" -- ")
    d = Design(occupancy={}, why=why.strip(), text=comment.strip())
    for item in (s.strip() for s in spec.split(",")):
        if m := _OCC_RE.match(item):
            d.occupancy[m.group(1) or "*"] = float(m.group(2))
        elif m := _LOCAL_RE.match(item):
            d.local_bytes = int(m.group(1))
        elif item == "ldg128":
            d.ldg128 = True
        elif item == "mma":
            d.mma = True
        else:
            d.errors.append(f"unreadable design item {item!r}")
    if not d.occupancy:
        d.errors.append("no 'occupancy >= N%' item")
    return d


@dataclasses.dataclass
class HeaderKernel:
    name: str
    file: Path
    line: int  # 1-based line of __global__
    launch_bounds: int | None
    design: Design | None


def _int_constants(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"constexpr\s+int\s+(\w+)\s*=\s*(\d+)\s*;", text)}


def scan_headers(include_dir: Path) -> dict[str, HeaderKernel]:
    """Every ``__global__`` kernel of ``include_dir/*.cuh`` with its design comment, found in the
    run of comment / ``template`` lines directly above the ``__global__`` line."""
    kernels: dict[str, HeaderKernel] = {}
    for path in sorted(include_dir.glob("*.cuh")):
        text = path.read_text()
        lines = text.splitlines()
        consts = _int_constants(text)
        for i, line in enumerate(lines):
            if "__global__" not in line or line.lstrip().startswith("//"):
                continue
            m = _KERNEL_RE.search(" ".join(lines[i : i + 3]))
            if not m:
                continue
            bounds = m.group(1)
            lb = None
            if bounds:
                first = bounds.split(",")[0].strip()
                lb = int(first) if first.isdigit() else consts.get(first)
            design = None
            j = i - 1
            while j >= 0 and (lines[j].lstrip().startswith("//") or lines[j].lstrip().startswith("template")):
                s = lines[j].strip()
                if s.startswith("//") and DESIGN_TAG in s:
                    design = parse_design(s.split(DESIGN_TAG, 1)[1])
                    break
                j -= 1
            kernels[m.group(2)] = HeaderKernel(m.group(2), path, i + 1, lb, design)
    return kernels


def default_include_dir() -> Path:
    """csrc/include/blipx of the source tree this package runs from (an editable install)."""
    return Path(__file__).resolve().parents[2] / "csrc" / "include" / "blipx"


# --------------------------------------------------------------------------------------------
# Tools and the extension
# --------------------------------------------------------------------------------------------


class ReportUnavailable(Exception):
    """The report cannot be made here: no CUDA build of the extension, or no binary tools."""


def find_tool(name: str) -> str | None:
    """A CUDA binary tool: $CUDA_HOME/bin, PATH, /usr/local/cuda/bin, then the copy that the torch
    CUDA wheel's Triton ships (triton/backends/nvidia/bin), located without importing triton."""
    dirs = [os.path.join(os.environ[v], "bin") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    for d in dirs:
        if os.access(p := os.path.join(d, name), os.X_OK):
            return p
    if p := shutil.which(name):
        return p
    cands = [Path("/usr/local/cuda/bin")]
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        cands += [Path(loc) / "backends" / "nvidia" / "bin" for loc in spec.submodule_search_locations]
    for d in cands:
        if os.access(d / name, os.X_OK):
            return str(d / name)
    return None


def locate_extension() -> Path:
    """The compiled extension that blipx._native loaded; ReportUnavailable if none or CPU-only."""
    from blipx import _native  # imports torch: the extension is found where Python loaded it

    if _native._C is None:
        raise ReportUnavailable(f"blipx._C is not built or does not load ({_native.load_error})")
    if not _native.build_info().get("with_cuda"):
        raise ReportUnavailable("blipx._C was built without CUDA kernels (CPU-only build)")
    return Path(_native._C.__file__)


# --------------------------------------------------------------------------------------------
# Parsing the tools' output
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Resources:
    regs: int
    stack: int  # stack frame bytes: spills, local arrays, call frames
    local: int
    shared: int  # static shared memory as the cubin records it


_RES_FUNC_RE = re.compile(r"^\s*Function\s+(\S+?):\s*$")
_RES_LINE_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def parse_res_usage(text: str, arch: str | None = None) -> dict[tuple[str, str], Resources]:
    """``cuobjdump -res-usage`` output -> {(arch, mangled name): Resources}. On a fat binary the
    output names each cubin's arch; on a single cubin it does not, so pass ``arch``."""
    out: dict[tuple[str, str], Resources] = {}
    func = None
    for line in text.splitlines():
        if m := re.match(r"^arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := _RES_FUNC_RE.match(line):
            func = m.group(1)
        elif (m := _RES_LINE_RE.search(line)) and arch and func:
            regs, stack, shared, local = map(int, m.groups())
            out[(arch, func)] = Resources(regs, stack, local, shared)
            func = None
    return out


@dataclasses.dataclass
class SassFacts:
    ldg: Counter  # global load width in bits -> instruction count
    stg: Counter
    local_ops: int  # LDL + STL
    mma: int  # HMMA / HGMMA (and the integer/fp8 variants)
    instructions: int
    ldsm: int = 0  # LDSM: ldmatrix
    ldgsts: int = 0  # LDGSTS: cp.async global -> shared

    def brief(self) -> str:
        def widths(c: Counter) -> str:
            return " ".join(f"{w}x{n}" for w, n in sorted(c.items(), reverse=True)) or "-"

        s = f"ldg {widths(self.ldg)}; stg {widths(self.stg)}"
        if self.local_ops:
            s += f"; ldl/stl {self.local_ops}"
        if self.mma:
            s += f"; mma {self.mma}"
        if self.ldsm:
            s += f"; ldmatrix {self.ldsm}"
        if self.ldgsts:
            s += f"; cp.async {self.ldgsts}"
        return s


_MMA_OPS = {"HMMA", "HGMMA", "IMMA", "IGMMA", "QGMMA", "BMMA", "BGMMA"}
_SASS_INSN_RE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")
_SASS_SECTION_RE = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_SASS_ENTRY_RE = re.compile(r"^\s*\.other\s+([^,\s]+),\s*@\"STO_CUDA_ENTRY", re.M)


def _access_bits(mods: list[str]) -> int:
    for m in mods:
        if m in ("128", "64"):
            return int(m)
        if m in ("U8", "S8"):
            return 8
        if m in ("U16", "S16"):
            return 16
    return 32


def parse_sass(text: str) -> dict[str, SassFacts]:
    """``nvdisasm -c`` output of one cubin -> {mangled function name: SassFacts}."""
    out: dict[str, SassFacts] = {}
    cur: SassFacts | None = None
    for line in text.splitlines():
        if m := _SASS_SECTION_RE.match(line):
            cur = out.setdefault(m.group(1), SassFacts(Counter(), Counter(), 0, 0, 0))
            continue
        if cur is None or not (m := _SASS_INSN_RE.match(line)):
            continue
        op, *mods = m.group(1).split(".")
        cur.instructions += 1
        if op == "LDG":
            cur.ldg[_access_bits(mods)] += 1
        elif op == "STG":
            cur.stg[_access_bits(mods)] += 1
        elif op in ("LDL", "STL"):
            cur.local_ops += 1
        elif op in _MMA_OPS:
            cur.mma += 1
        elif op == "LDSM":
            cur.ldsm += 1
        elif op == "LDGSTS":
            cur.ldgsts += 1
    return out


def demangle(names: Iterable[str]) -> dict[str, str]:
    """Mangled -> demangled through c++filt (or the toolkit's cu++filt); identity without one."""
    names = list(dict.fromkeys(names))
    tool = find_tool("c++filt") or find_tool("cu++filt")
    if not tool or not names:
        return {n: n for n in names}
    res = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    out = res.stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def split_kernel_name(demangled: str) -> tuple[str, tuple[str, ...]]:
    """``void blipx::k<float, 64>(blipx::P)`` -> ("k", ("float", "64"))."""
    s = demangled.strip()
    if s.startswith("void "):
        s = s[5:]
    depth, name_end, args, cur = 0, None, [], []
    for i, ch in enumerate(s):
        if ch == "<":
            if depth == 0 and name_end is None:
                name_end = i
            elif depth > 0:
                cur.append(ch)
            depth += 1
        elif ch == ">":
            depth -= 1
            if depth == 0:
                args.append("".join(cur).strip())
                break
            cur.append(ch)
        elif ch == "(" and depth == 0:
            name_end = i if name_end is None else name_end
            break
        elif depth == 1 and ch == ",":
            args.append("".join(cur).strip())
            cur = []
        elif depth >= 1:
            cur.append(ch)
    qual = s[: name_end if name_end is not None else len(s)]
    return qual.split("::")[-1], tuple(a for a in args if a)


_SHORT_TYPES = {
    "float": "fp32", "double": "fp64", "__half": "fp16", "c10::Half": "fp16",
    "__nv_bfloat16": "bf16", "c10::BFloat16": "bf16", "unsigned char": "u8",
    "unsigned short": "u16", "unsigned int": "u32", "unsigned long": "u64", "long": "i64",
}  # fmt: skip


def short_args(args: tuple[str, ...]) -> str:
    return "<" + ", ".join(_SHORT_TYPES.get(a, a) for a in args) + ">" if args else ""


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ArchRow:
    arch: str
    res: Resources
    user_shared: int  # static shared memory less the reservation sm_90 cubins lay out explicitly
    dynamic_shared: int
    occupancy: Occupancy | None  # None: no launch known for this kernel
    sass: SassFacts | None


@dataclasses.dataclass
class KernelRow:
    mangled: str
    demangled: str
    name: str  # the kernel (template) name
    args: tuple[str, ...]
    archs: dict[str, ArchRow]


@dataclasses.dataclass
class Report:
    binary: Path
    kernels: list[KernelRow]
    headers: dict[str, HeaderKernel]
    include_dir: Path


# sm_90 cubins place the driver's 1 KB per-block reservation at the start of every kernel's
# shared window (section .nv.shared.reserved.0, symbol .nv.reservedSmem): their SHARED counts
# it (a kernel without __shared__ shows 1024). It is taken off so that static shared memory
# means the same on every arch, and theoretical_occupancy adds the reservation once.
_RESERVED_MARKERS = (b".nv.shared.reserved", b".nv.reservedSmem")


def _cubin_reserves_smem(path: Path) -> bool:
    data = path.read_bytes()
    return any(m in data for m in _RESERVED_MARKERS)


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def build_report(binary: Path | None = None, include_dir: Path | None = None) -> Report:
    """Runs the tools on the extension (default: the loaded blipx._C) and assembles the report."""
    binary = Path(binary) if binary is not None else locate_extension()
    include_dir = include_dir or default_include_dir()
    cuobjdump, nvdisasm = find_tool("cuobjdump"), find_tool("nvdisasm")
    if not cuobjdump or not nvdisasm:
        raise ReportUnavailable("cuobjdump/nvdisasm not found (CUDA toolkit, or the torch wheel's triton)")

    with tempfile.TemporaryDirectory(prefix="blipx-kernels-") as tmp:
        res = subprocess.run([cuobjdump, "-xelf", "all", str(binary.resolve())], cwd=tmp, capture_output=True,
                             text=True)
        cubins = sorted(Path(tmp).glob("*.cubin"))
        if not cubins:  # a CUDA build without device code is broken, not unavailable
            raise RuntimeError(f"no device code (cubin) in {binary}: {res.stderr.strip()}")

        def one(cubin: Path):
            # -c: code sections only; -ndf: no branch-target dataflow pass (not needed, slow).
            return (_run([cuobjdump, "-res-usage", str(cubin)]), _run([nvdisasm, "-c", "-ndf", str(cubin)]),
                    _cubin_reserves_smem(cubin))

        with ThreadPoolExecutor(max_workers=min(len(cubins), os.cpu_count() or 1)) as pool:
            outputs = list(pool.map(one, cubins))

    resources: dict[tuple[str, str], Resources] = {}
    sass: dict[tuple[str, str], SassFacts] = {}
    reserved: dict[tuple[str, str], bool] = {}
    for cubin, (res_text, sass_text, has_reserved) in zip(cubins, outputs):
        target = re.search(r"^\s*\.target\s+(sm_\w+)", sass_text, re.M)
        if target is None:
            raise RuntimeError(f"nvdisasm names no target arch for {cubin.name}")
        arch = target.group(1)
        # Kernels only: a device function that ptxas kept out of line has resources too.
        entries = set(_SASS_ENTRY_RE.findall(sass_text))
        usage = {key: r for key, r in parse_res_usage(res_text, arch).items() if key[1] in entries}
        resources.update(usage)
        for name, facts in parse_sass(sass_text).items():
            sass[(arch, name)] = facts
        for key in usage:
            reserved[key] = has_reserved

    names = demangle(name for _, name in resources)
    rows: dict[str, KernelRow] = {}
    for (arch, mangled), r in sorted(resources.items()):
        name, args = split_kernel_name(names[mangled])
        row = rows.setdefault(mangled, KernelRow(mangled, names[mangled], name, args, {}))
        # sm_90a and the like share their base arch's limits.
        limits, launch = ARCH_LIMITS.get(re.sub(r"[a-z]+$", "", arch)), LAUNCHES.get(name)
        reservation = limits.reserved_smem_per_block if limits else 1024
        user_shared = max(r.shared - reservation, 0) if reserved.get((arch, mangled)) else r.shared
        dyn = launch.dynamic_smem(args) if launch else 0
        occ = None
        if limits and launch:
            occ = theoretical_occupancy(limits, launch.threads, r.regs, user_shared + dyn,
                                        smem_opt_in=launch.smem_opt_in)
        row.archs[arch] = ArchRow(arch, r, user_shared, dyn, occ, sass.get((arch, mangled)))
    headers = scan_headers(include_dir) if include_dir.is_dir() else {}
    # Numeric template arguments (head dims) in numeric order.
    kernels = sorted(rows.values(), key=lambda k: (k.name, [(0, int(a), "") if a.isdigit() else (1, 0, a)
                                                              for a in k.args]))
    return Report(binary, kernels, headers, include_dir)


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # "design" (comment or launch table), "spill", "occupancy", "sass", "binary"
    kernel: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


def check(report: Report) -> list[Problem]:
    """Everything that should fail CI (empty when all is well)."""
    problems: list[Problem] = []

    def add(kind: str, kernel: str, text: str) -> None:
        problems.append(Problem(kind, kernel, text))

    if not report.headers:
        add("design", "", f"no kernel headers under {report.include_dir}")
    for name, hk in sorted(report.headers.items()):
        where = f"{hk.file.name}:{hk.line}"
        if hk.design is None:
            add("design", name, f"{name} ({where}): no '// {DESIGN_TAG} ...' comment above the kernel")
        else:
            for e in hk.design.errors:
                add("design", name, f"{name} ({where}): {e}")
        launch = LAUNCHES.get(name)
        if launch is None:
            add("design", name, f"{name} ({where}): no launch configuration in kernel_report.LAUNCHES")
        elif hk.launch_bounds is not None and launch.threads > hk.launch_bounds:
            add("design", name, f"{name}: LAUNCHES says {launch.threads} threads, above "
                f"__launch_bounds__({hk.launch_bounds})")
    compiled = {k.name for k in report.kernels}
    for name in sorted(set(LAUNCHES) - set(report.headers)):
        add("design", name, f"{name}: in kernel_report.LAUNCHES but no such __global__ in the headers")
    for name in sorted(set(report.headers) - compiled):
        add("binary", name, f"{name}: declared in the headers but not in the built extension")

    for k in report.kernels:
        hk = report.headers.get(k.name)
        label = k.name + short_args(k.args)
        if hk is None:
            add("design", k.name, f"{label}: compiled kernel not found in {report.include_dir}")
            continue
        design = hk.design
        allowed_local = design.local_bytes if design else 0
        for arch, a in sorted(k.archs.items()):
            at = f"{label} [{arch}]"
            if a.res.stack > allowed_local or a.res.local > 0:
                add("spill", k.name, f"{at}: stack frame {a.res.stack} B, local {a.res.local} B (design allows "
                    f"{allowed_local} B), {a.res.regs} registers, {a.sass.local_ops if a.sass else '?'} LDL/STL")
            if a.occupancy is not None and a.occupancy.blocks_per_sm == 0:
                add("occupancy", k.name, f"{at}: cannot launch: {a.occupancy.limiter}")
            if design is None or a.occupancy is None:
                continue
            want = design.min_occupancy(arch)
            if want is not None and a.occupancy.percent + 1e-9 < want:
                add("occupancy", k.name, f"{at}: occupancy {a.occupancy.percent:.1f}% < design {want:g}% "
                    f"({a.res.regs} regs, {a.user_shared + a.dynamic_shared} B smem, "
                    f"{LAUNCHES[k.name].threads} threads; limited by {a.occupancy.limiter})")
            if a.sass is None:
                add("sass", k.name, f"{at}: no SASS found")
                continue
            if design.ldg128 and not a.sass.ldg.get(128):
                add("sass", k.name, f"{at}: designed for 128-bit global loads, SASS has {a.sass.brief()}")
            if design.mma and not a.sass.mma:
                add("sass", k.name, f"{at}: designed for tensor cores, SASS has no HMMA/HGMMA")
    return problems


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def _kb(n: int) -> str:
    return "0" if n == 0 else f"{n / 1024:.1f}K"


def format_report(report: Report) -> str:
    """The table printed by ``blipx info --kernels``: one block per kernel template, one row per
    instantiation, resources and occupancy per arch, then the problems :func:`check` finds."""
    archs = sorted({a for k in report.kernels for a in k.archs})
    lines = [
        f"blipx CUDA kernels in {report.binary.name} ({', '.join(archs)}); theoretical occupancy from registers,",
        "shared memory (static + dynamic as launched, + the 1 KB per-block reservation) and block size;",
        "limiter R registers, S shared memory, W warps, B blocks per SM; stack = spills or local arrays.",
        "",
    ]
    cell = "{:>4} {:>5} {:>6} {:>6} {:>7}"
    head = f"{'':<24}" + "".join(f" | {a:^31}" for a in archs) + " | SASS (global load/store widths in bits x count)"
    sub = f"{'instantiation':<24}" + "".join(" | " + cell.format("regs", "stack", "smem", "dyn", "occ") for _ in archs)
    lines += [head, sub]
    by_name: dict[str, list[KernelRow]] = {}
    for k in report.kernels:
        by_name.setdefault(k.name, []).append(k)
    for name, group in by_name.items():
        hk, launch = report.headers.get(name), LAUNCHES.get(name)
        where = f"{hk.file.name}:{hk.line}" if hk else "header not found"
        block = f"block {launch.threads} ({launch.why})" if launch else "launch unknown"
        lines.append("")
        lines.append(f"{name}  [{where}; {block}]")
        design = hk.design.text if hk and hk.design else "NO DESIGN COMMENT"
        lines.append(f"  design: {design}")
        for k in group:
            row = f"  {short_args(k.args) or '-':<22}"
            facts = []
            for arch in archs:
                a = k.archs.get(arch)
                if a is None:
                    row += " | " + f"{'not compiled':^31}"
                    continue
                occ = f"{a.occupancy.percent:g}%{a.occupancy.limiter[0].upper()}" if a.occupancy else "?"
                row += " | " + cell.format(a.res.regs, a.res.stack, _kb(a.user_shared), _kb(a.dynamic_shared), occ)
                facts.append(a.sass.brief() if a.sass else "?")
            uniq = list(dict.fromkeys(facts))
            row += " | " + (uniq[0] if len(uniq) == 1 else "; ".join(f"{a}: {f}" for a, f in zip(archs, facts)))
            lines.append(row)
    problems = check(report)
    lines.append("")
    lines.append(f"{len(report.kernels)} kernels x {len(archs)} archs; " + (
        f"{len(problems)} problem(s):" if problems else "no problems (no spills, occupancy >= design)"))
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)
