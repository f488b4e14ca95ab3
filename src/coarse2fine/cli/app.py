"""`coarse2fine app`: the interactive page (needs the [app] extra: Gradio)."""
from __future__ import annotations

import errno
import importlib.util
import socket

from coarse2fine.cli._args import add_device, add_threads
from coarse2fine.config import UserError


def register(sub) -> None:
    p = sub.add_parser("app", help="an interactive page: pick a class, see the coarse map, then the image; "
                                   "redraw the details only (needs pip install -e '.[app]')")
    p.add_argument("--demo", help="the demo's output folder, used when no runs are given (default runs/demo, "
                                  "else runs/demo_emoji64 when only the colour demo has run)")
    p.add_argument("--coarse", help="stage-1 run directory")
    p.add_argument("--fine", help="stage-2 run directory")
    p.add_argument("--baseline", help="optional baseline run directory, shown beside CTF for the same class/seed")
    p.add_argument("--pipeline", help="an exported pipeline folder (CTFPipeline.from_pretrained)")
    add_device(p)
    add_threads(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on, 1..65535 (default 7860)")
    p.set_defaults(func=cmd_app)


def default_demo_dir() -> str:
    """runs/demo (the README's demo); runs/demo_emoji64 (`demo --data emoji64`) when only that one exists."""
    from pathlib import Path

    from coarse2fine.apps.demo import default_out

    grey, colour = default_out(), default_out("emoji64")
    return colour if not Path(grey).exists() and Path(colour).exists() else grey


def check_port(host: str, port: int) -> None:
    """Refuse, before anything is loaded or printed, a port this machine cannot serve on: in use, or
    a --host that is not one of its addresses. (Gradio's own message names GRADIO_SERVER_PORT.)"""
    if not 0 < port < 65536:
        raise UserError(f"--port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address of this machine ({e.strerror}); use e.g. 127.0.0.1") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: a closing socket is no clash
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port}: {host}:{port} is already in use (another `coarse2fine app` or "
                                f"program); pass another --port, e.g. --port {port + 1 if port < 65535 else 7860}") from None
            raise UserError(f"--host {host} --port {port} cannot be served here ({e.strerror}); use --host 127.0.0.1 "
                            "or another --port") from None


def cmd_app(args) -> int:
    # checked first: loading the models takes seconds, a busy port or a missing extra should not wait for them
    check_port(args.host, args.port)
    if importlib.util.find_spec("gradio") is None:
        raise UserError("the page needs Gradio: pip install -e '.[app]'")
    from coarse2fine.apps.app import Explorer
    from coarse2fine.apps.app_page import serve

    if args.pipeline:
        if args.coarse or args.fine or args.baseline:
            raise UserError("pass either --pipeline or --coarse/--fine[/--baseline], not both")
        ex = Explorer.from_pretrained(args.pipeline, args.device)
    elif args.coarse or args.fine:
        if not (args.coarse and args.fine):
            raise UserError("pass both --coarse and --fine (stage-1 and stage-2 runs)")
        ex = Explorer.from_runs(args.coarse, args.fine, args.baseline, args.device)
    else:
        if args.baseline:
            raise UserError("--baseline goes with --coarse/--fine")
        ex = Explorer.from_demo(args.demo or default_demo_dir(), args.device)
    print(f"coarse2fine app: {len(ex.class_names)} classes, baseline {'on' if ex.baseline else 'off'}; "
          f"open http://{args.host}:{args.port}", flush=True)
    try:
        serve(ex, args.host, args.port)
    except OSError as e:  # taken since check_port (Gradio's text names GRADIO_SERVER_PORT, not our flag)
        if "port" not in str(e).lower():
            raise
        raise UserError(f"--port {args.port}: {args.host}:{args.port} is already in use; pass another --port") from None
    return 0
