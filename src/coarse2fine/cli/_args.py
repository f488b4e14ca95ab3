"""Shared flag vocabulary of the `coarse2fine` command (docs/cli.md): typed number converters, and one
definition each of --device, --threads, --dtype and the data flags, so that every subcommand spells and
checks a concept the same way.

Converters raise argparse.ArgumentTypeError, so argparse's one-line error names the flag:
    coarse2fine sample: error: argument --batch-size: must be an integer >= 1, got '0'
"""
from __future__ import annotations

import argparse
import math
import os


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `coarse2fine CMD: error: MESSAGE; see coarse2fine CMD --help`.

    The stock parser prints the whole usage block first, which for the larger subcommands is a dozen
    lines above the one that matters. Subparsers inherit the class (add_subparsers uses type(self)).
    Prefixes of long flags are not accepted: with them, a retired name such as --batch would still
    parse as --batch-size, and a future flag could silently change what an abbreviation means.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that states each flag's default once: "(default: X)" is added only to a help text that
    does not already say its default, and never for flags without one (None, False), where argparse's
    ArgumentDefaultsHelpFormatter would print "(default: None)" or a second "(default ...)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS)
                or action.option_strings == [] or action.nargs == 0):
            return text
        return text + " (default: %(default)s)"


def _number(kind, s: str, ok, want: str):
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {want}, got {s!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"must be {want}, got {s!r}")
    return v


def positive_int(s: str) -> int:
    return _number(int, s, lambda v: v >= 1, "an integer >= 1")


def nonneg_int(s: str) -> int:
    return _number(int, s, lambda v: v >= 0, "an integer >= 0")


SEED_LIMIT = 2 ** 63  # torch and numpy generators take seeds below it (offsets per batch stay in range)


def seed_int(s: str) -> int:
    return _number(int, s, lambda v: 0 <= v < SEED_LIMIT, f"an integer from 0 to {SEED_LIMIT - 1}")


def kmeans_seed(s: str) -> int:
    """--seed of the commands that cluster (cluster, redundancy, demo): scikit-learn's k-means takes no larger."""
    from coarse2fine.tokenizer.clustering import KMEANS_SEED_LIMIT

    return _number(int, s, lambda v: 0 <= v < KMEANS_SEED_LIMIT, f"an integer from 0 to {KMEANS_SEED_LIMIT - 1}")


def finite_float(s: str) -> float:
    return _number(float, s, math.isfinite, "a finite number")


