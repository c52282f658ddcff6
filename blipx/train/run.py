"""Builds a whole training run from a TrainConfig: model, task, tokenizer, data, trainer.

Used by ``blipx pretrain`` / ``blipx finetune`` (and by torchrun for multi-process runs).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from blipx.train.config import TrainConfig

# task -> (model family, model task, the Task class's module attribute)
TASKS = {
    "blip_pretrain": ("blip", "pretrain"),
    "albef_pretrain": ("albef", "pretrain"),
    "blip_caption": ("blip", "captioner"),
    "blip_retrieval": ("blip", "retriever"),
    "albef_retrieval": ("albef", "retriever"),
}


def tokenizer_for(family: str):
    from blipx.tokenizer import bert_tokenizer, blip_tokenizer

    return blip_tokenizer() if family == "blip" else bert_tokenizer()


def build_model(cfg: TrainConfig):
    from blipx.models import MODEL_CLASSES, create_model

    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; choose from {sorted(TASKS)}")
    family, model_task = TASKS[cfg.task]
    extra = {"momentum": True} if model_task == "retriever" else {}
    if cfg.init:
        from blipx.models.downstream import load_model_as

        return load_model_as(MODEL_CLASSES[(family, model_task)], cfg.init, **cfg.model_overrides, **extra)
    model = create_model(cfg.model, model_task, **cfg.model_overrides, **extra)
    if model.config.family != family:
        raise ValueError(f"task {cfg.task} needs a {family} model, but {cfg.model} is {model.config.family}")
    return model


def build_task(cfg: TrainConfig, model, tokenizer) -> nn.Module:
    from blipx.train.finetune import CaptionTask, RetrievalTask
    from blipx.train.task import AlbefPretrainTask, BlipPretrainTask

    fresh = cfg.init is None  # momentum copies start as the online weights unless loaded
    common = dict(queue_size=cfg.queue_size, momentum=cfg.momentum, alpha=cfg.alpha)
    if cfg.task == "blip_pretrain":
        return BlipPretrainTask(model, copy_momentum=fresh, label_smoothing=cfg.label_smoothing, **common)
    if cfg.task == "albef_pretrain":
        return AlbefPretrainTask(model, copy_momentum=fresh, **common)
    if cfg.task == "blip_caption":
        # 'a picture of ' -> [CLS] a picture of [SEP]: 5 ids, minus [SEP] = 4 (official).
        return CaptionTask(model, prompt_length=len(tokenizer(cfg.prompt).input_ids) - 1,
                           label_smoothing=cfg.label_smoothing)
    return RetrievalTask(model, copy_momentum=fresh or not model.has_momentum, **common)


def build_data(cfg: TrainConfig, model, tokenizer, split: str = "train", train: bool = True):
    """(dataset, collate_fn) for ``cfg.data``: "shapes", a .json/.jsonl annotation file, or
    WebDataset shards (a .tar path or brace pattern)."""
    from blipx.data import ImageTextCollator, TrainTransform, eval_transform, get_dataset

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
                              transform=transform, **opts)
    else:
        dataset = get_dataset("webdataset", urls=cfg.data, transform=transform, **opts)
    collate = ImageTextCollator(tokenizer, max_length=cfg.max_text_len,
                                padding="longest",
                                prompt=cfg.prompt if cfg.task == "blip_caption" else "")
    return dataset, collate


def run_training(cfg: TrainConfig, progress: bool = True) -> list[dict]:
    """Train per ``cfg`` (torchrun-aware); writes checkpoints, metrics.jsonl and loss_curves.png."""
    import torch

    from blipx.train.distributed import cleanup, init_distributed
    from blipx.train.plots import plot_metrics
    from blipx.train.trainer import Trainer, estimate_flops_per_image

    dist = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed + dist.rank)
    try:
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
        history = trainer.fit(progress=progress)
        if dist.is_main and (Path(cfg.out_dir) / "metrics.jsonl").is_file():
            plot_metrics(Path(cfg.out_dir) / "metrics.jsonl")
            model.save_pretrained(Path(cfg.out_dir) / "model")
        return history
    finally:
        cleanup()
