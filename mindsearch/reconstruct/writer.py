"""Writing a reconstruction: one PNG per stage per trial, a manifest, the HTML page.

Layout of OUT (every path in the manifest is relative to OUT)::

    manifest.json            settings, ranking, every candidate's score, the chosen path
    index.html               seen | blurry | reconstruction | top retrieved (``page.write_page``)
    chosen/<stem>.png        the reconstruction (pairs by stem with truth/ for ``eval recon``)
    truth/<stem>.png         the seen image, when the data has images
    blurry/<stem>.png        the low-level stage
    candidates/<stem>/NN.png every candidate, in the manifest's order
    retrieved/<stem>.png     the top retrieved image, with an index

The caller writes into a temporary directory renamed onto OUT at the end (``io.atomic_path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError

FORMAT = "mindsearch-reconstruction/1"
MANIFEST = "manifest.json"


def save_png(path: Path, image: np.ndarray) -> str:
    from PIL import Image

    from mindsearch.reconstruct.ranking import to_uint8

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path, format="PNG")
    return path


def check_out_dir(out: Path) -> None:
    """OUT may be new, empty, or a previous reconstruction (replaced); anything else is refused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MindsearchError("exists and is not a directory", out)
    if out.is_dir() and any(out.iterdir()):
        import json

        try:
            fmt = json.loads((out / MANIFEST).read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt != FORMAT:
            raise MindsearchError("exists, is not empty and is not a previous reconstruction; choose another --out",
                                  out)


def write_trial(tmp: Path, tr, row: dict, truth: np.ndarray | None) -> dict:
    """PNGs for one ``TrialReconstruction``; returns its manifest record."""
    stem = row["stem"]
    rec = dict(row)
    rec["seed"] = tr.seed
    rec["init"] = tr.init
    if truth is not None:
        rec["truth"] = str(save_png(tmp / "truth" / f"{stem}.png", truth).relative_to(tmp))
    if tr.blurry is not None:
        rec["blurry"] = str(save_png(tmp / "blurry" / f"{stem}.png", tr.blurry).relative_to(tmp))
    cands = []
    for k, c in enumerate(tr.candidates):
        path = save_png(tmp / "candidates" / stem / f"{k:02d}.png", c.image)
        cands.append({"path": str(path.relative_to(tmp)), **c.record()})
    rec["candidates"] = cands
    rec["chosen_index"] = tr.chosen
    rec["chosen"] = str(save_png(tmp / "chosen" / f"{stem}.png", tr.image).relative_to(tmp))
    rec["retrieved"] = [{"rank": h.rank, "id": h.id, "score": h.score, "key": h.path} for h in tr.retrieved]
    if tr.top_retrieved is not None:
        rec["top_retrieved"] = str(save_png(tmp / "retrieved" / f"{stem}.png", tr.top_retrieved).relative_to(tmp))
    return rec
