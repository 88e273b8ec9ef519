"""The web page at `/` (issue 23, docs/page.md) in a real browser: headless Debian Chromium driven by
Playwright against a real uvicorn server on a free loopback port. The page shows the served tasks, its
graph and history, answers an upload with every task's prediction (equal to System.predict), shows an
error line for an error answer, asks for the token once, and redraws when a task lands. The JSON
routes the page adds (/v1/graph, /v1/tasks/{task}/history) are checked without a browser too."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ROOT, TINY_SETTINGS, free_port, uvicorn_server
from fastapi.testclient import TestClient
from PIL import Image

from mupath import System
from mupath.data import Task
from mupath.serve import ServeConfig, create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT_ENV = "MUPATH_PAGE_SCREENSHOT"     #: where the README's screenshot is written (docs/img/page.png)
LOAD_BUDGET_MS = 1000.0
TOKEN = "s3cret-token"


def big_task(digits: Task) -> Task:
    """A third task on the digit images (is it 5 or more?), evolved while the page is open."""
    def big(y: np.ndarray) -> np.ndarray:
        return (y >= 5).astype(y.dtype)
    return Task.from_arrays("big", digits.train.images, big(digits.train.labels),
                            val=(digits.validation.images, big(digits.validation.labels)),
                            test=(digits.test.images, big(digits.test.labels)), class_names=["small", "big"])


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_small, parity_task) -> Path:
    """digits and parity evolved; `big` added, evolved by the last test while the page watches."""
    folder = tmp_path_factory.mktemp("page") / "store"
    system = System.create(folder, **TINY_ROOT)
    for task in (digits_small, parity_task, big_task(digits_small)):
        system.add_task(task)
    system.evolve(["parity", "digits"], workers=1, **TINY_SETTINGS)   # (then `big` reuses digits)
    system.close()
    return folder


@contextlib.contextmanager
def page_server(store: Path, token: str | None = None) -> Iterator[str]:
    """The app on a real uvicorn server (in a thread of this process) at the returned base URL."""
    with uvicorn_server(store, ServeConfig(port=free_port(), token=token, poll_s=0.2, max_wait_ms=2)) as address:
        yield f"http://{address}"


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    with page_server(store) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright (nothing is downloaded); skipped only where it is absent."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed ({CHROMIUM}; `apt-get install chromium`): the page's browser test "
                    "is skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()
    assert not pg.errors, pg.errors


def png_file(tmp_path: Path, image: np.ndarray, name: str = "digit.png") -> Path:
    path = tmp_path / name
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")
    return path


def open_page(page, url: str) -> float:
    """Load the page and wait until its first full draw; the load time in ms (navigation start to drawn)."""
    page.goto(url + "/")
    page.wait_for_selector("html[data-ready='1']", timeout=15000)
    return float(page.evaluate("window.mupathLoadMs"))


def task_rows(page) -> list[str]:
    return page.eval_on_selector_all("#tasks tbody tr", "rows => rows.map(r => r.dataset.task)")


# ---- the JSON the page reads (no browser) --------------------------------------------------------------
def test_graph_and_history_routes(store):
    system = System.open(store, read_only=True)
    with TestClient(create_app(store, ServeConfig())) as client:
        graph = client.get("/v1/graph").json()
        comps = {c["id"]: c for c in graph["components"]}
        snap = system.store.snapshot()
        assert [t["name"] for t in graph["tasks"]] == ["digits", "parity"]
        for t in graph["tasks"]:
            assert t["version"] == snap.retained[t["name"]].id
            assert {p["slot"]: p["component"] for p in t["path"]} == snap.retained[t["name"]].components
        for cid, c in comps.items():
            users = [n for n in ("digits", "parity") if cid in snap.retained[n].components.values()]
            assert c["users"] == users and c["shared"] == (len(users) > 1)
            assert c["creator"] == ("root" if snap.components[cid].task == "__root__" else snap.components[cid].task)
            assert c["params"] == snap.components[cid].num_params
        history = client.get("/v1/tasks/parity/history").json()
        commits = system.history("parity")
        assert [c["id"] for c in history["commits"]] == [c.id for c in commits]
        assert [len(c["tried"]) for c in history["commits"]] == [len(c.info.tried) for c in commits]
        assert history["commits"][-1]["tried"][0]["mutations"] == commits[-1].info.tried[0].mutations
        for missing, why in (("nope", "is unknown"), ("big", "has not been evolved yet")):
            r = client.get(f"/v1/tasks/{missing}/history")
            assert r.status_code == 404 and why in r.json()["error"]
        r = client.get("/")
        assert r.status_code == 200 and "<svg" not in r.text and "script-src 'sha256-" in r.headers[
            "content-security-policy"]


# ---- the page in Chromium --------------------------------------------------------------------------------
def test_page_loads_tasks_graph_and_history(page, url, store):
    load_ms = open_page(page, url)
    print(f"page load (navigation start to first full draw): {load_ms:.0f} ms")
    assert load_ms < LOAD_BUDGET_MS, f"the page took {load_ms:.0f} ms to draw"
    assert task_rows(page) == ["digits", "parity"]
    assert page.text_content("#pending").strip() == "added, not evolved yet: big"
    graph = json.loads(page.evaluate("fetch('/v1/graph').then(r => r.text())"))
    drawn = page.eval_on_selector_all("#graph svg .comp", "gs => gs.map(g => [g.dataset.component, "
                                      "g.classList.contains('shared'), g.querySelector('.badge text')?.textContent])")
    assert sorted(drawn) == sorted([c["id"], c["shared"], str(len(c["users"])) if c["shared"] else None]
                                   for c in graph["components"])
    page.wait_for_selector("#history details[open] .commit")         # the first task's history is open
    page.click("#history details[data-task='parity'] summary")
    page.wait_for_selector("#history details[data-task='parity'] .commit tbody tr")
    commits = System.open(store, read_only=True).history("parity")
    rows = page.locator("#history details[data-task='parity'] .commit tbody tr")
    assert rows.count() == sum(len(c.info.tried) for c in commits)
    assert page.locator("#history details[data-task='parity'] tr.retained").count() == len(commits)


def test_upload_answers_every_task_like_system_predict(page, url, store, digits_small, tmp_path):
    open_page(page, url)
    image = digits_small.test.images[3]
    page.set_input_files("#file-input", str(png_file(tmp_path, image)))
    page.wait_for_selector("#predictions[data-state='done']", timeout=15000)
    shown = page.eval_on_selector_all("#predictions .pred", "ps => ps.map(p => [p.dataset.task, "
                                      "Number(p.dataset.classId), p.dataset.version, p.dataset.probabilities])")
    system = System.open(store, read_only=True)
    assert [s[0] for s in shown] == ["digits", "parity"]
    for task, class_id, version, probs in shown:
        names = system.task_record(task).class_names
        assert class_id == int(system.predict(task, image[None])[0]) and version == system.store.retained_path(task).id
        want = torch.softmax(system.logits(task, image[None]), dim=1).numpy()[0]
        assert np.array_equal(np.array([json.loads(probs)[n] for n in names], dtype=np.float32), want)
        top = page.text_content(f"#predictions .pred[data-task='{task}'] .top")
        assert top == names[class_id]
    assert page.is_hidden("#error")


def test_error_answer_shows_the_error_line(page, url, tmp_path):
    open_page(page, url)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#predictions[data-state='error']", state="attached", timeout=15000)
    line = page.text_content("#error")
    assert page.is_visible("#error") and line.startswith("error 4"), line
    assert task_rows(page) == ["digits", "parity"]                   # the rest of the page is still there


def test_token_is_asked_once_and_sent_as_a_header(browser, store):
    with page_server(store, token=TOKEN) as base:
        context = browser.new_context()
        page = context.new_page()
        sent: list[tuple[str, str | None]] = []
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        page.goto(base + "/")
        page.wait_for_selector("#token-form:not([hidden])")
        assert "token" in page.text_content("#error")                  # the 401 is the error line
        page.fill("#token-input", "wrong")
        page.click("#token-form button")
        expect(page.locator("#token-label")).to_contain_text("refused")
        page.fill("#token-input", TOKEN)
        page.click("#token-form button")
        page.wait_for_selector("html[data-ready='1']")
        assert task_rows(page) == ["digits", "parity"] and page.is_hidden("#error")
        page.reload()                                                  # same tab: not asked again
        page.wait_for_selector("html[data-ready='1']")
        assert page.is_hidden("#token-form") and task_rows(page) == ["digits", "parity"]
        assert page.evaluate("sessionStorage.getItem('mupath-token')") == TOKEN
        api = [(u, h) for u, h in sent if "/v1/" in u]
        assert api and all(TOKEN not in u and "wrong" not in u for u, _ in sent)
        assert api[-1][1] == f"Bearer {TOKEN}"
        fresh = browser.new_context().new_page()                        # another session: asked again
        fresh.goto(base + "/")
        fresh.wait_for_selector("#token-form:not([hidden])")
        fresh.context.close()
        context.close()


def test_page_redraws_when_a_task_lands(page, url, store, tmp_path, digits_small):
    """Evolve `big` while the page is open: its row, graph column and history appear by themselves."""
    open_page(page, url)
    writer = System.open(store)
    writer.evolve(["big"], workers=1, **TINY_SETTINGS)
    writer.close()
    expect(page.locator("#tasks tbody tr")).to_have_count(3, timeout=20000)   # (no eval: the page's CSP)
    assert task_rows(page) == ["digits", "parity", "big"]
    page.wait_for_selector("#graph svg .task-chip[data-task='big']")
    page.set_input_files("#file-input", str(png_file(tmp_path, digits_small.test.images[5])))
    page.wait_for_selector("#predictions[data-state='done'] .pred[data-task='big']", timeout=15000)
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SCREENSHOT_ENV):
        Path(os.environ[SCREENSHOT_ENV]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
