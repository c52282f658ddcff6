"""blipx format round trip (config.json + model.safetensors) and bad-checkpoint errors."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from blipx.models import AlbefPretrainer, BlipCaptioner, BlipPretrainer, BlipRetriever, create_model
from blipx.weights import CheckpointError, read_state_dict


def _perturbed(name, task, seed=0):
    torch.manual_seed(seed)
    m = create_model(name, task).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _inputs(b=2, t=6):
    ids = torch.randint(1000, 3000, (b, t))
    mask = torch.ones_like(ids)
    mask[-1, t - 2 :] = 0
    return dict(pixel_values=torch.randn(b, 3, 32, 32), input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize(
    "name,task,cls",
    [("blip_tiny", "captioner", BlipCaptioner), ("blip_tiny", "pretrain", BlipPretrainer),
     ("albef_tiny", "pretrain", AlbefPretrainer)],
)
def test_blipx_round_trip(tmp_path, name, task, cls):
    m = _perturbed(name, task)
    m.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["architecture"] == cls.__name__
    back = cls.from_pretrained(tmp_path)
    assert not back.training
    x = _inputs()
    with torch.no_grad():
        a, b = m(**x), back(**x)
    for k, v in vars(a).items():
        if v is not None:
            torch.testing.assert_close(getattr(b, k), v, rtol=0, atol=0, msg=k)
    # Ties survive the round trip (stored once, re-shared on load).
    sd = read_state_dict(tmp_path / "model.safetensors")
    assert len(sd) < len(m.state_dict())
    if cls is BlipPretrainer:
        assert back.text_encoder.embeddings is back.text_decoder.bert.embeddings


def test_wrong_architecture_is_refused(tmp_path):
    _perturbed("blip_tiny", "captioner").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="holds a BlipCaptioner"):
        BlipRetriever.from_pretrained(tmp_path)


def test_wrong_shapes_are_listed(tmp_path):
    _perturbed("blip_tiny", "captioner").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as e:
        BlipCaptioner.from_pretrained(tmp_path, text_intermediate_size=24)
    msg = str(e.value)
    assert "wrong shape" in msg and "intermediate.dense.weight: checkpoint (16, 8) vs model (24, 8)" in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    m = _perturbed("blip_tiny", "captioner")
    sd = dict(m.state_dict())
    del sd["visual_encoder.norm.weight"]
    sd["bogus.weight"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as e:
        BlipCaptioner.from_pretrained(tmp_path / "x.pth", config=m.config)
    assert "missing (1): visual_encoder.norm.weight" in str(e.value)
    assert "unexpected (1): bogus.weight" in str(e.value)
    # Non-strict loading reports instead of raising.
    loose = BlipCaptioner.from_pretrained(tmp_path / "x.pth", config=m.config, strict=False)
    assert loose.load_report.ignored == ["bogus.weight"]


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_truncated_file_gives_clear_error(tmp_path, fmt):
    m = _perturbed("blip_tiny", "captioner")
    if fmt == "pth":
        torch.save({"model": m.state_dict()}, tmp_path / "full.pth")
    else:
        m.save_pretrained(tmp_path)
        (tmp_path / "model.safetensors").rename(tmp_path / "full.safetensors")
    data = (tmp_path / f"full.{fmt}").read_bytes()
    bad = tmp_path / f"cut.{fmt}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        BlipCaptioner.from_pretrained(bad, config=m.config)


class _Payload:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    m = _perturbed("blip_tiny", "captioner")
    torch.save({"model": m.state_dict(), "evil": _Payload(marker)}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        BlipCaptioner.from_pretrained(tmp_path / "evil.pth", config=m.config)
    assert not marker.exists()


def test_missing_path_and_non_checkpoint_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        BlipCaptioner.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json"):
        BlipCaptioner.from_pretrained(tmp_path)
