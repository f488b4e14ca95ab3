"""The Gradio layout over apps.app.Explorer: controls, two buttons, one HTML block of results.

Results are inline PNG data URLs in plain HTML, so what the browser shows is exactly the bytes the
Explorer produced (the browser test compares them across a redraw) and no file cache is involved.
"""
from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

from coarse2fine.apps.app import FINE_DECODINGS, MAX_IMAGES, Explorer, Knobs, Result
from coarse2fine.config import UserError

SHOW_PX = 96  # images are tiny (32 px); shown enlarged with pixelated scaling
CSS = f"""
.c2f-table th {{ font-size: 12px; font-weight: normal; text-align: right; max-width: 90px; padding-right: 6px; }}
.c2f-table td {{ padding: 2px; }}
.c2f-table img {{ width: {SHOW_PX}px; height: {SHOW_PX}px; image-rendering: pixelated; display: block; }}
"""


def png_data_url(img: np.ndarray) -> str:
    """uint8 [H, W, 3] -> 'data:image/png;base64,...'."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render(res: Result) -> str:
    """A table: one column per image; rows coarse map, CTF image, baseline image (with a baseline run)."""
    rows = [("coarse map (stage 1)", "c2f-coarse", res.coarse_images), ("image (stage 2 + decode)", "c2f-image", res.images)]
    if res.baseline is not None:
        rows.append(("baseline, same class and seed", "c2f-baseline", res.baseline))
    body = "".join(
        f'<tr><th>{html.escape(title)}</th>'
        + "".join(f'<td><img class="{cls}" alt="{cls} {i}" src="{png_data_url(img)}"></td>' for i, img in enumerate(imgs))
        + "</tr>" for title, cls, imgs in rows)
    return f'<table class="c2f-table">{body}</table>'


def describe(res: Result) -> str:
    t = res.timings
    what = f"{len(res.images)} x {res.knobs.class_name}, seed {res.knobs.seed}"
    if res.redraws:
        what += f", details redrawn {res.redraws}x (coarse maps kept)"
    times = ", ".join(f"{k.removesuffix('_s').replace('stage', 'stage ')} {v:.2f} s" for k, v in t.items())
    return f"{what}. Times: {times}."


def build(ex: Explorer):
    """-> gr.Blocks. Gradio is imported here so the library never needs it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls home
    import gradio as gr

    def run(fn, *args, progress):
        try:
            res = fn(*args, progress=lambda f, d: progress(f, desc=d))
        except UserError as e:
            return gr.update(), gr.update(), f"**Error:** {html.escape(str(e))}"
        return res, render(res), describe(res)

    def knobs(name, n, seed, cfg, t1, k1, p1, t2, k2, dec, tb) -> Knobs:
        return Knobs(name, n, seed, cfg, t1, k1, p1, t2, k2, dec, tb)

    def on_generate(*vals, progress=gr.Progress()):
        return run(ex.generate, knobs(*vals), progress=progress)

    def on_redraw(prev, t2, k2, dec, progress=gr.Progress()):
        if prev is None:
            return gr.update(), gr.update(), "**Error:** press Generate first; Redraw details keeps its coarse maps"
        return run(ex.redraw, prev, Knobs(temperature2=t2, top_k2=k2, decoding=dec), progress=progress)

    d = ex.default_knobs()  # the defaults shown: the pipeline's (an export's sampling_defaults)
    with gr.Blocks(title="coarse2fine: coarse map, then details") as page:
        gr.Markdown("## coarse2fine: coarse-to-fine generation\nStage 1 writes a **coarse map** (one cluster "
                    "per token, shown in the cluster's mean colour); stage 2 fills in the **details** in one step. "
                    "*Redraw details* re-runs stage 2 only, on the same coarse maps.")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                cls = gr.Dropdown(ex.class_names, value=ex.class_names[0], label="class", elem_id="c2f-class")
                with gr.Row():
                    n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of images", elem_id="c2f-n")
                    seed = gr.Number(0, label="seed", precision=0, elem_id="c2f-seed", min_width=80)
                gr.Markdown("**Stage 1 (coarse map)**; the baseline uses its cfg and filters too")
                with gr.Row():
                    cfg = gr.Number(d.cfg, label="cfg scale (1 = off)", elem_id="c2f-cfg", min_width=80)
                    t1 = gr.Number(d.temperature1, label="temperature", elem_id="c2f-t1", min_width=80)
                    k1 = gr.Number(d.top_k1, label="top-k (0 = all)", precision=0, elem_id="c2f-k1", min_width=80)
                    p1 = gr.Number(d.top_p1, label="top-p (1 = off)", elem_id="c2f-p1", min_width=80)
                    tb = gr.Number(d.temperature_baseline, label="baseline temperature", elem_id="c2f-tb",
                                   min_width=80)
                gr.Markdown("**Stage 2 (details)**")
                with gr.Row():
                    t2 = gr.Number(d.temperature2, label="temperature", elem_id="c2f-t2", min_width=80)
                    k2 = gr.Number(d.top_k2, label="top-k (0 = all)", precision=0, elem_id="c2f-k2", min_width=80)
                    dec = gr.Dropdown(list(FINE_DECODINGS), value=FINE_DECODINGS[0], label="decoding",
                                      elem_id="c2f-dec", min_width=120)
                with gr.Row():
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="c2f-generate")
                    redraw_btn = gr.Button("Redraw details", elem_id="c2f-redraw")
            with gr.Column(scale=3):
                status = gr.Markdown("Pick a class and press Generate.", elem_id="c2f-status")
                out = gr.HTML(elem_id="c2f-results")
        state = gr.State(None)
        gen_btn.click(on_generate, [cls, n, seed, cfg, t1, k1, p1, t2, k2, dec, tb], [state, out, status])
        redraw_btn.click(on_redraw, [state, t2, k2, dec], [state, out, status])
    return page


def serve(ex: Explorer, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Blocks until interrupted."""
    page = build(ex)
    page.queue(default_concurrency_limit=1)  # one model: requests take turns
    page.launch(server_name=host, server_port=port, css=CSS, footer_links=[], quiet=False)
