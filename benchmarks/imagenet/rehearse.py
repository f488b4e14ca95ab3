"""Rehearse docs/imagenet.md from its first command to its last, at toy size on a CPU.

    python benchmarks/imagenet/rehearse.py --work /tmp/in-rehearsal      (or rehearse.sh, same flags)

The commands are read from the run book's own code blocks and run by bash in order, in a work
directory that stands in for the user's: only the placeholders listed in SUBSTITUTIONS are changed
(data path, world size, steps, batch sizes, sample count), and each of them must be found in the
document, so a changed command either still runs here or stops the rehearsal with the line it no
longer finds. Made on the spot, with random weights (nothing is downloaded):

- an ImageNet-layout folder ROOT/{train,val}/<wnid>/*.JPEG of a few 256-320 px JPEGs per class
  (one grayscale and one CMYK among them, as ImageNet has);
- vq_ds16_c2i.pt: LlamaGen's VQ-16 state dict (344 keys) under "model", with the extra entries of a
  LlamaGen training checkpoint;
- c2i_B_256.pt: a LlamaGen GPT-B state dict (vocab 16384, one class embedding per toy class + null).

Where the run book uses torchrun, the rehearsal runs `torchrun --nproc_per_node 2` (gloo). Stage 1 is
killed (SIGKILL to the whole process group, as a lost node) after its first checkpoint and resumed
with the run book's instruction, `--resume` added to the same command, at world size 1. Each
command's wall time goes into WORK/rehearsal.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "imagenet.md"
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")  # the first ImageNet-1k class folders


@dataclass
class Toy:
    """The rehearsal's sizes: what the placeholders become."""
    classes: int = 2
    train_per_class: int = 2
    val_per_class: int = 2
    steps: int = 6            # stage 1 is killed after its checkpoint at step ckpt_every
    batch_size: int = 4       # global batch: 2 per process under torchrun, 4 after the resume at world 1
    ckpt_every: int = 2
    eval_every: int = 3
    samples: int = 4          # a multiple of the class count
    nproc: int = 2
    bf16: bool = False        # keep the run book's --dtype bf16: only where the CPU has native bf16

    def substitutions(self, data_root: Path) -> list[tuple[str, str, str]]:
        """(text in the document, text rehearsed, why). Every left side must occur in the run book."""
        n_train = self.classes * self.train_per_class
        return [
            ("--nproc_per_node 8", f"--nproc_per_node {self.nproc}",
             "two CPU processes (gloo) stand in for the node's eight GPUs"),
            ("/data/imagenet", str(data_root), "the toy ImageNet folder made on the spot"),
            ("extract-codes-imagenet", f"extract-codes-imagenet --shard-size {-(-n_train // self.nproc)} "
             "--batch-size 1 --workers 1",
             "one shard per process (10,000 images per shard would leave rank 1 idle); one image (x 20 crops)"
             " per encoder batch and one decoding worker, as the CPU's memory and cores allow"),
            ("--steps 1501200 --batch-size 256", f"--steps {self.steps} --batch-size {self.batch_size}",
             "a few steps of a small global batch"),
            ("--ckpt-every 5000 --eval-every 50000", f"--ckpt-every {self.ckpt_every} --eval-every {self.eval_every}",
             "a checkpoint to resume from and a held-out evaluation within the few steps"),
            ("--preset GPT-L --head full", "--preset GPT-B --head full",
             "stage 2 at GPT-B width: GPT-L's weights, gradients and AdamW state take ~6.5 GB per process, "
             "13 GB for two on a 23 GB box shared with other jobs; GPT-B's take 1.8 GB"),
            ("sample-fid", f"sample-fid --num-samples {self.samples} --batch-size 1",
             f"{self.samples} samples instead of 50,000, one per chunk so both processes sample"),
            ("--ref-count 10000", f"--ref-count {self.classes * self.val_per_class}",
             "the toy val split's images"),
        ] + ([] if self.bf16 else [
            ("--dtype bf16", "--dtype fp32",
             "this CPU has no native bf16 (avx512_bf16 / AMX): there bf16 matmuls ran at 0.7 GFLOP/s against 46 in "
             "fp32, a GPT-B training step took 150 CPU-s instead of 6"),
        ])


# ---- the run book's commands -------------------------------------------------------------------------

@dataclass
class Command:
    section: str
    line: int          # 1-based line of the document where the command starts
    text: str          # continuation lines joined


