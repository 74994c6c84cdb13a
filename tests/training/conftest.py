"""Fixtures shared by the RL recipe tests."""

import pytest

from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.rl.rollout import Rollout


def _rollout_of(prompt: str, turns: list[tuple[str, str | None]]) -> Rollout:
    """A rollout as the engine records it: each turn's model text, then its observation (None:
    the turn ended the rollout)."""
    tok = ByteTokenizer()
    r = Rollout(prompt=tok.encode(prompt, bos=True))
    for k, (text, obs) in enumerate(turns):
        ids = tok.encode(text)
        r.tokens += ids
        r.logprobs += [-1.0] * len(ids)
        r.mask += [1] * len(ids)
        r.turn += [k] * len(ids)
        r.turn_texts.append(text)
        if obs is not None:
            o = tok.encode(obs)
            r.tokens += o
            r.logprobs += [0.0] * len(o)
            r.mask += [0] * len(o)
            r.turn += [k] * len(o)
            r.observations.append(obs)
    return r


@pytest.fixture
def rollout_of():
    """``rollout_of(prompt, [(turn text, observation or None), ...]) -> Rollout``."""
    return _rollout_of
