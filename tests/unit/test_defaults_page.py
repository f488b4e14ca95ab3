"""docs/defaults.md is the one page that lists every default; it is written from the code and must match it."""
from pathlib import Path

from coarse2fine.apps import defaults_page
from coarse2fine.sampling import StageSampling

PAGE = Path(__file__).resolve().parents[2] / "docs" / "defaults.md"


def test_the_committed_page_is_what_the_code_writes():
    assert PAGE.read_text() == defaults_page.render(), (
        "docs/defaults.md is stale: run `python -m coarse2fine.apps.defaults_page > docs/defaults.md`")


def test_the_page_follows_a_changed_default(monkeypatch):
    monkeypatch.setattr(defaults_page, "CTF_COARSE_DEFAULT", StageSampling(temperature=0.7, cfg_scale=4.0, top_k=50))
    monkeypatch.setitem(defaults_page.COLOUR, "steps", 2000)
    page = defaults_page.render()
    assert "| CTF stage 1 (coarse labels) | 0.7 | 50 | off | 4 | every token |" in page
    assert "| steps per network | 340 | 2000 |" in page
    assert page != PAGE.read_text()