def runbook_commands(doc: str) -> list[Command]:
    """Every command of the document's indented code blocks, in order, with `\\` continuations joined."""
    out: list[Command] = []
    section, prev_blank, in_block = "", True, False
    pending: list[str] = []
    start = 0
    for i, raw in enumerate(doc.splitlines(), 1):
        if raw.startswith("#"):
            section = raw.lstrip("#").strip()
        indented = raw.startswith("    ") and raw.strip() != ""
        if indented and (in_block or prev_blank):
            in_block = True
            body = raw.strip()
            if not pending:
                start = i
            pending.append(body[:-1].rstrip() if body.endswith("\\") else body)
            if not body.endswith("\\"):
                out.append(Command(section, start, " ".join(pending)))
                pending = []
        elif raw.strip():
            in_block = False
        prev_blank = raw.strip() == ""
    if pending:
        raise ValueError(f"{DOC.name}:{start}: a command ends with a line continuation")
    return out


# commands of the run book that are not run, and why (matched by their first word(s))
NOT_RUN = {
    "torchrun --standalone --nproc_per_node 8 -m coarse2fine.cli <command>":
        "the generic prefix of section 0; every torchrun command below runs with it",
    "torchrun --nnodes 4": "several nodes: one machine here (the same rendezvous code as --standalone)",
    "python evaluations/evaluator.py": "OpenAI's ADM evaluator needs TensorFlow and their repository, which are not "
                                       "dependencies; `coarse2fine eval` scores the same npz instead",
}


@dataclass
class Step:
    command: Command
    run: str | None            # the shell text rehearsed (None: not run)
    why_not: str = ""
    kill_and_resume: bool = False


def plan(doc: str, toy: Toy, data_root: Path) -> tuple[list[Step], list[tuple[str, str, str]]]:
    """The rehearsal's steps in the document's order, and the substitutions applied. Raises
    ValueError when a substitution's text is not in the run book any more."""
    subs = toy.substitutions(data_root)
    used = {old: 0 for old, _, _ in subs}
    steps = []
    for cmd in runbook_commands(doc):
        skip = next((why for head, why in NOT_RUN.items() if cmd.text.startswith(head)), None)
        if skip is not None:
            steps.append(Step(cmd, None, skip))
            continue
        text = cmd.text
        for old, new, _ in subs:
            used[old] += text.count(old)
            text = text.replace(old, new)
        steps.append(Step(cmd, text, kill_and_resume="--stage coarse" in text and " train " in f" {text} "))
    missing = [old for old, n in used.items() if n == 0]
    if missing:
        raise ValueError(f"{DOC.name} no longer contains {missing}: update the rehearsal's substitutions")
    if sum(s.kill_and_resume for s in steps) != 1:
        raise ValueError(f"{DOC.name}: expected one stage-1 train command to kill and resume")
    return steps, subs


# ---- inputs made on the spot -------------------------------------------------------------------------

def make_imagenet(root: Path, toy: Toy, seed: int = 0) -> None:
    """ROOT/{train,val}/<wnid>/<wnid>_<i>.JPEG: smooth colour fields with noise, 256-320 px sides."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", toy.train_per_class), ("val", toy.val_per_class)):
        for c, wnid in enumerate(WNIDS[:toy.classes]):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(256, 321, 2))
                yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
                base = rng.uniform(0, 255, 3) * np.stack([yy, xx, 1 - yy], -1) + rng.normal(0, 25, (h, w, 3))
                img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
                if split == "train" and c == 0 and i == 1:
                    img = img.convert("L")  # ImageNet holds grayscale JPEGs ...
                if split == "train" and c == 1 and i == 1:
                    img = img.convert("CMYK")  # ... and a few CMYK ones
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * n + i + 1:08d}.JPEG"
                img.save(d / name, "JPEG", quality=90)


def make_llamagen_files(work: Path, toy: Toy) -> None:
    """vq_ds16_c2i.pt and c2i_B_256.pt in LlamaGen's layout, random weights."""
    import torch

    from coarse2fine.config import gpt_config, vq_config
    from coarse2fine.models import Transformer
    from coarse2fine.tokenizer.vq import VQModel

    torch.manual_seed(0)
    vq = VQModel(vq_config("VQ-16")).state_dict()
    # the layout of reference/llamagen-compat.md: 344 keys, the usage buffer among them
    assert len(vq) == 344 and vq["quantize.codebook_used"].shape == (65536,), len(vq)
    assert tuple(vq["encoder.conv_out.weight"].shape) == (256, 512, 3, 3)
    with torch.no_grad():  # LlamaGen's stored codewords are not unit norm
        vq["quantize.embedding.weight"].normal_(0, 1)
    torch.save({"model": vq, "optimizer": {"state": {}, "param_groups": []}, "steps": 400000,
                "args": argparse.Namespace(vq_model="VQ-16", codebook_size=16384, image_size=256)},
               work / "vq_ds16_c2i.pt")
    gpt = Transformer(gpt_config("GPT-B", vocab_size=16384, num_classes=toy.classes, grid=16)).state_dict()
    assert tuple(gpt["cls_embedding.embedding_table.weight"].shape) == (toy.classes + 1, 768)
    with torch.no_grad():  # LlamaGen zero-inits the head; trained weights are not zero
        gpt["output.weight"].normal_(0, 0.02)
    torch.save({"model": gpt, "steps": 750000, "args": argparse.Namespace(gpt_model="GPT-B")}, work / "c2i_B_256.pt")


