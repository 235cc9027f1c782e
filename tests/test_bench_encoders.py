"""The encoder benchmark's plan and report (the runs themselves are benchmarks, not tests)."""

from pathlib import Path

from benchmarks.bench_encoders import plan
from mindsearch.eval.encoder_report import curve_points, render_html, render_table


def test_plan_covers_every_part_once():
    jobs = plan(Path("/d"), Path("/w"), 1, [2, 5, 7], 16, ["main", "losses", "heads", "curve", "fewshot"], "light", None)
    names = [j["name"] for j in jobs]
    assert len(names) == len(set(names))
    assert {"ridge", "encoder", "loss-clip", "loss-bimixco", "loss-bimixco_softclip", "heads-backbone",
            "curve-ridge-1", "curve-encoder-10", "fewshot-pretrain", "fewshot-finetune",
            "fewshot-scratch"} <= set(names)
    pre = next(j for j in jobs if j["name"] == "fewshot-pretrain")["args"]
    assert "--pretrain" in pre and pre[pre.index("--subjects") + 1] == "2,5,7"
    fine = next(j for j in jobs if j["name"] == "fewshot-finetune")
    assert fine["after"] == "fewshot-pretrain" and fine["args"][fine["args"].index("--sessions") + 1] == "1"
    # fewer sessions train for more epochs (up to 4x), so small sets are not merely under-trained
    c1 = next(j for j in jobs if j["name"] == "curve-encoder-1")["args"]
    assert c1[c1.index("--epochs") + 1] == "40"


def test_report_puts_the_ceiling_and_curve_in():
    def scores(b2i):
        return {"betas": {"brain_to_image_top1": b2i, "image_to_brain_top1": b2i, "brain_to_image_top1_ci95": 0.01,
                          "image_to_brain_top1_ci95": 0.01, "ceiling_brain_to_image_top1": 0.99,
                          "ceiling_image_to_brain_top1": 0.98, "n": 1000}}

    runs = {"ridge": {"wall_s": 3, "scores": scores(0.18)}, "loss-bimixco_softclip": {"wall_s": 9, "scores": scores(0.4)},
            "curve-ridge-1": {"wall_s": 1, "scores": scores(0.05)}, "curve-encoder-1": {"wall_s": 1, "scores": scores(0.1)}}
    results = {"parts": ["main", "curve"], "runs": runs, "n_sessions": 16, "machine": {}}
    assert curve_points(results) == {"ridge": [(1, 0.05), (16, 0.18)], "encoder": [(1, 0.1), (16, 0.4)]}
    text = render_table(results)
    assert "Bayes ceiling" in text and "99.0" in text and "18.0" in text
    page = render_html(results)
    assert "<svg" in page and "Bayes ceiling 99.0%" in page


def test_regimes_plan_and_table():
    from mindsearch.eval.encoder_report import regime_points, regime_rows

    jobs = plan(Path("/d"), Path("/w"), 1, [2], 16, ["regimes"], "light", None, regime_steps=500)
    names = {j["name"]: j for j in jobs}
    assert {f"regime-{k}-{n}" for k in ("ridge", "scratch", "finetune") for n in (1, 2, 3, 5, "all")} <= set(names)
    fine = names["regime-finetune-3"]
    assert fine["after"] == "regime-pretrain" and fine["args"][fine["args"].index("--sessions") + 1] == "1,2,3"
    assert fine["args"][fine["args"].index("--preset") + 1] == "cpu" and "500" in fine["args"]
    assert "--sessions" not in names["regime-scratch-all"]["args"]

    def run(b2i, csls=None):
        return {"scores": {"betas": {"brain_to_image_top1": b2i, "image_to_brain_top1": b2i / 2,
                                     "ceiling_brain_to_image_top1": 0.99, "csls": csls}}}

    results = {"runs": {"regime-ridge-1": run(0.1), "regime-scratch-1": run(0.2, {"brain_to_image_top1": 0.25,
                                                                                  "image_to_brain_top1": 0.3}),
                        "regime-ridge-all": run(0.2)}}
    rows = regime_rows(results)
    assert rows[0] == ["1", "10.0", "20.0", "10.0", "25.0", "30.0", "-", "-", "-", "-", "99.0"] and rows[1][0] == "all"
    results["runs"]["regime-finetune-all"] = run(0.6, {"brain_to_image_top1": 0.61, "image_to_brain_top1": 0.55})
    results.update(n_sessions=16, parts=["regimes"], machine={}, jobs=1, threads=2)
    assert regime_rows(results)[1][6:10] == ["60.0", "30.0", "61.0", "55.0"]
    assert regime_points(results)["finetune"] == [(16, 0.6)] and regime_points(results)["ridge"] == [(1, 0.1), (16, 0.2)]
    page = render_html(results)
    assert "pretrained + fine-tuned" in page and "<svg" in page and "1 at a time, 2 thread(s)" in page
    assert "preset" not in page.split("Top-1")[0]  # no main-part preset named when only regimes ran


def test_semireal_rows_reach_the_text_and_the_page():
    def scores(b2i, i2b):
        return {"brain_to_image_top1": b2i, "image_to_brain_top1": i2b,
                "csls": {"brain_to_image_top1": b2i - 0.01, "image_to_brain_top1": i2b + 0.01}}

    semi = {"100": {"n_train_images": 100, "ncsnr_median": 0.42, "ridge": scores(0.577, 0.98),
                    "encoder": scores(0.993, 0.94)}}
    results = {"parts": ["semireal"], "runs": {}, "machine": {}, "semireal_by_images": semi}
    text = render_table(results)
    assert "semi-real" in text and "57.7" in text and "99.3" in text and "98.3" in text
    page = render_html(results)
    assert "Semi-real case" in page and "<td>99.3</td>" in page and "<td>56.7</td>" in page
