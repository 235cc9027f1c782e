"""A self-contained HTML page for scored reconstructions: the metric table and a grid
seen | (blurry |) reconstruction, every image embedded as a base64 PNG thumbnail."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from mindsearch.eval.recon_metrics import LABELS, LOWER_IS_BETTER, METRICS, format_value as _fmt

THUMB = 128
MAX_ROWS = 60

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} p.sub{color:#666;margin:0 0 16px;font-size:13px}
table.m{border-collapse:collapse;margin-bottom:20px;font-size:14px}
table.m th,table.m td{border:1px solid #ccc;padding:4px 10px;text-align:right}
table.m th{background:#eee} table.m td.skip{color:#888;text-align:left;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(VAR,1fr));gap:14px}
.pair{background:#fff;border:1px solid #ddd;padding:6px;border-radius:4px}
.pair .imgs{display:flex;gap:4px} .pair figure{margin:0;text-align:center;font-size:11px;color:#555}
.pair img{width:THUMBpx;height:THUMBpx;image-rendering:auto;display:block}
.pair .cap{font-size:11px;color:#333;margin-top:4px}
"""


def thumbnail_uri(image: np.ndarray, size: int = THUMB) -> str:
    """float (3, H, W) in [0, 1] -> ``data:image/png;base64,...`` at ``size`` px."""
    from PIL import Image

    arr = (np.clip(np.asarray(image, np.float32).transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_page(scores: dict, pairs, *, title: str = "Reconstructions", max_rows: int = MAX_ROWS) -> str:
    """The page as a string. ``scores``: ``image_metrics`` output (``items`` used when present);
    ``pairs``: a ``ReconPairs``."""
    e = html.escape
    head = "".join(f"<th>{e(LABELS[m])} {'&darr;' if m in LOWER_IS_BETTER else '&uarr;'}</th>" for m in METRICS)
    cells = "".join(f"<td>{_fmt(m, scores.get(m))}</td>" for m in METRICS)
    skipped = "".join(f"<tr><td class='skip' colspan='{len(METRICS)}'>{e(m)}: skipped: {e(why)}</td></tr>"
                      for m, why in scores.get("skipped", {}).items())
    items = scores.get("items") or {}
    shown = min(len(pairs), max_rows)
    blurry = getattr(pairs, "blurry", None)
    figs = []
    for i in range(shown):
        cols = [("seen", pairs.truth[i])]
        if blurry is not None:
            cols.append(("blurry", blurry[i]))
        cols.append(("reconstruction", pairs.recons[i]))
        imgs = "".join(f"<figure><img alt='{e(lbl)}' src='{thumbnail_uri(im)}'><figcaption>{e(lbl)}"
                       f"</figcaption></figure>" for lbl, im in cols)
        ident = pairs.names[i] + (f" · image {pairs.image_ids[i]}" if pairs.image_ids[i] is not None
                                  and str(pairs.image_ids[i]) != pairs.names[i] else "")
        per = " · ".join(f"{LABELS[m]} {_fmt(m, float(items[m][i]))}" for m in ("pixcorr", "ssim", "alexnet2")
                         if m in items)
        figs.append(f"<div class='pair'><div class='imgs'>{imgs}</div>"
                    f"<div class='cap'>{e(ident)}{('<br>' + e(per)) if per else ''}</div></div>")
    n_cols = 3 if blurry is not None else 2
    style = _STYLE.replace("VAR", f"{n_cols * (THUMB + 4) + 16}px").replace("THUMB", str(THUMB))
    src = pairs.source if getattr(pairs, "source", None) else {}
    sub = (f"{scores['n']} pairs · paired by {e(str(src.get('pairing', '?')))} · reconstructions "
           f"{e(str(src.get('recons', '?')))} · ground truth {e(str(src.get('truth', '?')))}"
           + (f" · showing the first {shown}" if shown < len(pairs) else ""))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{style}</style></head><body><h1>{e(title)}</h1><p class='sub'>{sub}</p>"
            f"<table class='m'><tr>{head}</tr><tr>{cells}</tr>{skipped}</table>"
            f"<p class='sub'>Two-way identification (AlexNet, Inception, CLIP) over all {scores['n']} "
            f"pairs, chance 50%; EffNet-B1 and SwAV are correlation distances (lower is better); "
            f"MindEye's protocol (docs/interfaces.md, 'Image metrics').</p>"
            f"<div class='grid'>{''.join(figs)}</div></body></html>")


def write_page(path, scores: dict, pairs, **kw) -> None:
    from mindsearch.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(render_page(scores, pairs, **kw), encoding="utf-8")


__all__ = ["render_page", "write_page", "thumbnail_uri"]
