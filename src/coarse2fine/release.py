"""Release I/O: a sampling pipeline as one self-contained folder in the Hugging Face layout.

    <folder>/model_index.json        which pipeline, its components, its sampling defaults (this module
                                     is the one reader and writer of it)
    <folder>/README.md               the model card
    <folder>/tokenizer/, stage1/, stage2/, coarse_map/   (CTF)  or  tokenizer/, baseline/  (AR)
                                     each config.json + *.safetensors, as a run directory

The layout is diffusers' (a multi-component pipeline, `model_index.json` at the top). `resolve` turns a
name into a local folder: an existing folder is used as it is and nothing touches the network; anything
else is taken as a Hugging Face repo id and fetched (or found in the local cache) by
`huggingface_hub.snapshot_download`. The pipelines' `save_pretrained` / `from_pretrained` /
`push_to_hub` call this module; they live in pipeline.py.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import asdict, fields
from pathlib import Path

from coarse2fine.checkpoint import (FORMAT, FORMAT_VERSION, MODEL_INDEX, read_run_config, save_run, tokenizer_ref,
                                    write_run_config)
from coarse2fine.config import UserError, to_dict
from coarse2fine.fileio import LOCK_FILE, atomic_write_bytes, describe_os_error, load_json, lock_holder
from coarse2fine.sampling import StageSampling
from coarse2fine.tokenizer.vq import codebook_fingerprint

INDEX = MODEL_INDEX
# per pipeline class: its components (sub-folders) and the stages whose sampling defaults it keeps
LAYOUTS = {"CTFPipeline": (("tokenizer", "stage1", "stage2", "coarse_map"), ("stage1", "stage2")),
           "ARPipeline": (("tokenizer", "baseline"), ("stage1",))}
STAGE_OF = {"stage1": "coarse", "stage2": "fine", "baseline": "baseline"}  # component -> the run's stage
# run-config keys that name local paths or resume-only inputs: meaningless in a release folder
_LOCAL_CODES_KEYS = ("dir", "tokenizer_dir", "tokenizer_path")


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / INDEX).is_file()


def resolve(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
            local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """A local folder as it is; otherwise a Hugging Face repo id, fetched into (or found in) the hub cache
    by snapshot_download. local_files_only (or HF_HUB_OFFLINE=1): the cache only, no network."""
    path = Path(name_or_path).expanduser()  # "~/exports/ctf" from Python: no shell expanded it
    if path.is_dir():
        return path
    name = str(name_or_path)
    parts = name.split("/")
    if path.exists() or len(parts) != 2 or not all(parts) or name.startswith((".", "/", "~")):
        raise UserError(f"{name} is not a folder; from_pretrained takes a folder written by `coarse2fine export` "
                        "(or save_pretrained) or a Hugging Face repo id such as owner/name")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - a dependency; only a broken install lacks it
        raise UserError(f"{name}: loading a repo id needs huggingface_hub ({e}); pip install huggingface_hub, "
                        "or pass a local folder") from e
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=local_files_only))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, *hub_errors()) as e:
        first = _first_line(e)
        raise UserError(f"{name}: no local folder of that name, and the Hugging Face repo could not be loaded "
                        f"({first}); pass a local export folder, or connect and check the repo id") from e


# ---- model_index.json ------------------------------------------------------------------------------

def write_index(folder: Path, pipeline: str, components: dict[str, str], defaults: dict[str, StageSampling]) -> dict:
    index = {"_class_name": pipeline, "format": FORMAT, "format_version": FORMAT_VERSION,
             "components": dict(sorted(components.items())),
             "sampling_defaults": {stage: asdict(s) for stage, s in defaults.items()}}
    atomic_write_bytes(folder / INDEX, (json.dumps(index, indent=1) + "\n").encode())
    return index


def pipeline_class(folder: str | Path) -> str:
    """The pipeline class an exported folder holds ("CTFPipeline" or "ARPipeline"), from its model_index.json."""
    root = Path(folder)
    if not is_export(root):
        raise UserError(f"{root} holds no {INDEX}; --pipeline takes a folder written by `coarse2fine export` (or "
                        "save_pretrained) or a Hugging Face repo id (run directories: --coarse/--fine or --baseline)")
    name = load_json(root / INDEX).get("_class_name")
    if name not in LAYOUTS:
        raise UserError(f"{root}/{INDEX} names pipeline {name!r}; this coarse2fine loads {' or '.join(LAYOUTS)}")
    return name


def read_index(folder: str | Path, pipeline: str) -> tuple[dict[str, Path], dict[str, StageSampling]]:
    """model_index.json of an exported folder -> ({component: its sub-folder}, {stage: sampling
    defaults}), checked: the pipeline class, every component present and inside the folder (an export
    is self-contained: a path out of it, or a link out of it, is refused), the defaults valid."""
    root = Path(folder)
    needed, stages = LAYOUTS[pipeline]
    if not is_export(root):
        raise UserError(f"{root} holds no {INDEX}; from_pretrained loads a folder written by save_pretrained or "
                        "`coarse2fine export` (a run directory loads with from_runs)")
    index = load_json(root / INDEX)
    if index.get("format") != FORMAT or not isinstance(index.get("format_version"), int):
        raise UserError(f"{root}/{INDEX} is not a coarse2fine export; write one with `coarse2fine export`")
    if index["format_version"] > FORMAT_VERSION:
        raise UserError(f"{root} was exported in format_version {index['format_version']}; this coarse2fine reads "
                        f"up to {FORMAT_VERSION}: upgrade coarse2fine")
    if index.get("_class_name") != pipeline:
        raise UserError(f"{root} is a {index.get('_class_name')} export, not a {pipeline} one; load it with "
                        f"{index.get('_class_name')}.from_pretrained")
    comps = index.get("components")
    missing = [n for n in needed if not isinstance(comps, dict) or not isinstance(comps.get(n), str)]
    if missing:
        raise UserError(f"{root}/{INDEX} names no {', '.join(missing)} component; export the folder again")
    inside = root.resolve()
    parts = {}
    for name in needed:
        sub = (root / comps[name]).resolve()
        if sub == inside or not sub.is_relative_to(inside):
            given = root / comps[name]  # a link inside the folder, as the user sees it, is named as such
            link = next((p for p in (given, *given.parents) if p != root and p.is_relative_to(root) and p.is_symlink()),
                        None)
            what = (f"{link.relative_to(root)} is a link to {sub}" if link is not None else
                    f"component {name} is {comps[name]!r}")
            raise UserError(f"{root}/{INDEX}: {what}, outside the exported folder (component {name}); an export is "
                            "self-contained: copy that component into it (not a link) or export again")
        # its weights too: a copy cut short otherwise read as a run directory ("is the run directory complete?")
        weights = "coarse_map.safetensors" if name == "coarse_map" else "model.safetensors"
        lacking = next((f for f in ("config.json", weights) if not (sub / f).is_file()), None)
        if lacking:
            raise UserError(f"{root}: component {name} ({comps[name]}/) is missing or incomplete (no {lacking}); "
                            "the folder was copied in part: copy the whole folder again or export it again")
        parts[name] = sub
    return parts, _sampling_defaults(root, index.get("sampling_defaults"), stages)


def _sampling_defaults(root: Path, given, stages: tuple[str, ...]) -> dict[str, StageSampling]:
    """sampling_defaults -> {stage: StageSampling}: what a call without sampling arguments uses. A stage
    left out keeps the library's default; an unknown stage or knob, or a value out of range, is an
    error naming it."""
    if given is None:
        return {}
    where = f"{root}/{INDEX} sampling_defaults"
    if not isinstance(given, dict) or set(given) - set(stages):
        raise UserError(f"{where} must map {' / '.join(stages)} to sampling settings, got {given!r}")
    out = {}
    knobs = [f.name for f in fields(StageSampling)]
    whole = ("top_k", "cfg_interval")  # counts: integers; the others any number
    for stage, d in given.items():
        if not isinstance(d, dict) or set(d) - set(knobs):
            raise UserError(f"{where}: {stage} must hold some of {knobs}, got {d!r}")
        bad = [k for k, v in d.items() if isinstance(v, bool) or not isinstance(v, int if k in whole else (int, float))]
        if bad:
            raise UserError(f"{where}: {stage} {bad[0]} must be a number, got {d[bad[0]]!r}")
        out[stage] = StageSampling(**d)
        out[stage].validate(1 << 30, f"{where}: {stage}")  # top-k against the vocabulary: checked when sampling
    return out


# ---- writing a pipeline ----------------------------------------------------------------------------

def check_fresh(out: str | Path) -> Path:
    """A release is saved into a folder that does not exist or is empty (a `.lock` nobody holds, left by
    a killed command, counts as empty) and that this user may write; anything else is refused. Returns
    `out` as an absolute path (so that `.` has a name to save beside)."""
    out = Path(os.path.abspath(os.path.expanduser(out)))  # save_pretrained("~/ctf") made a ./~ folder
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; a pipeline is saved into a new or empty folder: choose "
                        "another path")
    if out.is_dir():
        left = [f for f in out.iterdir() if not (f.name == LOCK_FILE and lock_holder(out) is None)]
        if left:
            raise UserError(f"{out} is not empty ({len(left)} entries, e.g. {left[0].name}); a pipeline is saved into "
                            "a fresh folder: choose another or remove it")
    # the release is written beside `out`, then moved in: both must be writable. Root could write either
    # anyway; the mode says the owner may not, and the folder's owner meant it
    for d in (out, out.parent) if out.is_dir() else (next(p for p in out.parents if p.exists()),):
        if not d.stat().st_mode & stat.S_IWUSR:
            raise UserError(f"{d} is read-only (mode {stat.S_IMODE(d.stat().st_mode):o}); `chmod u+w {d}` or "
                            "choose another folder")
    return out


def check_not_training(pipe) -> None:
    """Refuse to save a pipeline whose runs are being trained right now: their weights are those of the
    moment, while their config.json (and so the model card) describes the finished run."""
    for name, src in sorted((getattr(pipe, "sources", None) or {}).items()):
        pid = lock_holder(src)
        if pid is not None:
            raise UserError(f"{src} ({name}) is being trained right now (pid {pid} holds its lock): its weights are "
                            "those of the moment, not of the finished run; export it after the run ends")


def save_pipeline(pipe, out: str | Path) -> Path:
    """Write a pipeline (pipe.parts(): its networks; pipe.sources: the run directories they were loaded
    from, if any, whose configs, training record and scores go along; pipe.defaults(): its sampling
    defaults) as a release folder. A component built from objects is described by its network's config.
    The folder is written beside `out` and moved into place only after it loads back with the pipeline's
    own from_pretrained, so a failed save leaves nothing behind; an existing empty `out` is kept (its
    mode, owner, and any shell inside it) and filled. `out` must not exist or be empty. Returns `out`. A
    file-system failure (no permission, a full disk) is a UserError naming the path."""
    out = check_fresh(out)
    check_not_training(pipe)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a save that crashed
        _write_release(pipe, out.name, tmp)
        if out.exists():
            (out / LOCK_FILE).unlink(missing_ok=True)  # nobody's (check_fresh)
            for f in tmp.iterdir():
                os.replace(f, out / f.name)
            tmp.rmdir()
        else:
            os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot save the pipeline to {out}: {describe_os_error(e)}") from e
        raise
    return out


def _write_release(pipe, name: str, tmp: Path) -> None:
    cls_name = type(pipe).__name__
    fp = codebook_fingerprint(pipe.vq)
    sources = getattr(pipe, "sources", None) or {}
    tok_meta = (read_run_config(sources["tokenizer"], "vq") if "tokenizer" in sources
                else {"vq": to_dict(pipe.vq.cfg)})
    save_run(tmp / "tokenizer", "vq", {**tok_meta, "fingerprint": fp}, pipe.vq)
    metas = {}
    for comp, model in pipe.parts().items():
        src = sources.get(comp)
        if src is not None:
            meta = read_run_config(src, "gpt")
            meta["codes"] = {k: v for k, v in (meta.get("codes") or {}).items() if k not in _LOCAL_CODES_KEYS}
            meta.pop("heldout", None)  # the held-out store a run was evaluated on (resume only)
            meta["scores"] = run_scores(comp, src) or meta.get("scores", [])
            meta.setdefault("exported_from", src.name)
        else:  # built from objects: what the network is, nothing of how it was trained
            meta = {"stage": STAGE_OF[comp], "gpt": to_dict(model.cfg), "scores": [],
                    "restricted": bool(comp == "stage2" and getattr(pipe, "restricted", False)),
                    "exported_from": "objects"}
        meta["tokenizer"] = tokenizer_ref(fp, tmp / "tokenizer", tmp / comp)
        metas[comp] = save_run(tmp / comp, "gpt", meta, model)
    components = {"tokenizer": "tokenizer", **{comp: comp for comp in metas}}
    cmap = getattr(pipe, "cmap", None)
    if cmap is not None:
        cmap.save(tmp / "coarse_map" / "coarse_map.safetensors")
        write_run_config(tmp / "coarse_map", "coarse_map", {"fingerprint": cmap.fingerprint,
                                                           "method": cmap.method, **cmap.stats()})
        components["coarse_map"] = "coarse_map"
    defaults = pipe.defaults()
    write_index(tmp, cls_name, components, defaults)
    atomic_write_bytes(tmp / "README.md", model_card(name, pipe, metas, tok_meta, defaults).encode())
    type(pipe).from_pretrained(tmp)  # what users will do: it must load before it is published


def model_card(name: str, pipe, metas: dict[str, dict], tok_meta: dict, defaults: dict[str, StageSampling]) -> str:
    """README.md of a release folder: what it is, its training data, the scores measured in its runs
    (held-out metrics of summary.json, eval*.json reports), sampling defaults, how to load it."""
    from coarse2fine.models import count_params

    vq, cls_name = pipe.vq.cfg, type(pipe).__name__
    ctf = getattr(pipe, "cmap", None) is not None
    what = {"stage1": "causal transformer: class -> one coarse label per position (KV cache, CFG)",
            "stage2": "full-attention transformer: class + all coarse labels -> all fine codes in one step",
            "baseline": "causal transformer over the fine codes (LlamaGen-style next-token model)"}
    lines = [f"# {name}", "",
             f"A class-conditional image generator ({cls_name}) saved by coarse2fine. "
             f"Tokenizer: VQ with K={vq.codebook_size} codes, {vq.image_size} px images -> {vq.grid}x{vq.grid} codes.",
             ""]
    if ctf:
        lines += [f"Coarse-to-fine token prediction: the {vq.codebook_size} codes are grouped into "
                  f"{pipe.cmap.num_coarse} clusters ({pipe.cmap.method}, coarse_map/).", ""]
        if pipe.restricted:
            what["stage2"] += "; each position scores only the members of its coarse cluster"
    lines += [f"- `{k}/`: {what[k]}, {count_params(m) / 1e6:.2f}M parameters (from run "
              f"`{metas[k].get('exported_from', k)}`)" for k, m in pipe.parts().items()]
    lines += ["- `tokenizer/`: VQ autoencoder (decodes codes to images)", "", "## Training data", "",
              "| component | data set | resolution | steps | global batch |", "|---|---|---|---|---|"]
    td, tt = tok_meta.get("data") or {}, tok_meta.get("train") or {}
    lines.append(f"| tokenizer | {td.get('name', '?')} ({td.get('split', '?')}) | {td.get('resolution', vq.image_size)} px"
                 f" | {tt.get('steps', '?')} | {tt.get('batch_size', '?')} |")
    scores = []
    for k, meta in metas.items():
        c, t = meta.get("codes") or {}, meta.get("train") or {}
        lines.append(f"| {k} | {c.get('dataset', '?')} ({c.get('split', '?')}, {c.get('count', '?')} code sequences)"
                     f" | {vq.image_size} px | {t.get('steps', '?')} | {t.get('batch_size', '?')} |")
        scores += meta.get("scores") or []
    lines += ["", "## Measured scores", ""] + (scores or ["No scores were found in the runs (no summary.json "
                                                         "held-out metrics, no eval*.json report)."])
    lines += ["", "## Sampling defaults", ""]
    lines += [f"- {k}: " + ", ".join(f"{a} {b}" for a, b in asdict(v).items()) for k, v in defaults.items()]
    lines += ["", "## Use", "", "Load it (a local folder needs no network; a Hugging Face repo id is fetched once) "
              "and sample:", "", "```python",
              f"from coarse2fine.pipeline import {cls_name}",
              f'pipe = {cls_name}.from_pretrained("{name}")  # then pipe(torch.tensor([0, 1]), seed=0).images',
              "```", ""]
    return "\n".join(lines)


def run_scores(component: str, run: Path) -> list[str]:
    """Score lines found in a run dir: summary.json (held-out NLL / accuracy) and eval*.json."""
    out = []
    if (run / "summary.json").is_file():
        h = load_json(run / "summary.json").get("heldout") or {}
        if "nll" in h:
            out.append(f"- {component}: held-out NLL {h['nll']:.4f} nats/token, token accuracy {h['acc']:.4f} "
                       f"({h.get('count', '?')} sequences)")
    for rep in sorted(run.glob("eval*.json")):
        nums = {k: v for k, v in load_json(rep).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if nums:
            out.append(f"- {component} ({rep.name}): " + ", ".join(f"{k} {v:.4g}" for k, v in nums.items()))
    return out


def push_folder(folder: Path, repo_id: str, token: str | bool | None = None, private: bool | None = None,
                commit_message: str = "Upload coarse2fine pipeline") -> str:
    """Upload a saved release folder to a Hugging Face model repo (created if missing); returns the
    commit URL. Needs the network and a token with write access."""
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message))
    except hub_errors() as e:
        raise UserError(f"cannot push to the Hugging Face repo {repo_id} ({type(e).__name__}: {_first_line(e)}); "
                        "check the network (and HF_HUB_OFFLINE, HF_ENDPOINT), the repo id and that the token may "
                        "write to it") from e


def hub_errors() -> tuple[type[BaseException], ...]:
    """What the Hub client raises for an offline mode, an unreachable endpoint or a refused request:
    its own HTTP errors, OSError, and its transport library's errors (httpx2, httpx or requests,
    whichever this huggingface_hub uses)."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError

    errs: list[type[BaseException]] = [HfHubHTTPError, OSError, ValueError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errs.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
