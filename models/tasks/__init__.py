"""Tasks: what a model learns, one typed object each, and the registry that names them.

A task bundles everything that differs between, say, classification and segmentation:
the TFRecord feature spec, the network builder, the loss and training metrics, the
evaluation with its confidence intervals, the promotion metric, the score schema. The
trainer, the gate and the scorer ask the task; they never branch on its name.
Importing this package loads no TensorFlow: a task's module is imported when asked for.
"""

from __future__ import annotations

import importlib

from models.tasks.records import Metrics, ModelInfo
from models.tasks.task import Evaluation, Task

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
DEFAULT_TASK = CLASSIFICATION
# name -> the module whose TASK attribute is the task object.
_MODULES = {
    CLASSIFICATION: "models.tasks.classification",
    SEGMENTATION: "models.tasks.segmentation",
}
TASKS = tuple(_MODULES)  # the tasks data can be ingested for, and a model trained and scored


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        ValueError: (one line) an unknown task.
    """
    if name not in _MODULES:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return importlib.import_module(_MODULES[name]).TASK


__all__ = [
    "CLASSIFICATION",
    "DEFAULT_TASK",
    "SEGMENTATION",
    "TASKS",
    "Evaluation",
    "Metrics",
    "ModelInfo",
    "Task",
    "get_task",
]
