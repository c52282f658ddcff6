"""Builds a whole training run from a TrainConfig: model, task, tokenizer, data, trainer.

Used by ``blipx pretrain`` / ``blipx finetune`` (and by torchrun for multi-process runs).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from blipx.train.config import TASKS, ConfigError, TrainConfig


def build_model(cfg: TrainConfig):
    from blipx.models import MODEL_CLASSES, create_model

    family, model_task = TASKS[cfg.task]  # a known task: TrainConfig checked it
    # Retrieval, ALBEF VQA, VE and NLVR distil from momentum copies (salesforce/ALBEF model_vqa.py,
    # model_ve.py, model_nlvr.py with distill: True).
    extra = {"momentum": True} if model_task == "retriever" or cfg.task in ("albef_vqa", "albef_ve", "albef_nlvr") \
        else {}
    if cfg.init:
        return MODEL_CLASSES[(family, model_task)].from_pretrained(cfg.init, **cfg.model_overrides, **extra)
    model = create_model(cfg.model, model_task, **cfg.model_overrides, **extra)
    if model.config.family != family:
        raise ConfigError(f"model={cfg.model!r}: task {cfg.task} needs a {family} model, not {model.config.family}")
    return model


def build_task(cfg: TrainConfig, model, tokenizer) -> nn.Module:
    from blipx.train.finetune import AlbefRetrievalTask, BlipRetrievalTask, CaptionTask
    from blipx.train.task import AlbefPretrainTask, BlipPretrainTask
    from blipx.train.vqa import AlbefVqaTask, BlipVqaTask

    if cfg.task == "blip_caption":
        # 'a picture of ' -> [CLS] a picture of [SEP]: 5 ids, minus [SEP] = 4 (official).
        return CaptionTask(model, prompt_length=len(tokenizer(cfg.prompt).input_ids) - 1,
                           label_smoothing=cfg.label_smoothing)
    # The momentum copies start as the online weights unless they were loaded with the model
    # (a file without *_m initialises them as copies at load time).
    common = dict(queue_size=cfg.queue_size, momentum=cfg.momentum, alpha=cfg.alpha, copy_momentum=cfg.init is None)
    if cfg.task == "blip_pretrain":
        return BlipPretrainTask(model, label_smoothing=cfg.label_smoothing, **common)
    if cfg.task == "albef_pretrain":
        return AlbefPretrainTask(model, **common)
    if cfg.task == "blip_vqa":
        return BlipVqaTask(model, label_smoothing=cfg.label_smoothing)
    if cfg.task == "albef_vqa":
        return AlbefVqaTask(model, momentum=cfg.momentum, alpha=cfg.alpha, copy_momentum=cfg.init is None)
    if cfg.task.endswith("_ve"):
        from blipx.train.ve import build_ve_task
        return build_ve_task(cfg, model)
    if cfg.task.endswith("_grounding"):
        from blipx.train.grounding import build_grounding_task
        return build_grounding_task(cfg, model, common)
    if "_nlvr" in cfg.task:
        from blipx.train.nlvr import build_nlvr_task
        return build_nlvr_task(cfg, model)
    return {"blip_retrieval": BlipRetrievalTask, "albef_retrieval": AlbefRetrievalTask}[cfg.task](model, **common)


def build_data(cfg: TrainConfig, model, tokenizer, split: str = "train", train: bool = True):
    """(dataset, collate_fn) for ``cfg.data``: "shapes", a .json/.jsonl annotation file, or
    WebDataset shards (a .tar path or brace pattern)."""
    from blipx.data import ImageTextCollator, TrainTransform, eval_transform, get_dataset

    if cfg.task.endswith("_vqa"):
        from blipx.train.vqa import build_vqa_data

        return build_vqa_data(cfg, model, tokenizer, split)
    if cfg.task.endswith("_ve"):
        from blipx.train.ve import build_ve_data
        return build_ve_data(cfg, model, tokenizer, split)
    if cfg.task.endswith("_grounding"):
        from blipx.train.grounding import build_grounding_data
        return build_grounding_data(cfg, model, tokenizer, split)
    if cfg.task.endswith("_nlvr"):  # albef_nlvr_pretrain reads image-caption pairs (below)
        from blipx.train.nlvr import build_nlvr_data
        return build_nlvr_data(cfg, model, tokenizer, split)
    family = model.config.family
    size = model.config.vision.image_size
    opts = dict(cfg.data_options)
    # Shapes captions name positions: a flip must swap left/right in the caption too.
    flip = cfg.flip if cfg.flip != "auto" else ("swap" if cfg.data == "shapes" else "random")
    if train:
        scale = cfg.crop_scale if cfg.crop_scale is not None else ((1.0, 1.0) if cfg.data == "shapes" else None)
        transform = TrainTransform(size, family=family, flip=flip, randaugment=cfg.randaugment,
                                   scale=None if scale is None else tuple(scale))
    else:
        transform = eval_transform(size)
    if cfg.data == "shapes":
        dataset = get_dataset("shapes", split=split, image_size=opts.pop("image_size", size), transform=transform, **opts)
    elif cfg.data.endswith((".json", ".jsonl")):
        files = cfg.data.split(",")
        dataset = get_dataset("json", ann_files=files, image_root=cfg.image_root or str(Path(files[0]).parent),
                              transform=transform, allow_outside_root=cfg.allow_outside_root, **opts)
    else:
        dataset = get_dataset("webdataset", urls=cfg.data, transform=transform, **opts)
    collate = ImageTextCollator(tokenizer, max_length=cfg.max_text_len,
                                padding="longest",
                                prompt=cfg.prompt if cfg.task == "blip_caption" else "")
    return dataset, collate


def run_training(cfg: TrainConfig, progress: bool = True) -> list[dict]:
    """Train per ``cfg`` (torchrun-aware); writes checkpoints, metrics.jsonl and loss_curves.png."""
    import torch

    from blipx.tokenizer import tokenizer_for
    from blipx.train.distributed import distributed_session
    from blipx.train.plots import plot_metrics
    from blipx.train.trainer import Trainer, estimate_flops_per_image

    with distributed_session(cfg.device) as dist:
        torch.manual_seed(cfg.seed + dist.rank)
        model = build_model(cfg)
        if cfg.grad_checkpointing:  # recompute every ViT block in the backward
            model.visual_encoder.config.grad_ckpt_layers = model.visual_encoder.config.depth
        tokenizer = tokenizer_for(model.config.family)
        task = build_task(cfg, model, tokenizer)
        dataset, collate = build_data(cfg, model, tokenizer)
        image_tokens = (model.config.vision.image_size // model.config.vision.patch_size) ** 2 + 1
        passes = 3 if cfg.task.endswith("pretrain") else 2
        flops = estimate_flops_per_image(model, image_tokens, cfg.max_text_len, passes)
        trainer = Trainer(task, cfg, dataset, collate, dist=dist, flops_per_image=flops)
        history = trainer.fit(progress=progress)  # RunError when no optimizer step was taken
        if dist.is_main:
            if (Path(cfg.out_dir) / "metrics.jsonl").is_file():
                plot_metrics(Path(cfg.out_dir) / "metrics.jsonl")
            model.save_pretrained(Path(cfg.out_dir) / "model")
        return history
