"""The ImageNet run book rehearsed end to end (benchmarks/imagenet/rehearse.py): every command of
docs/imagenet.md at toy size on a CPU, two gloo processes where it uses torchrun, stage 1 killed and
resumed at world size 1. About 10-20 minutes on two busy cores, hence slow-marked."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_imagenet_runbook_rehearsal(tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "imagenet" / "rehearse.py"), "--work", str(work)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    log = (work / "rehearsal.log").read_text()[-4000:] if (work / "rehearsal.log").exists() else ""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + log
    res = json.loads((work / "rehearsal.json").read_text())
    ran = [s for s in res["steps"] if "wall_s" in s]
    assert sum(bool(s.get("killed")) for s in ran) == 1
    resumed = [s for s in ran if s["step"].endswith("--resume")]
    assert len(resumed) == 1 and "--nproc_per_node 1" in resumed[0]["step"] and resumed[0]["heldout"]["nll"] > 0
    assert res["outputs"]["fid/ctf-B"] == [4, 256, 256, 3] and res["outputs"]["codes/in256"] == [4, 20, 256]
    assert "rehearsal passed" in r.stdout
    # `eval` scored the ADM npz against the toy val split (N = 4 samples, M = 4 references)
    assert "FD-EffNetLite0@64" in (work / "rehearsal.log").read_text()
