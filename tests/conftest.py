"""Every test runs inside its own tmp_path: a relative path a test passes (`--out o`) lands there, never in
the repository."""
import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
