"""Cached training artifacts are named by their settings and by the code that trains them."""

import dataclasses

from hysparse_kernels.training import artifacts


@dataclasses.dataclass
class Settings:
    steps: int = 10
    lr: float = 1e-3


def _fake_package(tmp_path, monkeypatch, body="x = 1\n"):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True, exist_ok=True)
    (pkg / "a.py").write_text(body)
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    monkeypatch.setattr(artifacts, "_package_dirs", lambda: [pkg])
    artifacts.code_fingerprint.cache_clear()
    return pkg


def test_key_changes_with_settings_and_with_code_only(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path, monkeypatch)
    try:
        base = artifacts.settings_key(Settings())
        assert artifacts.settings_key(Settings()) == base == artifacts.settings_key({"steps": 10, "lr": 1e-3})
        assert artifacts.settings_key(Settings(steps=11)) != base
        (pkg / "notes.txt").write_text("edited, still not code")
        artifacts.code_fingerprint.cache_clear()
        assert artifacts.settings_key(Settings()) == base
        (pkg / "sub" / "b.py").write_text("y = 3\n")  # a code change names another artifact
        artifacts.code_fingerprint.cache_clear()
        assert artifacts.settings_key(Settings()) != base
        (pkg / "sub" / "b.py").write_text("y = 2\n")
        (pkg / "sub" / "c.py").write_text("")  # so does a new module
        artifacts.code_fingerprint.cache_clear()
        assert artifacts.settings_key(Settings()) != base
    finally:
        artifacts.code_fingerprint.cache_clear()


def test_artifact_dir_lives_under_hysparse_cache(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch)
    monkeypatch.setenv("HYSPARSE_CACHE", str(tmp_path / "cache"))
    try:
        path = artifacts.artifact_dir("rl-sft", Settings(), prefix="lookup-tiny-")
        assert path.parent == tmp_path / "cache" / "rl-sft"
        assert path.name == "lookup-tiny-" + artifacts.settings_key(Settings())
    finally:
        artifacts.code_fingerprint.cache_clear()


def test_the_real_fingerprint_covers_models_and_training():
    dirs = {d.name for d in artifacts._package_dirs()}
    assert {"hysparse_kernels", "ir", "models", "training"} <= dirs | {p.name for d in artifacts._package_dirs()
                                                                        for p in d.iterdir() if p.is_dir()}
    assert len(artifacts.code_fingerprint()) == 16
