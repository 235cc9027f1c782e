"""Tables and an HTML report (inline SVG, no plotting dependency) for the encoder benchmark."""

from __future__ import annotations

import html

ROWS = [
    ("main", "ridge", "ridge (Brain-Diffuser-style, all sessions)"),
    ("main", "encoder", "MindEye-style encoder: BiMixCo→SoftCLIP, projector + prior"),
    ("losses", "loss-clip", "Table 3: CLIP loss only (no prior)"),
    ("losses", "loss-bimixco", "Table 3: BiMixCo only (no prior)"),
    ("losses", "loss-bimixco_softclip", "Table 3: BiMixCo then SoftCLIP (no prior)"),
    ("heads", "heads-backbone", "Table 4: backbone only"),
    ("heads", "loss-bimixco_softclip", "Table 4: + projector"),
    ("heads", "encoder", "Table 4: + projector + prior"),
    ("fewshot", "fewshot-scratch", "few-shot: subject trained from scratch on session 1"),
    ("fewshot", "fewshot-finetune", "few-shot: pretrained on other subjects, fine-tuned on session 1"),
]


def _rows(results):
    """The fixed rows plus few-shot pairs run at another learning rate (``fewshot-*-lrX``)."""
    rows = list(ROWS)
    for name in sorted(results["runs"]):
        if name.startswith("fewshot-") and "-lr" in name:
            kind, lr = name[len("fewshot-"):].split("-lr")
            what = "from scratch" if kind == "scratch" else "pretrained, fine-tuned"
            rows.append(("fewshot", name, f"few-shot at lr {lr}: {what} on session 1"))
    return rows


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def _ceiling(results):
    for r in results["runs"].values():
        c = r["scores"]["betas"].get("ceiling_brain_to_image_top1")
        if c is not None:
            return c, r["scores"]["betas"].get("ceiling_image_to_brain_top1")
    return None, None


