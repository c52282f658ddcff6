"""A task small enough that a whole run takes milliseconds: what the checkpoint kill tests,
the folder rules and the data-stream resume test need (they test the trainer, not a model)."""

import torch
from torch import nn
from torch.utils.data import Dataset

from blipx.train.config import TrainConfig
from blipx.train.task import Task
from blipx.train.trainer import Trainer

SIZE = 4  # pixels per side


class PixelTask(Task):
    """``loss = mean((w . pixels + b)^2)``: every pixel of every sample reaches the loss, so a
    changed augmentation or data order changes the loss and the weights."""

    inputs = ("pixel_values",)

    def __init__(self, size: int = SIZE) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Linear(3 * size * size, 1))

    def losses(self, batch, ctx):
        loss = self.model(batch["pixel_values"].flatten(1)).pow(2).mean()
        return {"loss": loss, "loss_sq": loss}


class Pixels(Dataset):
    """``n`` fixed random images, as samples the way the image datasets give them."""

    def __init__(self, n: int = 10, size: int = SIZE) -> None:
        self.images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def image_collate(samples):
    return {"pixel_values": torch.stack([s["image"] for s in samples])}


def tiny_trainer(out_dir, data=None, collate=image_collate, log=None, task=None, task_name="blip_pretrain",
                 **overrides) -> Trainer:
    """A Trainer of :class:`PixelTask`; ``task_name`` is what its config (and checkpoints) call it."""
    settings = dict(task=task_name, out_dir=str(out_dir), batch_size=2, epochs=3, log_every=1, lr=1e-2,
                    warmup_steps=1)
    cfg = TrainConfig(**{**settings, **overrides})
    return Trainer(task or PixelTask(), cfg, Pixels() if data is None else data, collate,
                   log=log or (lambda s: None))


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Weights and optimizer moments: what must be bit-identical after a resume."""
    out = {f"task.{k}": v.clone() for k, v in trainer.task.state_dict().items()}
    for i, p in enumerate(trainer.task.parameters()):
        for k, v in trainer.optimizer.state[p].items():
            out[f"opt.{i}.{k}"] = v.clone()
    return out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
