"""The review app in a real browser (Playwright driving Debian's Chromium): filters, 20
verdict toggles by click and key, a reload, the store's audit trail and masks, re-aligning a
real decoy-digits critique run from the app (the masks used change exactly at the overridden
clusters), and writes from another origin refused."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from aiohttp import web

from lvlmva.review.server import serve
from lvlmva.review.synthetic import build_synthetic_run
from lvlmva.runs import CritiqueRun, RunQuery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)"
)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "browser-test-token"
SHOWN = "want => JSON.stringify([...document.querySelectorAll('.card')]" \
        ".map(c => Number(c.dataset.index))) === JSON.stringify(want)"


class Served:
    """The review app (and a foreign page on another port) in a thread with its own loop."""

    def __init__(self, run: CritiqueRun, realign=None) -> None:
        self.realign = realign
        self.url = ""
        self.foreign = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, args=(run,), daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the review server did not start")

    def _main(self, run: CritiqueRun) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(run))

    async def _serve(self, run: CritiqueRun) -> None:
        self._stop = asyncio.Event()
        async def elsewhere(request: web.Request) -> web.Response:
            return web.Response(text="<p>elsewhere</p>", content_type="text/html")

        foreign = web.Application()
        foreign.router.add_get("/", elsewhere)
        runner = web.AppRunner(foreign)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.foreign = f"http://127.0.0.1:{runner.addresses[0][1]}/"

        def ready(url: str) -> None:
            self.url = url
            self._ready.set()

        try:
            await serve(run, port=0, token=TOKEN, reviewer="browser", ready=ready,
                        stop=self._stop, realign=self.realign)
        finally:
            await runner.cleanup()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Served, CritiqueRun]]:
    path = tmp_path_factory.mktemp("browser") / "run"
    build_synthetic_run(path, 150, size=112, masks="hard", seed=2).close()
    run = CritiqueRun.open(path)
    server = Served(run)
    yield server, run
    server.close()
    run.close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Chromium is here but Playwright is not: pip install -c constraints.txt "
                    "-e '.[browser]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def test_grid_filters_sorts_and_pages(served, page):
    server, run = served
    page.goto(server.url)
    page.wait_for_selector("body[data-ready=grid] .card")
    assert page.locator(".card").count() == 60
    assert page.inner_text("#page-info").endswith(f"{run.count()} samples")
    assert page.locator("#summary").is_hidden()
    page.click("#summary-toggle")
    page.wait_for_selector("#summary div")
    assert f"samples: {run.count()}" in page.inner_text("#summary")
    assert "accuracy vs truth: critic" in page.inner_text("#summary")
    page.select_option("select[name=label]", "3")
    page.check("input[name=misclassified]")
    expected = run.query(RunQuery(labels=(3,), misclassified=True), limit=60)
    assert 0 < len(expected.items) < 60
    page.wait_for_function(SHOWN, arg=[s.record.index for s in expected.items])
    page.select_option("select[name=label]", "")
    page.uncheck("input[name=misclassified]")
    page.select_option("select[name=sort]", "confidence")
    page.check("input[name=desc]")
    expected = run.query(RunQuery(sort="confidence", descending=True), limit=60)
    page.wait_for_function(SHOWN, arg=[s.record.index for s in expected.items])
    page.click("#page-next")
    expected = run.query(RunQuery(sort="confidence", descending=True), offset=60, limit=60)
    page.wait_for_function(SHOWN, arg=[s.record.index for s in expected.items])
    assert "offset=60" in page.evaluate("location.hash")


def _chip(page, color):
    return page.locator(f".chip[data-color='{color}']")


def _toggle(page, color, *, key: str | None) -> None:
    before = _chip(page, color).get_attribute("data-verdict")
    if key is None:
        _chip(page, color).click()
    else:
        page.keyboard.press(key)
    after = "no" if before == "yes" else "yes"
    page.wait_for_selector(f".chip[data-color='{color}'][data-verdict={after}]")


def test_twenty_toggles_by_click_and_key_survive_a_reload(served, page):
    server, run = served
    query = RunQuery(statuses=("ok",), overridden=False)
    chosen = list(run.query(query, limit=5).items)  # consecutive: "j" walks through them
    assert all(len(s.record.colors) >= 4 for s in chosen)
    before = {s.record.index: run.effective_mask(s.record.index) for s in chosen}
    audit_before = len(run.audit(limit=100_000))
    page.goto(f"{server.url}#sample/{chosen[0].record.index}?status=ok&reviewed=0")
    toggled: dict[int, set[str]] = {}
    for n, sample in enumerate(chosen):
        index = sample.record.index
        if n:
            page.keyboard.press("j")  # next sample of the filtered list
        page.wait_for_selector(f"body[data-ready='sample:{index}']")
        colors = sample.record.colors
        _toggle(page, colors[0], key=None)
        _toggle(page, colors[1], key=None)
        _toggle(page, colors[2], key="3")
        _toggle(page, colors[3], key="4")
        toggled[index] = set(colors[:4])
    page.reload()
    last = chosen[-1]
    page.wait_for_selector(f"body[data-ready='sample:{last.record.index}']")
    for color in last.record.colors[:4]:
        want = "no" if last.effective_verdicts[color] else "yes"
        assert _chip(page, color).get_attribute("data-verdict") == want
        assert _chip(page, color).get_attribute("data-overridden") == "true"
    trail = run.audit(limit=100_000)[audit_before:]
    assert len(trail) == 20 and all(e.reviewer == "browser" for e in trail)
    for sample in chosen:
        index = sample.record.index
        mine = [e for e in trail if e.index == index]
        assert {e.color for e in mine} == toggled[index]
        for e in mine:
            assert e.old_verdict == sample.effective_verdicts[e.color] and e.new_verdict is (
                not e.old_verdict)
        labels = run.arrays(index).labels
        ids_flipped = [k for c, k in zip(sample.record.colors, sample.record.cluster_ids,
                                         strict=True) if c in toggled[index]]
        changed = run.effective_mask(index) != before[index]
        assert np.array_equal(changed, np.isin(labels, ids_flipped)), index


def test_writes_without_the_token_or_from_another_origin_are_refused(served, page):
    server, run = served
    target = run.query(RunQuery(statuses=("ok",)), limit=1).items[0]
    index, color = target.record.index, target.record.colors[0]
    body = f'{{"color": "{color}", "verdict": {str(not target.effective_verdicts[color]).lower()}}}'
    audit_before = len(run.audit(limit=100_000))
    page.goto(server.url)
    page.wait_for_selector("body[data-ready=grid]")
    status = page.evaluate(
        """([url, body]) => fetch(url, {method: 'POST', body,
             headers: {'Content-Type': 'application/json'}}).then(r => r.status)""",
        [f"/api/samples/{index}/verdict", body])
    assert status == 403  # same origin, no token
    page.goto(server.foreign)
    outcomes = page.evaluate(
        """async ([url, body, token]) => {
             const out = [];
             try {  // a simple request: sent, but with a foreign Origin
               await fetch(url, {method: 'POST', mode: 'no-cors', body,
                                 headers: {'Content-Type': 'text/plain'}});
               out.push('sent');
             } catch (e) { out.push('blocked'); }
             try {  // even with the token: the preflight fails
               const r = await fetch(url, {method: 'POST', body,
                 headers: {'Content-Type': 'application/json', 'X-Review-Token': token}});
               out.push(String(r.status));
             } catch (e) { out.push('blocked'); }
             return out;
           }""",
        [f"{server.url}api/samples/{index}/verdict", body, TOKEN])
    assert outcomes[1] == "blocked"
    assert run.get(index).effective_verdicts == target.effective_verdicts
    assert len(run.audit(limit=100_000)) == audit_before


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A real critique run (decoy-digits, simulated critic, hard masks), served with a re-align
    hook that trains from it in-process and keeps the result."""
    import torch

    from lvlmva.api import CriticSettings
    from lvlmva.pipeline import CritiqueOptions
    from lvlmva.pipeline.critique_run import critique_run
    from lvlmva.pipeline.from_run import align_from_run
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.models import build_model

    digits = load_dataset("decoy-digits", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", digits.info)
    path = tmp_path_factory.mktemp("digits") / "run"
    job = critique_run(model, digits, path, n=16, progress=False,
                       critic=CriticSettings(cache_dir=path.parent / "cache"),
                       critique=CritiqueOptions(soft_masks=False))
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
        pool.submit(asyncio.run, job).result()
    run = CritiqueRun.open(path)
    results = []

    async def realign(r: CritiqueRun) -> str:
        # no neighbour pooling here, so the masks change exactly where the reviewer clicked
        # (pooling with pinned overrides: tests/test_critique_run.py)
        result = await align_from_run(model, digits, r, epochs=1, progress=False, neighbours=0)
        results.append(result)
        return f"aligned from {len(result.samples)} reviewed samples, 0 LVLM calls"

    server = Served(run, realign=realign)
    yield server, run, digits, results
    server.close()
    run.close()


def test_twenty_overrides_then_realign_from_the_app_changes_the_masks_exactly_there(
    digits_run, page
):
    from lvlmva.pipeline.from_run import reviewed_records

    server, run, digits, results = digits_run
    before = {r.index: r.mask.numpy() for r in reviewed_records(run, digits)}
    query = RunQuery(statuses=("ok",), overridden=False)
    chosen = [s for s in run.query(query, limit=16).items if len(s.record.colors) >= 4][:5]
    assert len(chosen) == 5
    toggled: dict[int, set[str]] = {}
    for sample in chosen:
        index = sample.record.index
        page.goto(f"{server.url}#sample/{index}?status=ok")
        page.wait_for_selector(f"body[data-ready='sample:{index}']")
        for n, color in enumerate(sample.record.colors[:4]):
            _toggle(page, color, key=None if n < 2 else str(n + 1))
        toggled[index] = set(sample.record.colors[:4])
    page.reload()
    page.wait_for_selector(f"body[data-ready='sample:{chosen[-1].record.index}']")
    assert page.locator(".chip[data-overridden=true]").count() == 4
    page.click("#realign")
    page.click("#dialog-run")
    page.wait_for_function(
        "() => document.getElementById('message').textContent.includes('aligned')")
    assert "0 LVLM calls" in page.inner_text("#message")
    (result,) = results
    assert result.provider_calls == 0 and result.cache_hits == 0
    used = {r.index: r.mask.numpy() for r in result.samples}
    assert set(used) == set(before)
    for index, mask in used.items():
        sample = run.get(index)
        flipped = [k for c, k in zip(sample.record.colors, sample.record.cluster_ids,
                                     strict=True) if c in toggled.get(index, set())]
        changed = mask != before[index]
        assert np.array_equal(changed, np.isin(run.arrays(index).labels, flipped)), index
    assert sum(len(t) for t in toggled.values()) == 20
