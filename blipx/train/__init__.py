"""Training tasks: a model + its momentum copies + queues + losses, one call per step."""

from blipx.train.task import AlbefPretrainTask, BlipPretrainTask, PretrainTask

__all__ = ["AlbefPretrainTask", "BlipPretrainTask", "PretrainTask"]
