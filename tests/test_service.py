"""`mindsearch serve` as clients meet it: a real uvicorn server on a free loopback port, the same
hits as the CLI, a 4xx naming the problem for every bad request, a bearer token, the page."""

import http.client
import io
import json
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from service_world import INDEX, build_world, call, mindsearch, post_json, serving  # noqa: E402

KEYS = ("rank", "id", "index", "index_version", "run")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("service-world"))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("service-home")


@pytest.fixture(scope="module")
def server(world, home):
    with serving(home, world, extra=("--max-body-mb", 1)) as url:
        yield url


@pytest.fixture(scope="module")
def trials(world, home):
    out = home / "trials.npy"
    mindsearch(home, "data", "export-trials", "--data", world["data"], "--trials", "test", "--limit", "4",
               "--out", out)
    return out


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def same_hits(a, b):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert [tuple(h[k] for k in KEYS) for h in row_a] == [tuple(h[k] for k in KEYS) for h in row_b]
        np.testing.assert_allclose([h["score"] for h in row_a], [h["score"] for h in row_b], rtol=1e-5)


def test_service_and_cli_return_identical_hits(world, home, server, trials):
    sessions = [int(line.split(",")[1]) for line in (home / "trials.trials.csv").read_text().split()[1:]]
    # The CLI in-process (no service recorded for --local) ...
    local = mindsearch(home, "query", "--voxels", trials, "--k", 8, "--local", "--json", "--root", world["indexes"],
                       "--run", world["run"], "--index", INDEX).stdout
    rows = [json.loads(line) for line in local.splitlines()]
    cli_blocks = [rows[i:i + 8] for i in range(0, len(rows), 8)]
    assert len(cli_blocks) == 4 and all(len(b) == 8 for b in cli_blocks)
    # ... the service with an .npy body (the export's sessions as a parameter) ...
    params = f"?k=8&index={INDEX}&run=ridge&session={','.join(map(str, sessions))}"
    status, _, answer = call(server, "/v1/query" + params, body=trials.read_bytes(), content_type="application/x-npy")
    assert status == 200, answer
    same_hits(answer["hits"], cli_blocks)
    assert all("score_kind" in h for h in answer["hits"][0])
    # ... with a JSON body ...
    x = np.load(trials)
    status, _, answer = post_json(server, "/v1/query", {"voxels": x.tolist(), "k": 8, "index": INDEX,
                                                        "run": str(world["run"]), "session": sessions})
    assert status == 200, answer
    same_hits(answer["hits"], cli_blocks)
    # ... and the dataset's own trials, which also say which image was seen.
    trial_numbers = [int(line.split(",")[2]) for line in (home / "trials.trials.csv").read_text().split()[1:]]
    status, headers, answer = post_json(server, "/v1/query", {"trial": trial_numbers, "k": 8})
    assert status == 200, answer
    same_hits(answer["hits"], cli_blocks)
    # the engine's own time, so a client can tell it from the transport, and the CPU it used
    # (wall well above CPU = the query waited for a core)
    timing = {k.lower(): v for k, v in headers.items()}["server-timing"]
    metrics = dict(part.strip().split(";dur=") for part in timing.split(","))
    assert list(metrics) == ["engine", "cpu"]
    assert 0 < float(metrics["cpu"]) <= float(metrics["engine"])
    assert answer["truth"] == [int(line.split(",")[3]) for line in (home / "trials.trials.csv").read_text().split()[1:]]
    # The CLI with no flags goes through the running service (recorded in config.toml) and agrees.
    mindsearch(home, "use", "--root", world["indexes"], "--index", INDEX, "--run", world["run"])
    via = mindsearch(home, "query", "--voxels", trials, "--k", 8, "--json").stdout
    via_rows = [json.loads(line) for line in via.splitlines()]
    assert all("score_kind" in h for h in via_rows)  # the service's answer, not an in-process one
    same_hits([via_rows[i:i + 8] for i in range(0, 32, 8)], cli_blocks)