# ---- running -----------------------------------------------------------------------------------------

def _env(work: Path) -> dict[str, str]:
    """The user's shell: the interpreter's bin dir first on PATH (coarse2fine, torchrun), this
    checkout's sources first on PYTHONPATH, one thread per process, no GPU."""
    bin_dir = str(Path(sys.executable).parent)
    pp = os.environ.get("PYTHONPATH")
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO / "src") + (os.pathsep + pp if pp else ""), "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "COARSE2FINE_CACHE": str(work / "cache")}


def _shell(assigned: dict[str, str], text: str) -> str:
    """bash text: the block's earlier assignments (C=..., T=...) then the command."""
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in assigned.items()) + "set -euo pipefail\n" + text


ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of every finished child process and the descendants they waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(text: str, work: Path, env: dict[str, str], log) -> dict:
    """Run one command; -> wall and CPU seconds (the CPU time does not count what other jobs took)."""
    t0, c0 = time.time(), _children_cpu_s()
    r = subprocess.run(["bash", "-c", text], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {text.splitlines()[-1]} (see {log.name})")
    return {"wall_s": time.time() - t0, "cpu_s": _children_cpu_s() - c0}


def _kill_after_checkpoint(text: str, work: Path, env: dict[str, str], log, timeout_s: float = 1800) -> float:
    """Start the command, SIGKILL its whole process group once its run dir holds a checkpoint."""
    out = work / re.search(r"--out (\S+)", text).group(1)
    t0 = time.time()
    p = subprocess.Popen(["bash", "-c", text], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    while not (out / "state.pt").exists():
        if p.poll() is not None:
            raise RuntimeError(f"ended (exit {p.returncode}) before its first checkpoint: {text.splitlines()[-1]}")
        if time.time() - t0 > timeout_s:
            os.killpg(p.pid, signal.SIGKILL)
            raise RuntimeError("no checkpoint within the time limit")
        time.sleep(0.2)
    # as a lost node: every process of the job at once (torchrun starts its workers in sessions of
    # their own, so killing torchrun's group alone would leave them training)
    for pid in [p.pid, *_descendants(p.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
    t_kill = time.time()
    while _lock_held(out):  # the OS drops a dead process's lock once it is reaped
        if time.time() - t_kill > 60:
            raise RuntimeError(f"{out}/.lock still held a minute after the kill")
        time.sleep(0.2)
    if (out / "summary.json").exists():
        raise RuntimeError("the run finished before the kill: give it more steps")
    return time.time() - t0


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children before grandchildren."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                # the command name may hold spaces and parentheses: ppid is the 2nd field after the last ')'
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _lock_held(run_dir: Path) -> bool:
    """Whether a process still holds the run's lock (a killed worker not yet reaped)."""
    import fcntl

    fd = os.open(run_dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _check_resumed(out: Path, steps: int) -> dict:
    """metrics.jsonl after kill + resume: every step once, in order, and a finished run."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_steps = [r["step"] for r in recs if "loss" in r]
    if train_steps != list(range(1, steps + 1)):
        raise RuntimeError(f"{out}/metrics.jsonl after the resume holds steps {train_steps}")
    return json.loads((out / "summary.json").read_text())


def _check_outputs(work: Path, toy: Toy) -> dict:
    """What the run book promises at the end: the ADM npz and the scores of `eval`."""
    import numpy as np

    found = {}
    for name in ("fid/ctf-B", "fid/llamagen-B"):
        with np.load(work / name / "samples.npz") as z:
            arr, labels = z["arr_0"], z["labels"]
        if arr.shape != (toy.samples, 256, 256, 3) or arr.dtype != np.uint8:
            raise RuntimeError(f"{name}/samples.npz: arr_0 {arr.shape} {arr.dtype}")
        if labels.tolist() != [i % toy.classes for i in range(toy.samples)]:
            raise RuntimeError(f"{name}/samples.npz: labels {labels.tolist()}")
        found[name] = list(arr.shape)
    codes = json.loads((work / "codes/in256/index.json").read_text())
    if (codes["images"], codes["variants"], codes["length"]) != (toy.classes * toy.train_per_class, 20, 256):
        raise RuntimeError(f"codes/in256/index.json: {codes}")
    found["codes/in256"] = [codes["images"], codes["variants"], codes["length"]]
    return found


def rehearse(work: Path, toy: Toy, log_path: Path | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: the rehearsal starts from nothing")
    data_root = work / "data" / "imagenet"
    steps, subs = plan(DOC.read_text(), toy, data_root)
    env = _env(work)
    timings, t_all = [], time.time()
    log_path = log_path or work / "rehearsal.log"
    with open(log_path, "w") as log:
        t0, c0 = time.time(), time.process_time()
        make_imagenet(data_root, toy)
        make_llamagen_files(work, toy)
        timings.append({"step": "inputs: toy ImageNet folder, vq_ds16_c2i.pt, c2i_B_256.pt", "wall_s": time.time() - t0,
                        "cpu_s": time.process_time() - c0})
        assigned: dict[str, str] = {}
        for st in steps:
            label = f"{DOC.name}:{st.command.line}"
            if st.run is None:
                print(f"[skip] {label}  {st.command.text[:70]}  ({st.why_not})", flush=True)
                timings.append({"step": st.command.text, "line": st.command.line, "skipped": st.why_not})
                continue
            m = ASSIGN.match(st.run)
            if m:
                assigned[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2) else ""
                continue
            print(f"[run ] {label}  {st.run}", flush=True)
            log.write(f"\n===== {label}: {st.run}\n")
            log.flush()
            if st.kill_and_resume:
                wall = _kill_after_checkpoint(_shell(assigned, st.run), work, env, log)
                timings.append({"step": st.run, "line": st.command.line, "wall_s": wall, "killed": True})
                resumed = st.run.replace(f"--nproc_per_node {toy.nproc}", "--nproc_per_node 1") + " --resume"
                print(f"[kill] after the first checkpoint; [run ] {resumed}", flush=True)
                log.write(f"\n===== {label} resumed: {resumed}\n")
                log.flush()
                took = _run(_shell(assigned, resumed), work, env, log)
                out = work / re.search(r"--out (\S+)", st.run).group(1)
                summary = _check_resumed(out, toy.steps)
                timings.append({"step": resumed, "line": st.command.line, **took,
                                "final_loss": summary.get("loss"), "heldout": summary.get("heldout")})
            else:
                timings.append({"step": st.run, "line": st.command.line, **_run(_shell(assigned, st.run), work, env,
                                                                                log)})
    # the killed run's workers are not waited for by a live parent: their CPU time is not counted
    result = {"doc": str(DOC.relative_to(REPO)), "toy": toy.__dict__, "total_wall_s": time.time() - t_all,
              "total_cpu_s": sum(s.get("cpu_s", 0.0) for s in timings),
              "substitutions": [{"doc": a, "rehearsed": b, "why": c} for a, b, c in subs],
              "steps": timings, "outputs": _check_outputs(work, toy), "machine": machine()}
    (work / "rehearsal.json").write_text(json.dumps(result, indent=1))
    return result


def machine() -> dict:
    """CPU model, core count, the bf16-relevant flags and the date, for the run book's timing line."""
    import platform

    from coarse2fine.precision import cpu_info

    name, flags = cpu_info()
    model = platform.processor() or ""
    if not model.strip():
        model = name or model
    flags = flags or frozenset()
    return {"cpu": model, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, type=Path, help="an empty or new directory (several GB)")
    ap.add_argument("--plan", action="store_true", help="print the commands that would run, run nothing")
    args = ap.parse_args(argv)
    from coarse2fine.precision import bf16_native

    toy = Toy(bf16=bf16_native("cpu"))
    if args.plan:
        steps, subs = plan(DOC.read_text(), toy, args.work / "data" / "imagenet")
        for st in steps:
            print(f"{st.command.line:4d} {'SKIP ' + st.why_not if st.run is None else st.run}")
        return 0
    res = rehearse(args.work.resolve(), toy)
    m = res["machine"]
    print(f"rehearsal passed: {res['total_wall_s'] / 60:.1f} min wall, {res['total_cpu_s'] / 60:.1f} CPU-min, on "
          f"{m['cpu']} ({m['cores']} cores, {' '.join(m['flags']) or 'no avx2/avx512 flags'}), {m['date']}; "
          f"{args.work}/rehearsal.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
