"""Benchmark of the review app on a large synthetic run, and the README's screenshots.

    python bench/review.py --samples 10000                  # first page time, API times, RSS
    python bench/review.py --screenshots docs/figures       # the grid and the sample view

The run is synthetic (`lvlmva.review.synthetic`: real rendering and storage, made-up verdicts),
built once and reused from --run. The server is the real `lvlmva review` command in its own
process (its memory is read from /proc); the browser is Chromium driven by Playwright.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvlmva.review.synthetic import build_synthetic_run  # noqa: E402
from lvlmva.runs import CritiqueRun  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VISIBLE_LOADED = """() => {
  const imgs = [...document.querySelectorAll('.card img')]
    .filter(i => i.getBoundingClientRect().top < innerHeight);
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


PAGE_TIMES = """() => {
  const visible = new Set([...document.querySelectorAll('.card img')]
    .filter(i => i.getBoundingClientRect().top < innerHeight).map(i => i.src));
  const images = performance.getEntriesByType('resource').filter(e => visible.has(e.name));
  return {grid_ms: performance.getEntriesByName('grid-ready')[0].startTime,
          thumbnails_ms: Math.max(...images.map(e => e.responseEnd)), thumbnails: visible.size};
}"""


def ensure_run(path: Path, n: int, **kw) -> float:
    """Build the run unless a complete one is there; returns seconds spent building."""
    if path.exists():
        with CritiqueRun.open(path) as run:
            if run.count() == n:
                return 0.0
        shutil.rmtree(path)
    start = time.perf_counter()
    build_synthetic_run(path, n, **kw).close()
    return time.perf_counter() - start


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lvlmva.cli", "review", str(run), "--port", "0",
         "--reviewer", "bench"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        raise SystemExit(f"the review server did not start: {line!r}")
    return proc, line.split(" at ", 1)[1].split()[0]


def memory_mib(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def api_ms(url: str, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with urllib.request.urlopen(url) as response:
            response.read()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def first_page(browser, url: str, repeats: int) -> list[dict[str, float]]:
    """Per fresh browser context, ms from navigation start (the page's own clock) to the grid
    drawn (a User Timing mark the page sets) and to the last visible thumbnail received."""
    out = []
    for _ in range(repeats):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url)
        page.wait_for_function(VISIBLE_LOADED)
        out.append(page.evaluate(PAGE_TIMES))
        context.close()
    return out


def browse(browser, url: str, samples: int) -> dict[str, float]:
    """Open `samples` sample views one after another (key j) and toggle one verdict each."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url + "#grid?status=ok")
    page.wait_for_selector("body[data-ready=grid] .card")
    page.click(".card >> nth=0")
    page.wait_for_selector("body[data-ready^='sample:']")
    views, toggles = [], []
    for _ in range(samples):
        chip = page.locator(".chip").first
        before = chip.get_attribute("data-verdict")
        start = time.perf_counter()
        page.keyboard.press("1")
        want = "no" if before == "yes" else "yes"
        page.wait_for_selector(f".chip[data-key='1'][data-verdict={want}]")
        toggles.append((time.perf_counter() - start) * 1000)
        current = page.evaluate("document.body.dataset.ready")
        start = time.perf_counter()
        page.keyboard.press("j")
        page.wait_for_function("c => document.body.dataset.ready !== c", arg=current)
        views.append((time.perf_counter() - start) * 1000)
    context.close()
    return {"sample_view_ms": statistics.median(views), "toggle_ms": statistics.median(toggles)}


def bench(args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    build_s = ensure_run(args.run, args.samples, size=336, seed=0)
    size = sum(p.stat().st_size for p in args.run.rglob("*") if p.is_file())
    proc, url = start_server(args.run)
    try:
        idle = memory_mib(proc.pid)
        api = {
            name: api_ms(url + "api/samples?" + query)
            for name, query in [
                ("first page", "limit=60"),
                ("class 3", "label=3&limit=60"),
                ("split votes", "votes=1&limit=60"),
                ("masked 5-20%", "min_masked=0.05&max_masked=0.2&limit=60"),
                ("disagrees with truth", "truth=1&limit=60"),
                ("by confidence, desc", "sort=confidence&desc=1&limit=60"),
                ("page 100", f"offset={min(args.samples - 60, 5940)}&limit=60"),
            ]
        }
        api["summary"] = api_ms(url + "api/summary")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            loads = first_page(browser, url, args.repeats)
            walk = browse(browser, url, 20)
            browser.close()
        busy = memory_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "samples": args.samples, "build_s": round(build_s, 1), "run_mib": round(size / 2**20),
        "first_page": loads, "api_median_ms": {k: round(v, 1) for k, v in api.items()},
        **{k: round(v, 1) for k, v in walk.items()},
        "server_mib_idle": idle, "server_mib_after": busy,
    }


def _synthetic_digits_run(args: argparse.Namespace) -> Path:
    from lvlmva.vision.datasets import load_dataset

    train = load_dataset("decoy-digits").train
    path = args.run.with_name(args.run.name + "-digits")
    shutil.rmtree(path, ignore_errors=True)
    build_synthetic_run(
        path, 240, images=train.images[:240].numpy(), labels=train.labels[:240].numpy(),
        spurious_masks=train.spurious_masks[:240].numpy(), seed=4,
    ).close()
    return path


def screenshots(args: argparse.Namespace) -> None:
    """The grid and one sample view of `--screenshot-run` (a run `lvlmva critique` wrote), or
    of a run on decoy-digits images with synthetic verdicts."""
    from playwright.sync_api import sync_playwright

    path = args.screenshot_run or _synthetic_digits_run(args)
    out = Path(args.screenshots)
    out.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            page.wait_for_selector("body[data-ready=grid]")
            page.wait_for_function(VISIBLE_LOADED)
            page.screenshot(path=out / "review-grid.png")
            page.goto(url + "#grid?status=ok&truth=1")
            page.wait_for_selector("body[data-ready=grid] .card")
            page.click(".card >> nth=0")
            page.wait_for_selector("body[data-ready^='sample:']")
            first = page.locator(".chip").first.get_attribute("data-verdict")
            page.keyboard.press("1")  # one override, to show how it looks
            page.wait_for_selector(
                f".chip[data-key='1'][data-verdict={'no' if first == 'yes' else 'yes'}]")
            page.locator(".chip").nth(1).hover()
            page.wait_for_timeout(300)
            page.screenshot(path=out / "review-sample.png", full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"wrote {out / 'review-grid.png'} and {out / 'review-sample.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--run", type=Path, default=Path("/tmp/lvlmva-bench-review"))
    parser.add_argument("--repeats", type=int, default=5, help="fresh-browser first-page loads")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--screenshots", help="write the README screenshots into this folder")
    parser.add_argument("--screenshot-run", type=Path,
                        help="with --screenshots: photograph this run (default: synthetic)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.screenshots:
        screenshots(args)
        return
    result = bench(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
