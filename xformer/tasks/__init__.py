"""Tasks: what to train and how to evaluate it, one module per task.

- :mod:`~xformer.tasks.registry`: task names -> task modules (:func:`get_task`), and reading a config
  with its task's config class (:func:`parse_config`, :func:`read_run_config`);
- :mod:`~xformer.tasks.base`: the contracts a task module fills in (``Task``, ``Built``, ``TaskSpec``);
- :mod:`~xformer.tasks.runner`: :func:`run`, which trains any task into its run directory;
- :mod:`~xformer.tasks.trained_run`: a trained run opened for evaluation and export.
"""

from xformer.tasks.registry import DEFAULT_TASK, TASKS, get_task, parse_config, read_run_config
from xformer.tasks.runner import run_task as run

__all__ = ["DEFAULT_TASK", "TASKS", "get_task", "parse_config", "read_run_config", "run"]
