"""The LlamaGen side-by-side (benchmarks/speed/llamagen_side_by_side.py) reads LlamaGen's code from a
checkout the user names; a folder without LlamaGen's gpt.py is refused at once, in one line that names
the flag, before anything is built or imported from it."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("llamagen_side_by_side",
                                              ROOT / "benchmarks" / "speed" / "llamagen_side_by_side.py")
sbs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sbs)


@pytest.mark.parametrize("where", ["missing", "empty", "not_llamagen"])
def test_llamagen_src_without_gpt_py_is_one_line_error(tmp_path, where):
    src = tmp_path / where
    if where != "missing":
        src.mkdir()
    if where == "not_llamagen":
        (src / "autoregressive" / "models").mkdir(parents=True)
        (src / "autoregressive" / "models" / "generate.py").write_text("")
    path_before = list(sys.path)
    with pytest.raises(SystemExit) as e:
        sbs.parse_args(["--llamagen-src", str(src)])
    msg = str(e.value.code)
    assert "--llamagen-src" in msg and str(src) in msg and "autoregressive/models/gpt.py" in msg
    assert "\n" not in msg
    assert sys.path == path_before  # nothing was put on the import path


def test_llamagen_src_is_required(capsys):
    with pytest.raises(SystemExit):
        sbs.parse_args([])
    assert "--llamagen-src" in capsys.readouterr().err


def test_checkout_with_gpt_py_passes_and_names_the_default_out(tmp_path):
    (tmp_path / "autoregressive" / "models").mkdir(parents=True)
    (tmp_path / "autoregressive" / "models" / "gpt.py").write_text("")
    args = sbs.parse_args(["--llamagen-src", str(tmp_path), "--preset", "GPT-small"])
    assert args.llamagen_src == tmp_path.resolve()
    assert args.out == "benchmarks/results/speed_llamagen_side_by_side/GPT-small"