def test_the_verbatim_command_answers_after_setup(world, tmp_path):
    """A fresh user: `use` (what `demo` saves), export a trial, then the design card's command."""
    home = tmp_path / "fresh-home"
    res = mindsearch(home, "query", "--voxels", tmp_path / "trial.npy", "--k", 16, check=False)
    assert res.returncode == 2 and "--root" in res.stderr and "MINDSEARCH_HOME" in res.stderr
    mindsearch(home, "use", "--root", world["indexes"], "--index", INDEX, "--run", world["run"],
               "--data", world["data"])
    mindsearch(home, "data", "export-trials", "--trials", "test", "--limit", 1, "--out", tmp_path / "trial.npy")
    res = mindsearch(home, "query", "--voxels", tmp_path / "trial.npy", "--k", 16)
    lines = res.stdout.splitlines()
    rows = lines[lines.index(next(line for line in lines if line.startswith("----"))) + 1:]
    assert [int(r.split()[0]) for r in rows] == list(range(1, 17))  # 16 hits, ranked
    # --data/--trial queries the same trial straight from the dataset (its session comes along).
    trial = int((tmp_path / "trial.trials.csv").read_text().split()[1].split(",")[2])
    by_trial = mindsearch(home, "query", "--trial", trial, "--k", 16).stdout
    assert by_trial == res.stdout


def test_token_is_required(server):
    assert call(server, "/healthz", token=None)[0] == 200
    for route in ("/v1/indexes", "/v1/runs", "/metrics", f"/images/{INDEX}/1"):
        status, headers, body = call(server, route, token=None)
        assert status == 401 and "token" in body["error"], (route, body)
        assert call(server, route, token="wrong")[0] == 401
    status, _, body = post_json(server, "/v1/query", {"voxels": [[0.0]]}, token=None)
    assert status == 401
    status, _, page = call(server, "/", token=None)
    assert status == 200 and b"mindsearch" in page