def positive_float(s: str) -> float:
    return _number(float, s, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def nonneg_float(s: str) -> float:
    return _number(float, s, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def probability(s: str) -> float:
    """In (0, 1]: top-p, fractions."""
    return _number(float, s, lambda v: 0 < v <= 1, "a number in (0, 1]")


def unit_interval_open(s: str) -> float:
    """In [0, 1): decay rates (EMA)."""
    return _number(float, s, lambda v: 0 <= v < 1, "a number in [0, 1)")


def cfg_interval(s: str) -> int:
    """-1 (every token) or a token count >= 0."""
    return _number(int, s, lambda v: v >= -1, "-1 (every token) or an integer >= 0")


# ---- shared flags ---------------------------------------------------------------------------------

DTYPES = ("auto", "fp32", "bf16")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: $OMP_NUM_THREADS, else the usable cores, at most 8)")


def add_dtype(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """--dtype; default None means "not given" (a resumed run keeps its own), shown as auto."""
    p.add_argument("--dtype", choices=DTYPES, default=default,
                   help=f"{what}: auto (bf16 where it is native and measured faster than fp32), fp32 or bf16 "
                        f"(default {default or 'auto'})")


def add_compile(p: argparse.ArgumentParser, what: str) -> None:
    """--compile [MODE]: torch.compile the AR decode step; the flag alone is mode "default", absent is eager."""
    from coarse2fine.config import COMPILE_MODES

    p.add_argument("--compile", nargs="?", const="default", default="", metavar="MODE", choices=["", *COMPILE_MODES],
                   help=f"torch.compile the decode step ({', '.join(COMPILE_MODES)}; the flag alone: default; "
                        f"off when not given){what}")


def add_data(p: argparse.ArgumentParser, default: str | None = "default", required: bool = False) -> None:
    """--data NAME and --data-root PATH, the spelling of every subcommand that reads a data set."""
    p.add_argument("--data", default=default, required=required,
                   help="data set name: default (the embedded Fashion-MNIST subset), fashion-mnist, folder, ...; "
                        "see `coarse2fine data list`" + ("" if required else f" (default {default or 'default'})"))
    p.add_argument("--val-fraction", type=unit_interval_open, default=None,
                   help="plain image folders (no train/ val/ sub-folders): the fraction of each class set aside, "
                        "seeded, as the held-out split 'val'/'test' (default 0.05); every command given the same "
                        "value reads the same split")
    p.add_argument("--data-root", default=None,
                   help="where a file-backed data set lives: the image folder ROOT for 'folder', the IDX "
                        "directory for 'fashion-mnist'")


def default_device() -> str:
    """The one device default of every subcommand: CUDA when torch sees it, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None) -> str:
    """--device value -> a checked device string; one-line errors for typos and absent CUDA or MPS."""
    from coarse2fine.distributed import check_device

    if name is None:
        return default_device()
    check_device(name, "--device")
    return name


def prepare(args: argparse.Namespace) -> None:
    """Applied by cli.main before every subcommand: `~` in paths, the device default and the thread policy."""
    for name, value in vars(args).items():  # --out=~/runs/x: the shell expands ~ at a word's start, not after =
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
    if hasattr(args, "device"):
        args.device = resolve_device(args.device)
    if hasattr(args, "threads"):
        from coarse2fine.distributed import configure_threads

        configure_threads(args.threads)


def reject_unused(args: argparse.Namespace, flags: list[str], why: str) -> None:
    """One-line error when any of `flags` (default None = not given) was given: `why` says which mode
    ignores it and how to drop it. Flags with a real default would be indistinguishable from
    'not given', so every flag checked here must default to None."""
    from coarse2fine.config import UserError

    for flag in flags:
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None:
            raise UserError(f"{flag} {why}")


def check_out_path(path, flag: str = "--out", kind: str = "dir", suffix: str | None = None) -> None:
    """Refuse, before any work, an output path of the wrong kind: an existing file where a directory
    is meant (kind="dir"), or an existing directory where a file is meant (kind="file"); a file that
    makes a folder a run, an export or a code store (its config.json, model.safetensors, ...); and a file
    named for another format than the `suffix` it is written in (a PNG written as recon.jpg), or named
    without one (a PNG written as `recon`, which no viewer or file dialog takes for an image)."""
    from pathlib import Path

    from coarse2fine.config import UserError

    p = Path(path)
    if kind == "dir" and p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is an existing file; give a directory path")
    if kind == "file" and p.is_dir():
        raise UserError(f"{flag} {p} is a directory; give a file path")
    if kind == "file" and p.is_file():
        from coarse2fine.checkpoint import FOLDER_MARKS

        if p.name in FOLDER_MARKS:  # `bench --json R/config.json` wrote its records over the run's own config
            raise UserError(f"{flag} {p} is the {p.name} of a run, an export or a code store ({p.parent}), which "
                            "the output would replace; name another file")
    if kind == "file" and suffix and not p.name.lower().endswith(suffix):
        fmt = suffix.lstrip(".").upper()
        if p.suffix:
            raise UserError(f"{flag} {p} names a {p.suffix} file, but a {fmt} is written; "
                            f"name it {p.with_suffix(suffix)}")
        raise UserError(f"{flag} {p} has no file extension, but a {fmt} is written; "
                        f"name it {p.with_name(p.name.rstrip('.') + suffix)}")
