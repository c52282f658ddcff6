"""Builds the emulated kernels: csrc/cuda/*.cu compiled by g++ as host C++ on the SIMT emulator.

``build()`` returns the path of ``libblipx_simt.so`` (torch ops ``blipx_simt::*``), building
what is missing. Objects are cached per translation unit under ``build/simt/`` by a hash of the
compiler command, the source and every project header it includes, so an unchanged tree links
nothing and compiles nothing, and an edit to one kernel header recompiles only the TUs that
include it. ``kernel_dir`` replaces ``csrc/include`` (the negative control builds planted copies
of the kernels this way).

Run as a script to build (and print the library path): ``python -m tests.simt.build``.
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD = Path(os.environ.get("BLIPX_SIMT_BUILD_DIR", ROOT / "build" / "simt"))
CXX = os.environ.get("CXX", "g++")

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


class SimtUnavailable(RuntimeError):
    """The emulated build cannot be made here (no C++ compiler or no CUDA headers)."""


def cuda_include_dirs() -> list[str]:
    """CUDA's host-side headers: a toolkit's include/ (crt/, cuda_runtime.h) plus the torch wheel's
    nvidia/*/include (curand's Philox); as the main build finds them (cmake/FindBlipxCUDA.cmake)."""
    roots = []
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        if os.environ.get(var):
            roots.append(Path(os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(Path(os.path.realpath(nvcc)).parent.parent)
    roots += [Path("/usr/local/cuda")] + sorted(map(Path, glob.glob("/usr/local/cuda-*")), reverse=True)
    toolkit = next((r / "include" for r in roots if (r / "include" / "crt" / "host_config.h").exists()), None)
    if toolkit is None:
        raise SimtUnavailable("no CUDA toolkit headers (crt/host_config.h) found; set CUDA_HOME")
    wheel = []
    try:
        import nvidia  # the torch CUDA wheel's nvidia-* packages

        wheel = sorted(str(p) for base in nvidia.__path__ for p in Path(base).glob("*/include"))
    except ImportError:
        pass
    return [str(toolkit)] + wheel


def _torch_flags() -> tuple[list[str], list[str]]:
    import torch
    from torch.utils import cpp_extension

    inc = [f"-I{p}" for p in cpp_extension.include_paths()]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    return inc + [abi], [f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]


def _headers(path: Path, dirs: list[Path], seen: dict[Path, bytes]) -> None:
    """Project headers `path` includes (quoted includes found in `dirs`), recursively."""
    for name in _INCLUDE_RE.findall(path.read_text(errors="replace")):
        for d in [path.parent] + dirs:
            cand = (d / name).resolve()
            if cand.is_file():
                if cand not in seen:
                    seen[cand] = cand.read_bytes()
                    _headers(cand, dirs, seen)
                break


def _units(kernel_dir: Path) -> list[tuple[Path, list[str]]]:
    """(source, extra flags) of every translation unit."""
    units = [(HERE / "simt.cpp", []), (HERE / "simt_memory.cpp", []), (HERE / "simt_mma.cpp", []),
             (HERE / "simt_device.cpp", ["torch"]), (HERE / "selftest.cpp", ["torch"]),
             (HERE / "mma_selftest.cpp", ["torch"]), (ROOT / "csrc" / "checks.cpp", ["torch"])]
    units += [(p, ["torch", "cuda-source"]) for p in sorted((ROOT / "csrc" / "cuda").glob("*.cu"))]
    return units


def build(kernel_dir: str | os.PathLike | None = None, jobs: int | None = None, verbose: bool = False) -> Path:
    if shutil.which(CXX) is None:
        raise SimtUnavailable(f"no C++ compiler ({CXX})")
    kernel_dir = Path(kernel_dir).resolve() if kernel_dir else ROOT / "csrc" / "include"
    dirs = [kernel_dir, ROOT / "csrc", ROOT / "csrc" / "cuda", HERE]
    torch_inc, torch_lib = _torch_flags()
    cuda_inc = cuda_include_dirs()
    base = [CXX, "-std=c++20", "-O2", "-g1", "-fPIC", "-DBLIPX_SIMT=1", "-Wall", "-Wno-unknown-pragmas",
            "-Wno-unused-function", "-Wno-unused-parameter", "-Wno-unused-variable"]
    base += [f"-I{d}" for d in dirs] + [f"-I{cuda_inc[0]}"] + [f"-idirafter{d}" for d in cuda_inc[1:]]
    (BUILD / "obj").mkdir(parents=True, exist_ok=True)

    def command(src: Path, tags: list[str], obj: Path) -> list[str]:
        cmd = list(base)
        if "torch" in tags:
            cmd += torch_inc
        if "cuda-source" in tags:
            cmd += ["-x", "c++"]
        # Every TU sees the emulator first, before any CUDA header (it defines __shared__).
        cmd += ["-include", str(HERE / "simt.h"), "-c", str(src), "-o", str(obj)]
        return cmd

    jobs_list = []
    for src, tags in _units(kernel_dir):
        seen: dict[Path, bytes] = {}
        _headers(src, dirs, seen)
        seen[HERE / "simt.h"] = (HERE / "simt.h").read_bytes()  # force-included
        _headers(HERE / "simt.h", dirs, seen)
        # The kernel directory's path is not part of the key (a planted copy lives in a temporary
        # one); the contents of the headers it holds are.
        h = hashlib.sha256(" ".join(command(src, tags, Path("x"))).replace(str(kernel_dir), "<kernels>").encode())
        h.update(src.read_bytes())
        for p in sorted(seen):
            h.update(str(p.name).encode() + seen[p])
        obj = BUILD / "obj" / f"{src.stem}-{h.hexdigest()[:20]}.o"
        jobs_list.append((src, command(src, tags, obj), obj))

    def compile_one(item):
        src, cmd, obj = item
        if obj.exists():
            return obj
        tmp = obj.with_suffix(f".tmp{os.getpid()}.o")
        cmd = cmd[:-1] + [str(tmp)]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"simt build: compiling {src} failed:\n{r.stderr[-8000:]}")
        os.replace(tmp, obj)
        return obj

    with concurrent.futures.ThreadPoolExecutor(jobs or min(2, os.cpu_count() or 1)) as ex:
        objs = list(ex.map(compile_one, jobs_list))
    lib_hash = hashlib.sha256("".join(o.name for o in objs).encode() + " ".join(torch_lib).encode()).hexdigest()[:20]
    lib = BUILD / f"libblipx_simt-{lib_hash}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".tmp{os.getpid()}.so")
        cmd = [CXX, "-shared", "-o", str(tmp)] + [str(o) for o in objs] + torch_lib
        cmd += ["-Wl,-Bsymbolic", "-ldl"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"simt build: linking failed:\n{r.stderr[-8000:]}")
        os.replace(tmp, lib)
    return lib


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else None, verbose=True))