def bad_requests(world):
    good = np.zeros((1, 120), np.float32)
    obj = io.BytesIO()
    np.lib.format.write_array(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    nan = good.copy()
    nan[0, 3] = np.nan
    j = "application/json"
    n = "application/x-npy"
    return {
        "wrong voxel count": ("/v1/query", json.dumps({"voxels": [[0.1] * 7]}), j, 422, "voxels"),
        "NaN in JSON": ("/v1/query", json.dumps({"voxels": nan.tolist()}), j, 422, "NaN"),
        "NaN in .npy": ("/v1/query", npy_bytes(nan), n, 422, "NaN"),
        "integer dtype": ("/v1/query", npy_bytes(np.ones((1, 120), np.int64)), n, 422, "floating point"),
        "unknown index": ("/v1/query?index=nope", npy_bytes(good), n, 404, "nope"),
        "unknown run": ("/v1/query?run=/etc", npy_bytes(good), n, 404, "run"),
        "malformed .npy": ("/v1/query", b"\x93NUMPY\x01\x00garbage", n, 400, ".npy"),
        "not .npy at all": ("/v1/query", b"hello", n, 400, ".npy"),
        "pickled objects": ("/v1/query", obj.getvalue(), n, 400, ".npy"),
        "malformed JSON": ("/v1/query", "{not json", j, 400, "JSON"),
        "ragged JSON": ("/v1/query", json.dumps({"voxels": [[1.0, 2.0], [1.0]]}), j, 400, "rectangular"),
        "k out of range": ("/v1/query?k=0", npy_bytes(good), n, 400, "k"),
        "wrong content type": ("/v1/query", b"x", "text/plain", 415, "content type"),
        "nothing to query": ("/v1/query", "{}", j, 400, "voxels"),
        "unknown trial": ("/v1/query", json.dumps({"trial": 10 ** 6}), j, 404, "trial"),
        "wrong embedding size": ("/v1/query", json.dumps({"embedding": [[0.1] * 5]}), j, 422, "dimensions"),
        "nonexistent id (brain)": ("/v1/brain", json.dumps({"index": INDEX, "id": 10 ** 6}), j, 404, "id"),
        "unreadable upload": ("/v1/brain", b"not an image", "image/png", 422, "encodes no uploaded"),
        "nonexistent id (image)": (f"/images/{INDEX}/1000000", None, None, 404, "id"),
        "non-numeric id": (f"/images/{INDEX}/abc", None, None, 400, "id"),
        "path trick in id": (f"/images/{INDEX}/..%2F..%2Fmanifest.json", None, None, 404, "nothing at"),
        "dotted id": (f"/images/{INDEX}/..", None, None, 400, "id"),
        "path trick in index": ("/images/..%2F..%2Fetc/1", None, None, 404, "nothing at"),
        "unknown index (image)": ("/images/etc/1", None, None, 404, "index"),
        "path trick in static": ("/static/..%2Fapp.py", None, None, 404, "static"),
    }


def oversized(server, size: int = 3 << 19):
    """Announce a 1.5 MiB body (the test server takes 1 MiB) and read the answer before sending it,
    as a client using Expect: 100-continue would: the refusal must not wait for the body."""
    host, port = server.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", "/v1/query")
        for key, value in (("Authorization", "Bearer test-token"), ("Content-Type", "application/x-npy"),
                           ("Content-Length", str(size))):
            conn.putheader(key, value)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_every_bad_request_gets_a_4xx_naming_the_problem(world, server, trials):
    for name, (route, body, ctype, want, words) in bad_requests(world).items():
        data = body.encode() if isinstance(body, str) else body
        status, headers, answer = call(server, route, body=data, content_type=ctype)
        assert status == want, (name, status, answer)
        assert isinstance(answer, dict) and words.lower() in answer["error"].lower(), (name, answer)
        assert "Traceback" not in answer["error"]
    status, answer = oversized(server)
    assert status == 413 and "limit" in answer["error"]
    assert call(server, "/healthz")[0] == 200


def test_two_hundred_bad_requests_do_not_take_it_down(world, server, trials):
    cases = list(bad_requests(world).values())
    t0 = time.monotonic()
    for i in range(200):
        if i % 25 == 0:
            assert oversized(server)[0] == 413
            continue
        route, body, ctype, want, _ = cases[i % len(cases)]
        status = call(server, route, body=body.encode() if isinstance(body, str) else body, content_type=ctype,
                      timeout=30)[0]
        assert status == want
        assert time.monotonic() - t0 < 240
    status, _, answer = call(server, f"/v1/query?k=3&index={INDEX}", body=trials.read_bytes(), content_type="application/x-npy")
    assert status == 200 and len(answer["hits"][0]) == 3
    status, _, metrics = call(server, "/metrics")
    text = metrics.decode()
    assert "mindsearch_request_seconds_bucket" in text
    errors = sum(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("mindsearch_errors_total{"))
    assert errors >= 200


def test_thumbnails_indexes_runs_and_brain_retrieval(world, server, trials):
    status, headers, body = call(server, f"/images/{INDEX}/{_first_id(server, trials)}?size=128")
    assert status == 200 and headers["content-type"] in ("image/jpeg", "image/png")
    from PIL import Image

    im = Image.open(io.BytesIO(body))
    assert max(im.size) >= 128
    assert call(server, f"/images/{INDEX}/{_first_id(server, trials)}?size=128")[2] == body  # cached, same bytes
    indexes = call(server, "/v1/indexes")[2]["indexes"]
    assert [i["name"] for i in indexes] == [INDEX] and indexes[0]["count"] == 150
    runs = call(server, "/v1/runs")[2]["runs"]
    assert [r["name"] for r in runs] == ["ridge"] and runs[0]["n_voxels"] == 120
    # Brain retrieval by id: the stored test trials nearest to a test image include its own trials.
    test_trials = call(server, "/v1/trials?split=test&limit=1000")[2]["trials"]
    image_id = test_trials[0]["image_id"]
    status, _, answer = post_json(server, "/v1/brain", {"index": INDEX, "id": image_id, "k": 10})
    assert status == 200, answer
    hits = answer["hits"][0]
    assert len(hits) == 10 and [h["rank"] for h in hits] == list(range(1, 11))
    assert {"trial", "image_id", "session", "score"} <= set(hits[0])


def test_new_and_changed_indexes_are_served_without_restart(world, server):
    from mindsearch.data import open_dataset
    from mindsearch.engine import Engine
    from mindsearch.indexes.collection import Collection

    Engine(world["indexes"]).build_from_dataset("late", world["data"])
    try:
        names = [i["name"] for i in call(server, "/v1/indexes")[2]["indexes"]]
        assert names == ["late", INDEX]
        with open_dataset(world["data"]) as ds:
            image = int(ds.target_ids[0])
            tokens = ds.targets([image])
        status, _, before = post_json(server, "/v1/query", {"embedding": tokens.tolist(), "k": 2, "index": "late"})
        assert status == 200 and before["hits"][0][0]["id"] == image
        # A new version of the index: the same image stored again under a new id.
        coll = Collection.open(world["indexes"], "late")
        coll.add({"id": np.array([99999]), "embedding": tokens[:, 0], "tokens": tokens, "key": ["again"]},
                 shard="again")
        coll.finish_shard("again")
        coll.build_index()
        status, _, after = post_json(server, "/v1/query", {"embedding": tokens.tolist(), "k": 2, "index": "late"})
        assert status == 200
        assert {h["id"] for h in after["hits"][0]} == {image, 99999}
        assert after["hits"][0][0]["index_version"] > before["hits"][0][0]["index_version"]
    finally:
        shutil.rmtree(world["indexes"] / "late")


def _first_id(server, trials):
    status, _, answer = call(server, f"/v1/query?k=1&index={INDEX}", body=trials.read_bytes(),
                             content_type="application/x-npy")
    return answer["hits"][0][0]["id"]


# ------------------------------------------------------------------------------------ the page
def _browser():
    shutil_which = shutil.which
    chrome = shutil_which("chromium") or shutil_which("chromium-browser") or shutil_which("google-chrome")
    driver = shutil_which("chromedriver")
    if not (chrome and driver):
        pytest.skip("no chromium + chromedriver installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.binary_location = chrome
    return webdriver.Chrome(service=Service(driver), options=options)


def test_page_answers_a_query_in_a_real_browser(server, trials, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser()
    try:
        browser.set_page_load_timeout(60)
        browser.get(server + "/#token=test-token")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#trial option")) > 1)
        trial = Select(browser.find_element(By.ID, "trial"))
        trial.select_by_index(2)
        chosen = int(trial.first_selected_option.get_attribute("value"))
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys("12")
        browser.find_element(By.ID, "search").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#hits img[data-loaded='1']")) == 12)
        shown = [int(f.get_attribute("data-id")) for f in browser.find_elements(By.CSS_SELECTOR, "#hits .hit")]
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('#hits img')].map(i => i.naturalWidth)")
        status, _, answer = post_json(server, "/v1/query", {"trial": chosen, "k": 12})
        assert shown == [h["id"] for h in answer["hits"][0]]  # the page shows the service's ranking
        assert all(w > 0 for w in sizes)  # every thumbnail decoded
        truth = browser.find_element(By.CSS_SELECTOR, "#truth figcaption").text
        assert truth == f"image {answer['truth'][0]}"
        # Upload an exported .npy instead: the page shows the first row's hits.
        browser.execute_script("document.getElementById('hits').innerHTML = ''")
        browser.find_element(By.ID, "npy").send_keys(str(trials))
        browser.find_element(By.ID, "search").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#hits img[data-loaded='1']")) == 12)
        shown = [int(f.get_attribute("data-id")) for f in browser.find_elements(By.CSS_SELECTOR, "#hits .hit")]
        status, _, answer = call(server, f"/v1/query?k=12&index={INDEX}", body=trials.read_bytes(),
                                 content_type="application/x-npy")
        assert shown == [h["id"] for h in answer["hits"][0]]
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()


def test_uploaded_images_are_encoded_and_checked_against_the_store(world, tmp_path):
    """serve --model/--weights: an upload is decoded and encoded; a store from another space is refused."""
    from PIL import Image

    from mindsearch.service.backend import Backend, Refused

    cfg = tmp_path / "mindsearch-test-service-vit.json"
    cfg.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                               "patch_size": 8, "head_width": 16},
                               "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                                            "layers": 1}}))
    backend = Backend(world["indexes"], runs=[world["run"]], image_model=str(cfg), image_weights="random:0")
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    with pytest.raises(Refused) as bad:
        backend.brain({"store": "test-trials"}, b"\x89PNG not really")
    assert bad.value.status == 400 and "not a readable image" in bad.value.problem
    with pytest.raises(Refused) as other_space:
        backend.brain({"store": "test-trials"}, buf.getvalue())
    assert other_space.value.status == 422 and "cannot be compared" in other_space.value.problem
