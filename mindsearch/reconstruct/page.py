"""The reconstruction page: OUT/index.html, one row per trial (seen | blurry | reconstruction | top
retrieved) above the settings, the ranking and, when given, a metric table.

Images are linked relative to OUT, so the page works wherever OUT is copied. ``render_png`` takes a
screenshot with headless Chromium (Debian's ``chromium``) to look at it as a person would.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

from mindsearch.errors import MindsearchError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
COLUMNS = (("truth", "seen"), ("blurry", "blurry"), ("chosen", "reconstruction"), ("top_retrieved", "top retrieved"))

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} .sub{color:#666;font-size:13px;margin-bottom:16px}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px;margin:8px 0;font-size:13px}
table.grid{border-collapse:collapse} table.grid td,table.grid th{padding:4px 6px;text-align:center;font-size:12px}
table.grid th{position:sticky;top:0;background:#fafafa}
table.grid img{width:128px;height:128px;object-fit:contain;image-rendering:auto;background:#eee;display:block}
td.label{text-align:left;color:#444;font-family:monospace;font-size:11px;max-width:140px}
table.kv{border-collapse:collapse;font-size:12px;margin-top:8px} table.kv td{padding:2px 8px;border-bottom:1px solid #ddd}
table.kv td:first-child{color:#666}
table.grid td.cands img{width:40px;height:40px;display:inline-block;margin:1px;border:2px solid transparent;background:#eee}
table.grid td.cands img.kept{border-color:#d33} td.cands{max-width:230px;text-align:left}
.missing{width:128px;height:128px;display:flex;align-items:center;justify-content:center;color:#aaa;background:#eee}
"""


def _cell(rec: dict, key: str) -> str:
    path = rec.get(key)
    if not path:
        return '<td><div class="missing">-</div></td>'
    return f'<td><img src="{html.escape(path)}" alt="{html.escape(key)}"></td>'


def _kv(rows) -> str:
    return '<table class="kv">' + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def render_html(manifest: dict, metrics: dict | None = None, max_rows: int | None = 200) -> str:
    trials = manifest.get("trials", [])
    shown = trials if max_rows is None else trials[:max_rows]
    cols = [c for c in COLUMNS if any(t.get(c[0]) for t in trials)]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in cols) + "<th>candidates (kept: red)</th>"
    body = []
    for t in shown:
        label = t["stem"] + (f"<br>image {t['image_id']}" if t.get("image_id") is not None else "")
        chosen = t["candidates"][t["chosen_index"]] if t.get("candidates") else {}
        label += f"<br>kept #{t.get('chosen_index')} of {len(t.get('candidates', []))}"
        if chosen.get("score") is not None:
            label += f"<br>score {chosen['score']:.3f} ({html.escape(chosen.get('source', ''))})"
        strip = "".join(
            f'<img src="{html.escape(c["path"])}" class="{"kept" if k == t.get("chosen_index") else ""}" '
            f'title="#{k} {html.escape(c.get("source", ""))} score {_fmt(c.get("score"))}">'
            for k, c in enumerate(t.get("candidates", [])))
        body.append(f'<tr><td class="label">{label}</td>' + "".join(_cell(t, k) for k, _ in cols)
                    + f'<td class="cands">{strip}</td></tr>')
    warn = ""
    if manifest.get("random_components"):
        warn += ('<div class="warn">RANDOM tiny diffusion components (--vd random-tiny): the '
                 'reconstructions show the pipeline running, not what a trained model would draw.</div>')
    ranking = manifest.get("ranking") or {}
    if ranking.get("reason"):
        warn += f'<div class="warn">best-of-N used a substitute ranking ({html.escape(ranking["name"])}): ' \
                f'{html.escape(ranking["reason"])}</div>'
    s = manifest.get("settings", {})
    summ = manifest.get("summary", {})
    settings_rows = [("run", manifest.get("run")), ("space", (manifest.get("space") or {}).get("name")),
                     ("source", manifest.get("source")), ("trials", manifest.get("trials_selected")),
                     ("mode", s.get("mode")), ("init", s.get("init")), ("samples", s.get("samples")),
                     ("steps", s.get("steps")), ("strength", s.get("strength")), ("guidance", s.get("guidance")),
                     ("seed", s.get("seed")), ("conditioning", manifest.get("conditioning")),
                     ("diffusion", manifest.get("components")), ("low-level VAE", manifest.get("lowlevel_vae")),
                     ("index", manifest.get("index")),
                     ("ranking", f"{ranking.get('name')}: {ranking.get('description')}"),
                     ("time", f"{_fmt(summ.get('seconds'))} s, {_fmt(summ.get('images_per_second'))} images/s, "
                              f"peak {_fmt(summ.get('peak_rss_mib'))} MiB")]
    metric_html = ""
    if metrics:
        keys = [k for k in metrics if k not in ("skipped",)]
        metric_html = "<h2 style='font-size:16px'>Image metrics</h2>" + _kv((k, _fmt(metrics[k])) for k in keys)
    more = "" if len(shown) == len(trials) else f"<p>{len(trials) - len(shown)} more trial(s) in manifest.json</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mindsearch reconstruction</title><style>{CSS}</style></head>
<body><h1>Reconstructions: {html.escape(Path(str(manifest.get('run', ''))).name)}, subject {manifest.get('subject')}</h1>
<div class="sub">{len(trials)} trial(s); best of {len(trials[0].get('candidates', [])) if trials else 0} candidate(s) by {html.escape(str(ranking.get('name')))}</div>
{warn}
<table class="grid"><tr><th></th>{head}</tr>
{''.join(body)}
</table>{more}
{metric_html}
<h2 style="font-size:16px">Settings</h2>{_kv(settings_rows)}
</body></html>
"""


def write_page(out_dir, manifest: dict, metrics: dict | None = None) -> Path:
    from mindsearch.io import atomic_path

    path = Path(out_dir) / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(render_html(manifest, metrics))
    return path


def find_browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def render_png(html_path, png_path, *, width: int = 1000, height: int = 1200, timeout: float = 60) -> Path:
    """Screenshot ``html_path`` with headless Chromium."""
    browser = find_browser()
    if browser is None:
        raise MindsearchError("no Chromium found to render the page (apt-get install chromium)")
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--allow-file-access-from-files", f"--window-size={width},{height}",
           f"--screenshot={png_path}", html_path.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png_path.is_file():
        raise MindsearchError(f"Chromium wrote no screenshot ({proc.stderr.strip().splitlines()[-1:]})", html_path)
    return png_path
