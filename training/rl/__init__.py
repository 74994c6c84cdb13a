"""RL core: rollouts on the model's own generation path, the GRPO-family algorithm registry,
verifiable tasks, SFT warm start, the trainer every recipe drives, and the recipe registry.

Example::

    from hysparse_kernels.training.rl import RolloutEngine, SamplingParams, get_task, task_sampling, TaskEnv
    task = get_task("lookup")
    engine = RolloutEngine(model, ByteTokenizer(), task_sampling(task, temperature=1.0))
    rollouts, stats = engine.generate(prompts, TaskEnv(task, examples), generator)

Layout: ``rollout.py`` (+ ``rollout_spec.py`` MTP drafts, ``kvrows.py``), ``sampling.py``,
``algos.py``, ``policy.py``, ``tasks/``, ``sft.py``, ``trainer.py``, ``evaluate.py``,
``distributed.py``, ``runs.py`` (run-directory files), ``recipes/`` (one file per recipe),
``cli.py`` (``hysparse recipe``).
"""

from .algos import (AdvantageInput, AlgoConfig, policy_objective, register_advantage, register_aggregation,
                    register_loss)
from .evaluate import TaskEnv, evaluate, task_sampling
from .rollout import Rollout, RolloutEngine, RolloutStats, SamplingParams, collate
from .tasks import Task, get_task

__all__ = ["RolloutEngine", "SamplingParams", "Rollout", "RolloutStats", "collate", "AdvantageInput", "AlgoConfig",
           "register_advantage", "register_loss", "register_aggregation", "policy_objective", "get_task", "Task",
           "TaskEnv", "task_sampling", "evaluate"]
