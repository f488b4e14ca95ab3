"""The demo's scores (FD, KID, class accuracy of the CTF and baseline samples) and its report.md."""
from __future__ import annotations

from typing import Callable

NAMES = {"coarse": "stage 1 (coarse, causal)", "fine": "stage 2 (fine | true coarse, one step)",
         "baseline": "baseline (fine, causal)"}


def evaluate_both(plan, outputs: dict, log: Callable[[str], None] = print) -> dict:
    """Score each SampleOutput in `outputs` ({"ctf": ..., "baseline": ...}) against the test split
    with `coarse2fine.eval.samples.evaluate_images`; the shipped classifier gives class accuracy on
    the embedded data. Returns {name: {"fd", "kid", "kid_std", "class_accuracy", "is_clf", "n", "m",
    "extractor"}, "classifier": {...} | None, "notes": [...]}."""
    from coarse2fine.data.builtin import demo_asset_dir, has_demo_assets
    from coarse2fine.eval.samples import evaluate_images

    clf = demo_asset_dir(plan.data) / "classifier" if has_demo_assets(plan.data, plan.resolution) else None
    res: dict = {"classifier": None, "notes": []}
    for name, o in outputs.items():
        r = evaluate_images(o.images.numpy(), o.labels.numpy(), plan.data, "test", clf, log=log)
        rows = {row["metric"].split("-")[0]: row for row in r["rows"]}
        res[name] = {"fd": rows["FD"]["value"], "kid": rows["KID"]["value"], "kid_std": rows["KID"]["std"],
                     "class_accuracy": rows["ClassAcc"]["value"] if "ClassAcc" in rows else None,
                     "is_clf": rows["IS"]["value"] if "IS" in rows else None,
                     "n": r["num_samples"], "m": r["reference"]["count"], "extractor": r["extractor"],
                     "per_class_accuracy": r["per_class_accuracy"]}
        res["classifier"] = r["classifier"]
        res["notes"] = r["notes"]
    return res


def _score_lines(ev: dict) -> list[str]:
    tag = ev["ctf"]["extractor"]
    lines = [f"| samples | N | FD-{tag} | KID-{tag} | class accuracy | IS-clf |", "|---|---|---|---|---|---|"]
    for name, label in (("ctf", "CTF (stage 1 -> stage 2)"), ("baseline", "baseline")):
        s = ev[name]
        acc = "n/a" if s["class_accuracy"] is None else f"{s['class_accuracy']:.3f}"
        isc = "n/a" if s["is_clf"] is None else f"{s['is_clf']:.2f}"
        lines.append(f"| {label} | {s['n']} | {s['fd']:.1f} | {s['kid']:.4f} ± {s['kid_std']:.4f} | {acc} | {isc} |")
    clf = ev.get("classifier")
    if clf:
        real_is = clf.get("test_inception_score")
        lines.append(f"| real test images (the ceiling) | {clf.get('test_count', '')} | 0 | 0 | "
                     f"{clf['test_accuracy']:.3f} | {real_is:.2f} |" if real_is is not None else
                     f"| real test images (the ceiling) | | 0 | 0 | {clf['test_accuracy']:.3f} | |")
        if clf.get("test_reconstructed_accuracy") is not None:
            lines.append(f"| the same images through the tokenizer | {clf.get('test_count', '')} | | | "
                         f"{clf['test_reconstructed_accuracy']:.3f} | |")
    m = ev["ctf"]["m"]
    lines += ["", f"How to read: FD and KID compare EfficientNet-Lite0 features of the {ev['ctf']['n']} samples "
                  f"with those of the {m} test images (lower is closer to real data; they are not FID and compare "
                  "only runs with the same N and M), and class accuracy is the share of samples that the data "
                  "set's own classifier assigns to the class asked for (higher is better; the last row is what "
                  "the classifier scores on real test images)."]
    if clf and clf.get("test_reconstructed_accuracy") is not None:
        lines += ["", "The classifier was trained on the real training images and on the tokenizer's "
                      "reconstructions of them; the row 'through the tokenizer' is what it scores on the test images "
                      "encoded and decoded, the most a generator of this tokenizer's codes can expect."]
    lines += [f"- note: {n}" for n in ev.get("notes", [])]
    return lines


