"""Shared save/load for blipx models: blipx dirs, HF BLIP dirs and official ``.pth`` files."""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from blipx.models.config import ModelConfig, get_config
from blipx.models.layouts import hf, official
from blipx.weights.io import CheckpointError, atomic_write, read_state_dict, write_json, write_safetensors
from blipx.weights.loading import LoadReport, alias_groups, canonical_state_dict, load_into_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_TAG = "blipx"
_MOMENTUM_KEY = re.compile(r"\w+_m\.")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def _resolve(path: str | os.PathLike) -> Path:
    """A local path; or, for a string that is not one, a Hugging Face hub id of the form
    ``org/name``, fetched with ``huggingface_hub`` when it is installed.

    Anything else that does not exist fails here, naming the path: a typo in a local path must
    not turn into a network call. A name whose first component exists here (``runs/model`` with
    a ``runs/`` folder) or that ends like a weights file is local by intent.
    """
    p = Path(path)
    if p.exists():
        return p
    s = os.fspath(path)
    local_like = (not _HUB_ID.fullmatch(s) or Path(s.split("/")[0]).exists()
                  or s.endswith((".pth", ".pt", ".bin", ".safetensors", ".json")))
    if local_like:
        raise FileNotFoundError(f"no such checkpoint file or directory: {s}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(
            f"no such checkpoint file or directory: {s} (and huggingface_hub, needed to read it as a hub id, "
            "is not installed)") from e
    try:
        return Path(snapshot_download(s, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, unknown repo, no access: one message that names both readings
        raise FileNotFoundError(f"no such checkpoint file or directory: {s}; as a hub id it failed: {e}") from e


def _read_dir_weights(d: Path) -> dict[str, torch.Tensor]:
    index = d / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():  # sharded HF save
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(read_state_dict(d / f))
        return sd
    for name in (WEIGHTS_NAME, "pytorch_model.bin"):
        if (d / name).is_file():
            return read_state_dict(d / name)
    raise CheckpointError(f"no {WEIGHTS_NAME} (or pytorch_model.bin) in {d}")


@dataclass
class Checkpoint:
    """What a checkpoint path holds, read once: tensors (in the file's own key names), the stored
    or inferred config, and where it came from."""

    path: Path
    format: str  # "blipx", "hf" or "official"
    state_dict: dict[str, torch.Tensor]
    config: ModelConfig | None  # None: an official file read with config= given (not inferred)
    architecture: str | None = None  # the class (blipx) or HF architecture that wrote it
    queues: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return {"blipx": "blipx checkpoint", "hf": "HF BLIP checkpoint", "official": "official checkpoint"}[
            self.format] + f" {self.path}"


def read_checkpoint(path: str | os.PathLike, config: str | ModelConfig | None = None) -> Checkpoint:
    """Read a blipx folder, an HF BLIP folder or an official file (see :meth:`BlipxModel.from_pretrained`)."""
    p = _resolve(path)
    if not p.is_dir():
        sd, queues = official.split_queues(read_state_dict(p))
        # Inference only when no config is given: it is what fails on unusual widths.
        stored = None if config is not None else official.infer_config(sd)
        return Checkpoint(p, "official", sd, stored, None, queues)
    if not (p / CONFIG_NAME).is_file():
        raise CheckpointError(f"{p} has no {CONFIG_NAME}")
    meta = _read_config_json(p / CONFIG_NAME)
    if meta.get("format") == FORMAT_TAG:
        try:
            config = ModelConfig.from_dict(meta["config"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise CheckpointError(f"{p / CONFIG_NAME}: not a valid blipx model config ({type(e).__name__}: {e})") from e
        return Checkpoint(p, FORMAT_TAG, _read_dir_weights(p), config, meta.get("architecture"))
    if hf.is_hf_config(meta):
        arch = (meta.get("architectures") or [None])[0]
        try:
            config = hf.config_from_hf(meta)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise CheckpointError(f"{p / CONFIG_NAME}: not a valid HF BLIP config ({type(e).__name__}: {e})") from e
        return Checkpoint(p, "hf", hf.state_dict_from_hf(_read_dir_weights(p), arch), config, arch)
    raise CheckpointError(f"{p / CONFIG_NAME} is neither a blipx nor an HF BLIP config")


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds a JSON {type(meta).__name__}, not an object of config fields")
    return meta


def _with_aliases(sd: dict[str, torch.Tensor], ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """``sd`` with every name of each tied tensor of the architecture that wrote it: blipx folders
    store a shared tensor once (safetensors refuses aliases), under its first name, and another
    head may know it by another (BLIP's encoder and decoder share all but self-attention)."""
    src_cls = BlipxModel.registry.get(ckpt.architecture or "")
    if src_cls is None:
        raise CheckpointError(f"{ckpt.path} holds an unknown architecture {ckpt.architecture!r}")
    with torch.device("meta"):  # names and sharing only: no memory, no init
        groups = alias_groups(src_cls(ckpt.config))
    out = dict(sd)
    for group in groups:
        present = next((n for n in group if n in sd), None)
        if present is not None:
            out.update({n: sd[present] for n in group if n not in sd})
    return out


class BlipxModel(nn.Module):
    """Base of every blipx model: holds ``config`` and the (de)serialisation logic.

    Subclasses set ``family`` and the regexes of checkpoint keys they legitimately ignore.
    """

    family: ClassVar[str] = "blip"
    # Checkpoint keys from other heads of the same family that this model does not use.
    _ignore_keys: ClassVar[tuple[str, ...]] = ()
    # Model tensors a checkpoint may lack (kept at init), e.g. ``temp``, which HF does not store.
    _optional_keys: ClassVar[tuple[str, ...]] = ()
    # True when ``text_encoder`` is a BertLMHead (``text_encoder.bert.*``: ALBEF pretraining).
    _text_encoder_is_lm: ClassVar[bool] = False

    # Every concrete model class by name: what a blipx folder's "architecture" refers to.
    registry: ClassVar[dict[str, type["BlipxModel"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BlipxModel.registry[cls.__name__] = cls

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.family != self.family:
            raise ValueError(f"{type(self).__name__} needs a {self.family!r} config, got {config.family!r}")
        self.config = config
        self.load_report: LoadReport | None = None
        # Queues etc. found in an official checkpoint: training state for the trainer to adopt.
        self.checkpoint_extras: dict[str, torch.Tensor] = {}

    def save_pretrained(self, save_directory: str | os.PathLike, format: str = FORMAT_TAG) -> None:
        """Write ``config.json`` + ``model.safetensors`` (tied tensors stored once), each file atomically.

        ``format="blipx"`` (default): blipx's folder, which every model can write and
        :meth:`from_pretrained` reads back exactly. ``format="hf"``: a folder that transformers'
        ``BlipForConditionalGeneration`` (BlipCaptioner), ``BlipForImageTextRetrieval``
        (BlipRetriever; ``BlipModel`` for an ITC-only one) or ``BlipForQuestionAnswering`` (BlipVqa)
        loads with no missing or unexpected keys, plus the tokenizer and processor files of
        ``BlipProcessor`` (when transformers is installed; a warning says when they cannot be
        written). HF has no place for the momentum copies ``*_m`` nor, in
        BlipForImageTextRetrieval, the ITC temperature ``temp``: they are not written (a re-import
        keeps ``temp`` at 0.07 and lists it in ``load_report.kept_init``). Other models raise
        ValueError naming what can be exported.
        """
        if format == "hf":
            return self._save_hf(Path(save_directory))
        if format != FORMAT_TAG:
            raise ValueError(f"format must be {FORMAT_TAG!r} or 'hf', got {format!r}")
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        write_safetensors(d / WEIGHTS_NAME, canonical_state_dict(self), metadata={"format": "pt"})
        write_json(d / CONFIG_NAME, {"format": FORMAT_TAG, "architecture": type(self).__name__,
                                     "config": self.config.to_dict()})

    def _save_hf(self, d: Path) -> None:
        arch = hf.export_architecture(type(self).__name__, self.config)  # ValueError before any write
        config = hf.config_to_hf(self.config, arch)
        sd = hf.state_dict_to_hf(canonical_state_dict(self), arch)
        try:
            extra = hf.processor_files(self.config)
        except (ImportError, ValueError) as e:
            warnings.warn(f"{d}: tokenizer/processor files not written ({e}); only the weights and config are",
                          RuntimeWarning, stacklevel=3)
            extra = {}
        d.mkdir(parents=True, exist_ok=True)
        for name, data in extra.items():
            atomic_write(d / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
        write_safetensors(d / WEIGHTS_NAME, sd, metadata={"format": "pt"})
        write_json(d / CONFIG_NAME, config)  # last: a folder with its config.json is complete

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        config: str | ModelConfig | None = None,
        strict: bool = True,
        **overrides: Any,
    ):
        """Load a blipx directory, an HF BLIP directory (``save_pretrained`` output) or an
        official Salesforce ``.pth``/``.safetensors`` file; returns the model in eval mode.

        This is the one way in (:func:`blipx.models.from_pretrained` picks the class for you). A
        blipx directory of another architecture loads when its weights are a superset of this
        model's (a pretraining run's ``model/`` as a retriever or a captioner); what this model
        does not use is listed in ``load_report.ignored``.

        ``config`` (a name from :func:`list_models` or a ModelConfig) replaces the stored or
        inferred architecture; ``overrides`` edit it (e.g. ``image_size=384`` resizes the
        position embedding). ``strict`` raises on missing/unexpected/mis-shaped keys.
        """
        return cls.from_checkpoint(read_checkpoint(path, config), config=config, strict=strict, **overrides)

    @classmethod
    def from_checkpoint(cls, ckpt: "Checkpoint", *, config: str | ModelConfig | None = None, strict: bool = True,
                        **overrides: Any):
        """:meth:`from_pretrained` on an already-read :class:`Checkpoint`."""
        sd = ckpt.state_dict
        other_arch = ckpt.format == FORMAT_TAG and ckpt.architecture != cls.__name__
        if ckpt.format == "hf" and ckpt.architecture in hf.HF_ARCHITECTURES \
                and hf.HF_ARCHITECTURES[ckpt.architecture] != cls.__name__:
            raise CheckpointError(f"{ckpt.path} holds an HF {ckpt.architecture}; load it with "
                                  f"{hf.HF_ARCHITECTURES[ckpt.architecture]}, not {cls.__name__}")
        if other_arch:
            sd = _with_aliases(sd, ckpt)
        if ckpt.format == "official" or other_arch:
            # Official files, and blipx folders of another head (blipx keeps the official names):
            # text_encoder.bert.* <-> text_encoder.* as the official loaders map them.
            sd = official.state_dict_from_official(sd, cls._text_encoder_is_lm)
        if isinstance(config, str):
            config = get_config(config)
        cfg = (config or ckpt.config).with_overrides(**overrides)
        model = cls(cfg)
        ignore, optional = model._ignore_keys, model._optional_keys
        if other_arch:  # a superset: whatever this head does not use is reported, not loaded
            ignore = (".*",)
        # A file without momentum copies (HF, fine-tuned heads) still initialises a model that
        # has them: they start as copies of the online weights, as ALBEF's ``copy_params`` does.
        init_momentum = model.has_momentum and not any(_MOMENTUM_KEY.match(k) for k in sd)
        if not model.has_momentum:
            ignore = ignore + (_MOMENTUM_KEY.pattern + ".*",)
        elif init_momentum:
            optional = optional + (_MOMENTUM_KEY.pattern + ".*",)
        source = f"{ckpt.source} (holds a {ckpt.architecture})" if other_arch else ckpt.source
        model.load_report = load_into_model(model, sd, ignore=ignore, allow_missing=optional, strict=strict,
                                            source=source)
        if init_momentum:
            model.copy_momentum_from_online()
        model.checkpoint_extras = ckpt.queues
        if ckpt.format == "hf":
            model.load_report.notes.extend(hf.load_notes(ckpt.architecture))
        return model.eval()

    @property
    def has_momentum(self) -> bool:
        return hasattr(self, "visual_encoder_m")
