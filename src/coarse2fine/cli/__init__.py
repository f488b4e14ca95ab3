"""The `coarse2fine` command. Each module in this package adds its subcommands via `register`.

Subcommand modules stay thin: parse flags, call the library, print results. User mistakes raise
`coarse2fine.config.UserError` (or FileNotFoundError with a clear message) and become one-line errors.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from coarse2fine.cli._args import Parser, prepare
from coarse2fine.config import UserError
from coarse2fine.fileio import describe_os_error


# `coarse2fine --help` lists the user's commands in the order a run goes through them (the whole demo first,
# then each step, then ImageNet scale), and the developer tools apart, after them.
PIPELINE_ORDER = ("demo", "data", "train-tokenizer", "reconstruct", "extract-codes", "cluster", "redundancy", "train",
                  "eval-tokens", "sample", "train-classifier", "eval", "export", "app", "presets",
                  "import-llamagen", "extract-codes-imagenet", "sample-fid")
DEVELOPER_TOOLS = ("bench",)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="coarse2fine",
        description="Autoregressive image generation with coarse-to-fine token prediction (CTF).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands, in pipeline order")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    _order_help(parser, sub)
    return parser


def _order_help(parser: argparse.ArgumentParser, sub) -> None:
    """The subcommands in PIPELINE_ORDER (then any not placed yet, which tests/unit/test_cli.py refuses),
    and DEVELOPER_TOOLS in a group of their own: a second view of the same subparsers action, for the
    help only; parsing is untouched. The choices named by an "invalid choice" error follow the same order."""
    import copy

    shown = {a.dest: a for a in sub._choices_actions}
    user = [n for n in PIPELINE_ORDER if n in shown] + sorted(set(shown) - set(PIPELINE_ORDER) - set(DEVELOPER_TOOLS))
    order = user + [n for n in DEVELOPER_TOOLS if n in shown]
    parsers = dict(sub.choices)
    sub.choices.clear()
    sub.choices.update({n: parsers[n] for n in order})
    sub._choices_actions = [shown[n] for n in user]
    tools = copy.copy(sub)
    tools._choices_actions = [shown[n] for n in DEVELOPER_TOOLS if n in shown]
    parser.add_argument_group("developer tools (benchmarks)")._group_actions.append(tools)


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command `args` ran: `coarse2fine bench sample`'s, not `coarse2fine`'s."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None))
            if chosen is not None:
                return _innermost(chosen, args)
    return parser


def out_of_memory(e: BaseException) -> bool:
    """Did an allocation fail: a MemoryError (numpy's), torch's CUDA OutOfMemoryError (a RuntimeError), or its
    CPU allocator's RuntimeError ("DefaultCPUAllocator: can't allocate memory")?"""
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(e))


def _memory_reason(e: BaseException) -> str:
    """The allocation that failed, in a few words: numpy's "Unable to allocate 27.9 GiB for an array with shape
    ...", torch's "CUDA out of memory. Tried to allocate 2.00 GiB" (not its paragraph of allocator advice), or
    "can't allocate memory: you tried to allocate N bytes" (not the C++ assertion before it)."""
    text, sentences = (str(e).splitlines() or [type(e).__name__])[0], 2
    if "can't allocate memory" in text:
        text, sentences = text[text.index("can't allocate memory"):], 1
    return ". ".join(text.split(". ")[:sentences]).rstrip(".")[:200]


# commands that pick up where a killed run stopped when the same command line is run again (no flag for it)
RESUMED_BY_RERUN = ("extract-codes", "extract-codes-imagenet", "sample-fid", "demo")


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command can do next: train and train-tokenizer continue with --resume, the commands
    of RESUMED_BY_RERUN by running them again; the others start over (`sample --resume` is no flag at all)."""
    if hasattr(args, "resume"):
        return "; rerun with --resume to continue"
    if args.command in RESUMED_BY_RERUN:
        return "; run the same command again to continue where it stopped"
    return "; nothing was finished: run the command again to start over"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand that does not take them, and its --help (argparse names the top parser)
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        prepare(args)
        rc = args.func(args)
    except UserError as e:
        print(f"coarse2fine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # missing or wrong-kind paths, a full disk, no permission: the user's to fix
        print(f"coarse2fine {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # sizes past this machine's memory (numpy's, torch's CPU and CUDA)
        if not out_of_memory(e):
            raise
        print(f"coarse2fine {args.command}: error: out of memory ({_memory_reason(e)}); lower --batch-size or the "
              "sizes asked for, or free memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coarse2fine {args.command}: interrupted{_after_interrupt(args)}", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
