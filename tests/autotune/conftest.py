"""Each test gets its own tuned-config cache (``HYSPARSE_CACHE``) and fresh one-time warnings."""

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
