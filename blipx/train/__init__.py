"""Training: the task contract (a model + its momentum EMA, queues and losses; one call per
micro-batch), the tasks of pretraining and fine-tuning, and the trainer that runs them."""

from blipx.train.finetune import AlbefRetrievalTask, BlipRetrievalTask, CaptionTask, RetrievalTask
from blipx.train.momentum import MomentumEMA
from blipx.train.task import AlbefPretrainTask, BlipPretrainTask, ContrastiveTask, StepContext, Task

__all__ = [
    "AlbefPretrainTask",
    "AlbefRetrievalTask",
    "BlipPretrainTask",
    "BlipRetrievalTask",
    "CaptionTask",
    "ContrastiveTask",
    "MomentumEMA",
    "RetrievalTask",
    "StepContext",
    "Task",
]
