"""The review app's HTTP API: reads, writes through the store, and the security guards."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lvlmva.cli import main
from lvlmva.errors import ConfigError
from lvlmva.review.app import make_app
from lvlmva.review.security import check_bind, is_loopback
from lvlmva.review.synthetic import build_synthetic_run
from lvlmva.runs import CritiqueRun, RunQuery

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("review") / "run"
    build_synthetic_run(path, 80, size=56, seed=1).close()
    return path


@pytest.fixture
async def client(run_path, request):
    hook = getattr(request, "param", None)
    run = CritiqueRun.open(run_path)
    app = make_app(run, token=TOKEN, reviewer="tester", realign=hook)
    async with TestClient(TestServer(app)) as c:
        yield c
    run.close()


def _origin(client) -> str:
    return f"http://{client.host}:{client.port}"


def _write_headers(client, **extra) -> dict[str, str]:
    return {"X-Review-Token": TOKEN, "Origin": _origin(client), **extra}


async def _first_ok(client) -> dict:
    page = await (await client.get("/api/samples?status=ok&limit=1")).json()
    return await (await client.get(f"/api/samples/{page['items'][0]['index']}")).json()


async def test_the_page_carries_the_token_and_the_api_reads_the_run(client, run_path):
    page = await client.get("/")
    assert page.status == 200 and "no-store" in page.headers["Cache-Control"]
    assert f'content="{TOKEN}"' in await page.text()
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    info = await (await client.get("/api/run")).json()
    assert info["has_truth"] and info["class_names"][0] == "0"
    assert info["realign"]["argv"][:3] == ["lvlmva", "align", "--critique"]
    with CritiqueRun.open(run_path) as run:
        expected = run.count(RunQuery(labels=(3,), statuses=("ok",)))
    body = await (await client.get("/api/samples?label=3&status=ok&limit=5")).json()
    assert body["total"] == expected and all(i["label"] == 3 for i in body["items"])
    sample = await _first_ok(client)
    assert sample["colors"] and sample["effective_verdicts"] and sample["attribution_bound"] > 0
    for kind in ("original", "clusters", "overlay", "attribution", "mask", "effective"):
        image = await client.get(f"/api/samples/{sample['index']}/image/{kind}")
        assert image.status == 200 and (await image.read())[:4] == b"\x89PNG", kind
    labels = await (await client.get(f"/api/samples/{sample['index']}/labels")).json()
    assert len(labels["labels"]) == labels["height"] * labels["width"]


async def test_a_toggle_with_the_token_is_saved_through_the_store(client, run_path):
    sample = await _first_ok(client)
    colour = sample["colors"][0]
    new = not sample["effective_verdicts"][colour]
    answer = await client.post(f"/api/samples/{sample['index']}/verdict",
                               json={"color": colour, "verdict": new},
                               headers=_write_headers(client, **{"Sec-Fetch-Site": "same-origin"}))
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["effective_verdicts"][colour] is new
    note = await client.post(f"/api/samples/{sample['index']}/note", json={"note": "checked"},
                             headers=_write_headers(client))
    assert note.status == 200
    with CritiqueRun.open(run_path) as run:
        got = run.get(sample["index"])
        assert got.effective_verdicts[colour] is new and got.note == "checked"
        entry = run.audit(sample["index"])[-2]
        assert (entry.color, entry.new_verdict, entry.reviewer) == (colour, new, "tester")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "X-Review-Token"),
        ({"X-Review-Token": "guess"}, "X-Review-Token"),
        ({"X-Review-Token": TOKEN, "Origin": "http://evil.example"}, "cross-origin"),
        ({"X-Review-Token": TOKEN, "Sec-Fetch-Site": "cross-site"}, "cross-site"),
    ],
)
async def test_writes_without_the_token_or_from_elsewhere_are_refused(client, run_path,
                                                                     headers, reason):
    sample = await _first_ok(client)
    colour = sample["colors"][0]
    for path, body in ((f"/api/samples/{sample['index']}/verdict",
                        {"color": colour, "verdict": not sample["effective_verdicts"][colour]}),
                       (f"/api/samples/{sample['index']}/note", {"note": "x"}),
                       ("/api/export", {})):
        answer = await client.post(path, json=body, headers=headers)
        assert answer.status == 403 and reason in (await answer.json())["error"]
    with CritiqueRun.open(run_path) as run:
        assert run.get(sample["index"]).effective_verdicts == sample["effective_verdicts"]


async def test_a_foreign_host_header_is_refused_even_for_reads(client):
    answer = await client.get("/api/run", headers={"Host": "rebind.evil.example"})
    assert answer.status == 403
    assert (await client.get("/api/run", headers={"Host": f"localhost:{client.port}"})).ok


@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2f..%2fpyproject.toml",
        "/static/../app.py",
        "/static/index.html.bak",
        "/api/samples/..%2f..%2fmanifest.json",
        "/api/samples/1/image/..%2f..%2f..%2fmanifest",
        "/api/samples/1/image/secrets",
        "/api/samples/-1",
        "/manifest.json",
    ],
)
async def test_no_path_reaches_a_file_outside_the_fixed_routes(client, path):
    answer = await client.get(path)
    assert answer.status == 404
    assert "store_version" not in await answer.text()


async def test_errors_are_one_line_json(client):
    missing = await client.get("/api/samples/99999")
    assert missing.status == 404 and "not in the run" in (await missing.json())["error"]
    bad = await client.get("/api/samples?sort=colour")
    assert bad.status == 400 and "unknown sort" in (await bad.json())["error"]
    sample = await _first_ok(client)
    wrong = await client.post(f"/api/samples/{sample['index']}/verdict",
                              json={"color": "chartreuse", "verdict": True},
                              headers=_write_headers(client))
    assert wrong.status == 400 and "chartreuse" in (await wrong.json())["error"]


async def test_export_writes_into_the_run(client, run_path):
    answer = await client.post("/api/export", json={}, headers=_write_headers(client))
    result = await answer.json()
    assert answer.status == 200 and result["count"] > 0
    assert result["masks"].startswith(str(run_path / "exports"))


async def test_realign_shows_the_command_until_it_is_wired(client):
    answer = await client.post("/api/realign", json={}, headers=_write_headers(client))
    body = await answer.json()
    assert answer.status == 501 and body["command"].startswith("lvlmva align --critique ")


async def _hook(run: CritiqueRun) -> str:
    return f"aligned from {run.count()} samples"


@pytest.mark.parametrize("client", [_hook], indirect=True)
async def test_a_wired_realign_hook_runs(client):
    answer = await client.post("/api/realign", json={}, headers=_write_headers(client))
    assert answer.status == 200 and (await answer.json())["message"] == "aligned from 80 samples"


def test_binding_is_loopback_unless_allowed():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, allow_remote=False)
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_bind("0.0.0.0", allow_remote=False)
    check_bind("0.0.0.0", allow_remote=True)


def test_the_command_refuses_a_remote_host_and_names_a_bad_run(tmp_path, capsys, run_path):
    assert main(["review", str(run_path), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["review", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"no critique run at .*missing", err) and err.count("\n") == 1
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    assert main(["review", str(tmp_path / "foreign")]) == 2
    assert "is not a critique run" in capsys.readouterr().err
