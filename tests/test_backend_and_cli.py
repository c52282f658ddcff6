"""The kernel/reference switch, the visible fallback, `blipx info` and `blipx bench`."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import blipx
from blipx import _native
from blipx.ops import _backend


def test_compiled_library_loaded():
    # CI builds blipx before testing; a silent fall back to references would hide a broken build.
    assert _native._C is not None, _native.load_error
    info = _native.build_info()
    assert info["version"] == blipx.__version__
    assert info["with_cuda"] == bool(torch.version.cuda and info["cuda_archs"])


def test_switch_routes_to_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(blipx.ops.reference, "momentum_update_ref", lambda *a: calls.append(a))
    blipx.ops.set_use_kernels(False)
    try:
        blipx.ops.momentum_update_([torch.zeros(2)], [torch.ones(2)], 0.5)
    finally:
        blipx.ops.set_use_kernels(True)
    assert len(calls) == 1
    e = torch.zeros(2)
    blipx.ops.momentum_update_([e], [torch.ones(2)], 0.5)  # kernel path again
    assert e.tolist() == [0.5, 0.5] and len(calls) == 1


def test_env_var_disables_kernels():
    code = "import blipx; print(blipx.ops.use_kernels())"
    env = {**os.environ, "BLIPX_USE_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_kernel_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setitem(_backend._AVAILABLE, ("enqueue_", "cpu"), False)
    monkeypatch.setattr(_backend, "_warned", set())
    queue, ptr = torch.zeros(4, 2), torch.zeros(1, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="blipx.ops.enqueue_: no compiled kernel for cpu"):
        blipx.ops.enqueue_(queue, ptr, torch.ones(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blipx.ops.enqueue_(queue, ptr, torch.ones(3, 2))  # second call: no new warning
    assert ptr.tolist() == [2] and queue.sum().item() == 8.0


@pytest.mark.parametrize("argv", [["-m", "blipx", "info"]])
def test_info_lists_every_op(argv):
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True).stdout
    assert f"blipx {blipx.__version__}" in out and f"torch {torch.__version__}" in out
    for name in _backend.OP_NAMES:
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert line.split()[1] == ("no" if name in _backend.CUDA_ONLY_OPS else "yes"), line  # CPU kernel
    assert ("CUDA kernels: compiled" in out) == bool(_native.build_info()["with_cuda"])


def test_bench_quick_runs(tmp_path):
    out_file = tmp_path / "rows.jsonl"
    res = subprocess.run([sys.executable, "-m", "blipx", "bench", "momentum_update", "--quick", "--out", str(out_file)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "blipx" in res.stdout and "foreach lerp" in res.stdout
    assert len(out_file.read_text().splitlines()) == 7  # copy ceiling + 6 providers


@pytest.mark.parametrize("argv,option,value", [
    (["eval", "retrieval", "--model", "m", "--k-test", "0"], "--k-test", "0"),
    (["eval", "retrieval", "--model", "m", "--num-samples", "-3"], "--num-samples", "-3"),
    (["caption", "x.jpg", "--model", "m", "--batch-size", "0"], "--batch-size", "0"),
    (["capfilt", "--captioner", "c", "--filter", "f", "--data", "d", "--out", "o", "--batch-size", "0"],
     "--batch-size", "0"),
    (["capfilt", "--captioner", "c", "--filter", "f", "--data", "d", "--out", "o", "--chunk-size", "abc"],
     "--chunk-size", "abc"),
    (["capfilt", "--captioner", "c", "--filter", "f", "--data", "d", "--out", "o", "--threshold", "nan"],
     "--threshold", "nan"),
    (["capfilt", "--captioner", "c", "--filter", "f", "--data", "d", "--out", "o", "--threshold", "1.5"],
     "--threshold", "1.5"),
    (["capfilt", "--captioner", "c", "--filter", "f", "--data", "d", "--out", "o", "--num-captions", "0"],
     "--num-captions", "0"),
])
def test_cli_refuses_settings_that_make_no_sense(argv, option, value, capsys):
    """Refused while parsing, naming the option, before any model is loaded (the model paths
    here do not exist: before, --threshold nan got as far as loading them, and a loaded model
    would have dropped every caption with exit 0)."""
    from blipx.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"argument {option}: must be" in err and f"got {value!r}" in err, err


def test_missing_model_path_is_one_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    import sys as _sys

    from blipx.cli import main

    monkeypatch.setitem(_sys.modules, "huggingface_hub", None)  # no hub: the path alone is judged
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "retrieval", "--model", "runs/nope", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blipx eval: no such checkpoint file or directory: runs/nope") and "Traceback" not in err


@pytest.mark.parametrize("target", ["vqa", "nlvr2", "ve", "grounding", "video-retrieval"])
def test_missing_model_path_of_an_eval_target_is_one_message(target, tmp_path, capsys, monkeypatch):
    import sys as _sys

    from blipx.cli import main

    monkeypatch.setitem(_sys.modules, "huggingface_hub", None)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", target, "--model", "runs/nope", "--device", "cpu", "--num-samples", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"blipx eval {target}: no such checkpoint file or directory: runs/nope"), err


def test_a_closed_output_pipe_is_no_traceback():
    """`blipx info | head -1`: the reader may leave before the command has written; that ends the
    command (exit 1) without a BrokenPipeError traceback, also at interpreter exit."""
    import subprocess
    import sys as _sys

    proc = subprocess.Popen([_sys.executable, "-m", "blipx", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before blipx has imported torch, so its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