def _cpu_line(cpu: dict | None) -> list[str]:
    if not cpu:
        return []
    return [f"CPU: {cpu['model']}, {cpu['kind']} (torch kernels {cpu['kernels']}), {cpu['cores']} core(s).", ""]


def render_report(r: dict, classes: list[str]) -> str:
    p, tok, m, t = r["plan"], r["tokenizer"], r["models"], r["times_s"]
    dtype = m["coarse"].get("dtype", r.get("precision"))
    lines = [
        "# coarse2fine demo report", "",
        f"Data `{p['data']}` at {p['resolution']} px, {len(classes)} classes. Tokenizer {tok['source']}; models "
        f"{p['gpt_preset']} ({p['steps']} steps, batch {p['batch_size']}, dropout {p['dropout']}"
        f"{', EMA ' + str(p['ema']) if p.get('ema') else ''}), stage-2 head "
        f"{p.get('head', 'full')}; transformers in {dtype}, {r.get('stage_workers', 1)} training process(es) at "
        f"once; {r.get('threads', '?')} thread(s) for sampling and scoring.", "",
        *_cpu_line(r.get("cpu")),
        "## Samples: CTF and baseline", "",
        *_score_lines(r["evaluation"]), "",
        "![CTF (left) vs baseline (right)](samples_ctf_vs_baseline.png)", "",
        "Rows: " + ", ".join(f"{i} {c}" for i, c in enumerate(classes)) + ". Left block CTF, right block baseline.",
        "",
        "## Tokenizer", "",
        f"- test PSNR {tok['psnr_test_db']:.2f} dB, codebook usage {100 * tok['usage_test']:.1f}% of K={tok['K']}",
        f"- k-means: {r['clusters']['codes']} codes -> {r['clusters']['clusters']} clusters, sizes "
        f"{r['clusters']['min_size']}..{r['clusters']['max_size']} (mean {r['clusters']['mean_size']:.1f})", "",
        "## Models (same backbone, batch and steps)", "",
        "| model | params | final train loss | train acc | held-out NLL | held-out acc | tokens/s | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage, s in m.items():
        h = s.get("heldout", {})
        lines.append(f"| {NAMES[stage]} | {s['params'] / 1e6:.2f}M | {s['loss']:.3f} | {s['acc']:.3f} | "
                     f"{h.get('nll', float('nan')):.3f} | {h.get('acc', float('nan')):.3f} | "
                     f"{s['tokens_per_s']:.0f} | {s.get('wall_s', float('nan')):.0f} s |")
    fine_acc, base_acc = m["fine"].get("heldout", {}).get("acc"), m["baseline"].get("heldout", {}).get("acc")
    lines += ["", f"Held-out fine-token accuracy: stage 2 given the true coarse labels {fine_acc:.3f}; "
                  f"baseline (next-token) {base_acc:.3f}. Accuracies are per token on the test split's codes.", "",
              "## Sampling", ""]
    plan = r.get("plan", {})
    if "temperature" in plan:
        lines += [f"Stage 1 and the baseline at temperature {plan['temperature']}, CFG {plan['cfg_scale']}; "
                  f"stage 2 top-k {plan['fine_top_k']} (`demo --temperature --cfg` change the first two).", ""]
    for name, tm in r["sampling"].items():
        if isinstance(tm, dict):
            tot = sum(tm.values())
            lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in tm.items())
                         + f" -> {r['sampling']['images'] / tot:.1f} images/s (batch {r['sampling']['images']}, CPU)")
    lines += ["", "## Wall time", "", ", ".join(f"{k} {v:.0f} s" for k, v in t.items()), ""]
    return "\n".join(lines)
