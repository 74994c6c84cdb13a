"""Each test gets its own tuned-config cache (``HYSPARSE_CACHE``), fresh one-time warnings, and a
tuner budget clock that stands still unless the test moves it (``clock.t``): whether a budget
runs out is the test's decision, never the machine's speed or load."""

import pytest

from hysparse_kernels import tuned


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(tuned.ENV_CACHE, str(root))
    tuned.invalidate()
    tuned.reset_warnings()
    yield root
    tuned.invalidate()
    tuned.reset_warnings()


class FakeClock:
    """``runner.clock`` stand-in: ``t`` seconds, moved only by the test."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    from hysparse_kernels.autotune import runner

    fake = FakeClock()
    monkeypatch.setattr(runner, "clock", fake)
    return fake