def table_rows(results):
    rows = []
    runs = results["runs"]
    for part, name, label in _rows(results):
        if part not in results["parts"] or name not in runs:
            continue
        r = runs[name]
        b, o = r["scores"]["betas"], r["scores"].get("outputs", {})
        rows.append([label, _pct(b["brain_to_image_top1"]) + " ±" + _pct(b["brain_to_image_top1_ci95"]),
                     _pct(b["image_to_brain_top1"]), _pct(o.get("brain_to_image_top1")),
                     _pct(o.get("image_to_brain_top1")), f"{r['wall_s']:.0f}",
                     "-" if r.get("samples_per_s") is None else f"{r['samples_per_s']:.0f}",
                     "-" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:.0f}"])
    c_b2i, c_i2b = _ceiling(results)
    rows.append(["Bayes ceiling (simulator)", _pct(c_b2i), _pct(c_i2b), _pct(c_b2i), _pct(c_i2b), "", "", ""])
    return rows


HEADER = ["model", "b→i top-1 % (betas avg)", "i→b", "b→i (outputs avg)", "i→b", "train s", "samples/s",
          "peak MiB"]


def curve_points(results):
    runs = results["runs"]
    pts = {"ridge": [], "encoder": []}
    sessions = sorted({int(n.rsplit("-", 1)[1]) for n in runs if n.startswith("curve-")})
    for n in sessions:
        for kind in pts:
            r = runs.get(f"curve-{kind}-{n}")
            if r:
                pts[kind].append((n, r["scores"]["betas"]["brain_to_image_top1"]))
    full = {"ridge": runs.get("ridge"), "encoder": runs.get("loss-bimixco_softclip")}
    total = results.get("n_sessions")
    for kind, r in full.items():
        if r and total:
            pts[kind].append((total, r["scores"]["betas"]["brain_to_image_top1"]))
    return pts


REGIME_HEADER = ["sessions", "ridge b→i", "scratch b→i", "i→b", "CSLS b→i", "CSLS i→b",
                 "pretrained + fine-tuned b→i", "i→b", "CSLS b→i", "CSLS i→b", "ceiling b→i"]
REGIME_KINDS = ("ridge", "scratch", "finetune")


def _regime_names(runs) -> list[str]:
    return sorted({n.split("-", 2)[2] for n in runs if n.startswith("regime-ridge-")},
                  key=lambda n: (n == "all", int(n) if n.isdigit() else 0))


def _regime_top1(runs, kind, n, key="brain_to_image_top1", csls=False):
    r = runs.get(f"regime-{kind}-{n}")
    if not r:
        return None
    b = r["scores"]["betas"]
    return (b.get("csls") or {}).get(key) if csls else b.get(key)


def regime_rows(results) -> list[list[str]]:
    """One row per regime (1, 2, 3, 5 sessions, all): top-1 % (betas averaged) of ridge, then of
    the encoder from scratch and pretrained + fine-tuned, each in both directions with CSLS
    beside (never in place of) the protocol's numbers, and the ceiling."""
    runs = results["runs"]
    rows = []
    for n in _regime_names(runs):
        cells = [n, _pct(_regime_top1(runs, "ridge", n))]
        for kind in ("scratch", "finetune"):
            cells += [_pct(_regime_top1(runs, kind, n, key, csls)) for csls in (False, True)
                      for key in ("brain_to_image_top1", "image_to_brain_top1")]
        ceiling = (runs.get(f"regime-ridge-{n}") or {}).get("scores", {}).get("betas", {}).get(
            "ceiling_brain_to_image_top1")
        rows.append(cells + [_pct(ceiling)])
    return rows


def regime_points(results) -> dict:
    """{kind: [(sessions, brain→image top-1)]} for the regimes' plot ("all" at ``n_sessions``)."""
    runs = results["runs"]
    pts = {k: [] for k in REGIME_KINDS}
    for n in _regime_names(runs):
        x = results.get("n_sessions") if n == "all" else int(n)
        for kind in REGIME_KINDS:
            v = _regime_top1(runs, kind, n)
            if x and v is not None:
                pts[kind].append((int(x), v))
    return pts


SEMIREAL_HEADER = ["training images x 3", "model", "b→i", "i→b", "CSLS b→i", "CSLS i→b"]


def semireal_rows(results) -> list[list[str]]:
    """One row per (training-image count, ridge or encoder) of the semi-real case."""
    semis = results.get("semireal_by_images") or ({"700": results["semireal"]} if results.get("semireal") else {})
    rows = []
    for n, semi in semis.items():
        for name in ("ridge", "encoder"):
            if name in semi:
                r = semi[name]
                rows.append([str(semi.get("n_train_images", n)), name, _pct(r["brain_to_image_top1"]),
                             _pct(r["image_to_brain_top1"]), _pct(r["csls"]["brain_to_image_top1"]),
                             _pct(r["csls"]["image_to_brain_top1"])])
    return rows


def _fmt_rows(header, rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def render_table(results) -> str:
    rows = table_rows(results)
    widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(HEADER), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    pts = curve_points(results)
    if any(pts.values()):
        lines.append("")
        lines.append("learning curve (brain→image top-1 %, betas averaged) by training sessions:")
        for kind, p in pts.items():
            lines.append(f"  {kind:8s} " + "  ".join(f"{n}: {_pct(v)}" for n, v in p))
        c, _ = _ceiling(results)
        lines.append(f"  ceiling  {_pct(c)}")
    regimes = regime_rows(results)
    if regimes:
        lines += ["", "regimes (top-1 % in 300 x 30, betas averaged; CSLS reported beside the protocol):"]
        lines += _fmt_rows(REGIME_HEADER, regimes)
    semis = semireal_rows(results)
    if semis:
        lines += ["", "semi-real (MiniLM caption embeddings, simulated voxels with real ncsnr; top-1 % in 300 x 30):"]
        lines += _fmt_rows(SEMIREAL_HEADER, semis)
    return "\n".join(lines)


COLOURS = {"ridge": "#d62728", "encoder": "#1f77b4", "scratch": "#1f77b4", "finetune": "#2ca02c"}
LABELS = {"finetune": "pretrained + fine-tuned", "scratch": "from scratch"}


def _svg_curve(results, width=560, height=320, pts=None) -> str:
    pts = curve_points(results) if pts is None else pts
    c, _ = _ceiling(results)
    xs = sorted({n for p in pts.values() for n, _ in p})
    if not xs:
        return ""
    import math

    left, right, top, bottom = 56, 20, 20, 44
    lx = lambda n: left + (math.log(n) - math.log(xs[0])) / max(math.log(xs[-1]) - math.log(xs[0]), 1e-9) * (width - left - right)  # noqa: E731
    ly = lambda v: top + (1 - v) * (height - top - bottom)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{ly(v)}" y2="{ly(v)}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{ly(v) + 4}" text-anchor="end">{int(v * 100)}%</text>')
    for n in xs:
        out.append(f'<text x="{lx(n)}" y="{height - bottom + 18}" text-anchor="middle">{n}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">training sessions (750 trials each, log scale)</text>')
    if c is not None:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{ly(c)}" y2="{ly(c)}" stroke="#444" stroke-dasharray="6,4"/>')
        out.append(f'<text x="{width - right}" y="{ly(c) - 6}" text-anchor="end">Bayes ceiling {_pct(c)}%</text>')
    colours = COLOURS
    for kind, p in pts.items():
        if not p:
            continue
        path = " ".join(f"{lx(n):.1f},{ly(v):.1f}" for n, v in p)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colours[kind]}" stroke-width="2"/>')
        for n, v in p:
            out.append(f'<circle cx="{lx(n):.1f}" cy="{ly(v):.1f}" r="3.5" fill="{colours[kind]}"/>')
        n, v = p[-1]
        out.append(f'<text x="{lx(n) - 6:.1f}" y="{ly(v) - 8:.1f}" text-anchor="end" fill="{colours[kind]}">'
                   f'{LABELS.get(kind, kind)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _curve_html(results) -> str:
    svg = _svg_curve(results)
    return f"<h2>Learning curve</h2>\n{svg}" if svg else ""


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _regime_html(results) -> str:
    rows = regime_rows(results)
    if not rows:
        return ""
    preset = html.escape(str(results.get("regime_preset", "cpu")))
    plot = _svg_curve(results, pts=regime_points(results))
    return (f"<h2>Regimes</h2><p class=\"note\">Encoders: preset {preset}; pretrained on the other subjects, "
            f"then fine-tuned on the sessions of the row. CSLS: hubness-corrected, reference bank = "
            f"training-split embeddings. Brain→image top-1 %, betas averaged.</p>"
            f"{_html_table(REGIME_HEADER, rows)}\n{plot}")


def _semireal_html(results) -> str:
    rows = semireal_rows(results)
    if not rows:
        return ""
    return ("<h2>Semi-real case</h2><p class=\"note\">MiniLM caption embeddings of the shared 1,000 images seen "
            "by simulated voxels with NSD's real ncsnr; 300 test images, repetitions averaged.</p>"
            + _html_table(SEMIREAL_HEADER, rows))


def render_html(results) -> str:
    machine = results.get("machine", {})
    load = lambda v: "?" if not v else "/".join(f"{x:.1f}" for x in v)  # noqa: E731
    pool = next((min(300, r["scores"]["betas"].get("n") or 300) for r in results["runs"].values()), 300)
    main = set(results.get("parts") or []) & {"main", "losses", "heads", "curve", "fewshot"}
    main_preset = f", preset {html.escape(str(results.get('preset')))}" if main else ""
    jobs, threads = results.get("jobs"), results.get("threads")
    how = f"Runs trained {jobs} at a time, {threads} thread(s) each." if jobs else ""
    if any(r.get("note") for r in results["runs"].values()):
        how += " Some runs were measured beforehand and reused (their records say so, with their own wall times)."
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>mindsearch encoder benchmark</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:1100px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
th{{background:#f4f4f4}} .note{{color:#555}}</style></head><body>
<h1>Encoder benchmark</h1>
<p class="note">Dataset {html.escape(str(results.get('data')))}, subject {results.get('subject')}{main_preset}. Top-1 among {pool} test images over 30 loops (seed 42); b→i = brain→image
(the search direction), i→b = image→brain (MindEye code's "fwd"). ± is the 95% interval over loops.
Machine: {machine.get('cpus')} CPUs, load average (1/5/15 min) {load(machine.get('load_before'))} before,
{load(machine.get('load_after'))} after. {how}</p>
{_html_table(HEADER, table_rows(results))}
{_curve_html(results)}
{_regime_html(results)}
{_semireal_html(results)}
</body></html>
"""
