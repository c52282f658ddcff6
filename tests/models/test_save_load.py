"""blipx format round trip (config.json + model.safetensors) and bad-checkpoint errors."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from blipx.models import (AlbefPretrainer, AlbefRetriever, BlipCaptioner, BlipPretrainer, BlipRetriever, create_model,
                          from_pretrained)
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


# -- one loader: from_pretrained is the only way in --------------------------------------------

@pytest.mark.parametrize("name,task,cls", [("blip_tiny", "captioner", BlipCaptioner),
                                           ("blip_tiny", "retriever", BlipRetriever),
                                           ("albef_tiny", "retriever", AlbefRetriever)])
def test_pretraining_folder_loads_as_each_head(tmp_path, name, task, cls):
    src = _perturbed(name, "pretrain")
    src.save_pretrained(tmp_path)
    model = cls.from_pretrained(tmp_path)
    assert type(model) is cls and not model.load_report.kept_init
    assert model.load_report.ignored  # the heads this model does not use are listed, not lost silently
    sd, ref = model.state_dict(), src.state_dict()
    prefix = "text_encoder.bert." if name.startswith("albef") else "text_encoder."
    for k, v in sd.items():  # every tensor is the pretraining one (ALBEF: text_encoder.bert.* -> text_encoder.*)
        src_key = prefix + k[len("text_encoder."):] if k.startswith("text_encoder.") and name.startswith("albef") else k
        assert torch.equal(v, ref[src_key]), k
    # The module-level loader picks the class from the folder's own family.
    auto = from_pretrained(str(tmp_path), task=task)
    assert type(auto) is cls
    assert type(from_pretrained(str(tmp_path))) is type(src)  # task=None: the saved architecture


def test_momentum_head_from_a_pretraining_folder_keeps_its_momentum_weights(tmp_path):
    src = _perturbed("blip_tiny", "pretrain")
    with torch.no_grad():
        for p in src.visual_encoder_m.parameters():
            p.add_(1.0)  # momentum copies differ from the online weights
    src.save_pretrained(tmp_path)
    model = BlipRetriever.from_pretrained(tmp_path, momentum=True)
    assert torch.equal(model.visual_encoder_m.cls_token, src.visual_encoder_m.cls_token)


def test_missing_local_path_never_becomes_a_hub_call(tmp_path, monkeypatch):
    import sys

    calls = []
    fake = type(sys)("huggingface_hub")
    fake.snapshot_download = lambda *a, **k: calls.append(a) or str(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/model", "./model", "/no/such/dir", "model.pth", "a/b/c", "org/name.safetensors"):
        with pytest.raises(FileNotFoundError, match=path.lstrip("./") if path.startswith("./") else path):
            BlipCaptioner.from_pretrained(path)
    assert calls == []
    # Only an org/name id whose first component is not a local folder is a hub id.
    with pytest.raises(CheckpointError):  # the fake hub hands back an empty folder
        BlipCaptioner.from_pretrained("Salesforce/blip-image-captioning-base")
    assert calls == [("Salesforce/blip-image-captioning-base",)]


def test_hub_id_without_huggingface_hub_says_so(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="huggingface_hub.*not installed"):
        BlipCaptioner.from_pretrained("Salesforce/blip-image-captioning-base")


def test_unknown_architecture_needs_task(tmp_path):
    from blipx.weights.io import write_safetensors

    sd = _perturbed("blip_tiny", "captioner").state_dict()
    path = tmp_path / "official.safetensors"
    write_safetensors(path, {k: v.contiguous() for k, v in sd.items() if "cls.predictions.decoder" not in k})
    # blip_tiny's widths (32) give no head count of 64-wide heads: an error, never num_heads = 0.
    with pytest.raises(ValueError, match=r"cannot infer the vision head count from width 32.*pass config="):
        BlipCaptioner.from_pretrained(path)
    with pytest.raises(ValueError, match="pass task="):  # an official file does not say what head it is
        from_pretrained(str(path), config="blip_tiny")
    model = from_pretrained(str(path), task="captioner", config="blip_tiny")
    assert type(model) is BlipCaptioner and torch.equal(model.text_decoder.cls.predictions.bias,
                                                         sd["text_decoder.cls.predictions.bias"])


def test_text_width_below_64_is_refused_with_advice():
    from blipx.models.layouts.official import infer_config

    sd = create_model("blip_base", "captioner", text_hidden_size=48, text_num_heads=4,
                      text_intermediate_size=96, text_num_layers=1, vision_depth=1).state_dict()
    with pytest.raises(ValueError, match=r"text head count from width 48.*pass config="):
        infer_config(sd)


def test_strict_false_lists_wrong_shapes_in_the_report(tmp_path):
    _perturbed("blip_tiny", "captioner").save_pretrained(tmp_path)
    model = BlipCaptioner.from_pretrained(tmp_path, text_intermediate_size=24, strict=False)
    wrong = model.load_report.mismatched
    assert wrong and all("vs model" in w for w in wrong)
    assert any("intermediate.dense.weight: checkpoint (16, 8) vs model (24, 8)" in w for w in wrong)


@pytest.mark.parametrize("text,match", [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list"),
                                        ('{"format": "blipx"}', "not a valid blipx model config"),
                                        ('{"format": "blipx", "config": {"vision": {"widht": 3}}}',
                                         "not a valid blipx model config")])
def test_bad_config_json_names_the_file(tmp_path, text, match):
    _perturbed("blip_tiny", "captioner").save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match) as e:
        BlipCaptioner.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)
