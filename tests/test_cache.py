"""The verdict cache: keys, persistence, off-loop I/O, single-flight, CLI."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading

import diskcache
import pytest

from lvlmva.cache import SingleFlight, Source, VerdictCache, default_cache_dir
from lvlmva.cli import main
from lvlmva.errors import DataError


def answer(text: str = "hello") -> dict:
    return {"text": text, "usage": [10, 2], "model": "gpt-4o"}


def test_the_cache_imports_nothing_from_the_engine():
    code = (
        "import sys, lvlmva.cache, lvlmva.commands.cache; "
        "print(sorted(m for m in sys.modules if m.startswith('lvlmva.engine')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LVLMVA_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LVLMVA_CACHE_DIR")
    assert default_cache_dir().parts[-2:] == (".cache", "lvlmva")


async def test_values_persist_across_instances_and_io_runs_off_the_loop(tmp_path):
    threads: set[int] = set()
    cache = VerdictCache(tmp_path)
    inner_get, inner_set = cache._cache.get, cache._cache.set

    def spy_get(*a, **k):
        threads.add(threading.get_ident())
        return inner_get(*a, **k)

    def spy_set(*a, **k):
        threads.add(threading.get_ident())
        return inner_set(*a, **k)

    cache._cache.get, cache._cache.set = spy_get, spy_set
    assert await cache.get("k") is None
    await cache.set("k", answer())
    assert await cache.get("k") == answer()
    assert threads and threading.get_ident() not in threads
    assert (cache.hits, cache.misses, cache.writes) == (1, 1, 1)
    await cache.aclose()

    with VerdictCache(tmp_path) as again:
        assert len(again) == 1
        assert again.stats().entries == 1 and again.stats().size_bytes > 0
    reopened = VerdictCache(tmp_path)
    assert await reopened.get("k") == answer()
    await reopened.aclose()


async def test_get_or_compute_runs_the_factory_once_for_concurrent_callers(tmp_path):
    cache = VerdictCache(tmp_path)
    calls = 0

    async def factory():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return answer("computed")

    found = await asyncio.gather(*(cache.get_or_compute("k", factory) for _ in range(5)))
    assert calls == 1
    assert sorted(f.source for f in found) == sorted([Source.COMPUTED] + [Source.SHARED] * 4)
    assert {f.value["text"] for f in found} == {"computed"}
    again = await cache.get_or_compute("k", factory)
    assert again.source is Source.CACHE and calls == 1
    await cache.aclose()


async def test_an_entry_that_does_not_decode_is_a_miss_and_is_replaced(tmp_path):
    cache = VerdictCache(tmp_path)
    await cache.set("k", ["an", "old", "format"])
    calls = 0

    def decode(entry):
        return str(entry["text"])  # a list: TypeError

    async def factory():
        nonlocal calls
        calls += 1
        return "fresh"

    found = await cache.get_or_compute(
        "k", factory, encode=lambda text: {"text": text}, decode=decode
    )
    assert (found.value, found.source, calls) == ("fresh", Source.COMPUTED, 1)
    assert await cache.get("k") == {"text": "fresh"}
    again = await cache.get_or_compute("k", factory, encode=dict, decode=decode)
    assert (again.value, again.source, calls) == ("fresh", Source.CACHE, 1)
    await cache.aclose()


async def test_a_decode_bug_is_not_hidden(tmp_path):
    cache = VerdictCache(tmp_path)
    await cache.set("k", answer())

    def broken(entry):
        raise RuntimeError("a bug in decode")

    with pytest.raises(RuntimeError, match="a bug in decode"):
        await cache.get_or_compute("k", lambda: None, decode=broken)
    await cache.aclose()


async def test_a_failure_reaches_every_waiter_and_is_not_cached(tmp_path):
    cache = VerdictCache(tmp_path)

    async def broken():
        await asyncio.sleep(0.02)
        raise ValueError("provider exploded")

    outcomes = await asyncio.gather(
        *(cache.get_or_compute("k", broken) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await cache.get("k") is None
    await cache.aclose()


async def test_a_waiter_takes_over_when_the_leader_is_cancelled():
    flight: SingleFlight[str] = SingleFlight()
    started = asyncio.Event()
    calls = []

    async def slow(tag):
        calls.append(tag)
        started.set()
        await asyncio.sleep(0.05)
        return tag

    leader = asyncio.create_task(flight.run("k", lambda: slow("leader")))
    await started.wait()
    follower = asyncio.create_task(flight.run("k", lambda: slow("follower")))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await follower == ("follower", False)
    assert calls == ["leader", "follower"] and len(flight) == 0


async def test_waiters_cancelled_with_their_leader_do_not_take_over():
    flight: SingleFlight[str] = SingleFlight()
    started = asyncio.Event()
    calls = []

    async def never(tag):
        calls.append(tag)
        started.set()
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(flight.run("k", lambda t=t: never(t))) for t in "abc"]
    await started.wait()
    for task in tasks:  # as when a run stops: everyone is cancelled at once
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=2.0)
    for task in pending:  # a waiter that took over would wait forever
        task.cancel()
    assert not pending and calls == ["a"] and len(flight) == 0
    assert all(task.cancelled() for task in tasks)


async def test_export_and_clear(tmp_path):
    cache = VerdictCache(tmp_path / "c")
    for i in range(3):
        await cache.set(f"k{i}", answer(f"text {i}"))
    out = tmp_path / "export.jsonl"
    assert cache.export(out) == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == ["k0", "k1", "k2"]
    assert {line["text"] for line in lines} == {"text 0", "text 1", "text 2"}
    assert all(line["usage"] == [10, 2] and line["model"] == "gpt-4o" for line in lines)
    assert cache.clear() == 3 and len(cache) == 0
    await cache.aclose()


async def test_reads_and_writes_are_batched_in_order(tmp_path):
    cache = VerdictCache(tmp_path)
    transactions = 0
    inner_transact = cache._cache.transact

    def counting_transact(*a, **k):
        nonlocal transactions
        transactions += 1
        return inner_transact(*a, **k)

    cache._cache.transact = counting_transact
    await asyncio.gather(*(cache.set(f"k{i}", answer(f"v{i}")) for i in range(40)))
    assert transactions < 40  # the writes of one batch share a transaction
    assert cache.writes == 40 and len(cache) == 40
    # a read queued after a write of the same key, in the same batch, sees the write
    write = asyncio.ensure_future(cache.set("k0", answer("new")))
    read = asyncio.ensure_future(cache.get("k0"))
    await write
    assert (await read)["text"] == "new"
    found = await asyncio.gather(*(cache.get(f"k{i}") for i in range(1, 40)), cache.get("nope"))
    assert [f["text"] for f in found[:-1]] == [f"v{i}" for i in range(1, 40)]
    assert found[-1] is None
    await cache.aclose()


async def test_a_write_completes_when_its_caller_is_cancelled(tmp_path):
    cache = VerdictCache(tmp_path)
    writer = asyncio.ensure_future(cache.set("k", answer("kept")))
    reader = asyncio.ensure_future(cache.get("other"))
    await asyncio.sleep(0)
    writer.cancel()
    reader.cancel()
    await asyncio.gather(writer, reader, return_exceptions=True)
    await cache.aclose()
    with VerdictCache(tmp_path) as again:
        assert again._cache.get("k")["text"] == "kept"


async def test_a_failed_write_reaches_its_caller(tmp_path):
    cache = VerdictCache(tmp_path)

    def broken(*a, **k):
        raise OSError("disk full")

    cache._cache.set = broken
    with pytest.raises(OSError, match="disk full"):
        await cache.set("k", answer())
    cache._cache.set = type(cache._cache).set.__get__(cache._cache)
    assert await cache.get("k") is None
    await cache.aclose()


def test_cache_command(tmp_path, capsys):
    directory = tmp_path / "c"

    async def fill():
        cache = VerdictCache(directory)
        await cache.set("k1", answer())
        await cache.set("k2", answer("other"))
        await cache.aclose()

    asyncio.run(fill())
    assert main(["cache", "stats", "--cache-dir", str(directory), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 2 and stats["directory"] == str(directory)
    out = tmp_path / "all.jsonl"
    assert main(["cache", "export", str(out), "--cache-dir", str(directory)]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert main(["cache", "clear", "--cache-dir", str(directory), "--yes"]) == 0
    assert "2 entries" in capsys.readouterr().out
    assert main(["cache", "stats", "--cache-dir", str(directory), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0


def test_cache_command_uses_the_environment_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LVLMVA_CACHE_DIR", str(tmp_path / "env"))
    assert main(["cache", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["directory"] == str(tmp_path / "env")


def test_cache_command_refuses_an_unwritable_export(tmp_path, capsys):
    target = tmp_path / "missing-folder" / "x.jsonl"
    assert main(["cache", "export", str(target), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_a_damaged_database_is_one_line_and_cache_clear_repairs_it(tmp_path, capsys):
    directory = tmp_path / "c"

    async def fill():
        cache = VerdictCache(directory)
        await cache.set("k", answer())
        await cache.aclose()

    asyncio.run(fill())
    (directory / "cache.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError, match=r"cache\.db is damaged") as info:
        VerdictCache(directory)
    assert "\n" not in str(info.value) and "lvlmva cache clear" in str(info.value)
    assert main(["cache", "stats", "--cache-dir", str(directory)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0]
    assert main(["cache", "clear", "--cache-dir", str(directory), "--yes"]) == 0
    assert "damaged" in capsys.readouterr().out
    with VerdictCache(directory) as cache:  # usable again
        assert len(cache) == 0


def test_cache_stats_creates_nothing_and_counts_by_model(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["cache", "stats", "--cache-dir", str(missing), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exists"] is False
    assert not missing.exists()
    directory = tmp_path / "c"

    async def fill():
        cache = VerdictCache(directory)
        await cache.set("a", answer(), tag="gpt-4o")
        await cache.set("b", answer(), tag="gpt-4o")
        await cache.set("c", answer(), tag="simulated:simulated-critic")
        await cache.set("d", answer())
        await cache.aclose()

    asyncio.run(fill())
    before = sorted(p.name for p in directory.iterdir())
    assert main(["cache", "stats", "--cache-dir", str(directory), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 4 and stats["by_model"] == {"gpt-4o": 2}
    assert stats["simulated_by_model"] == {"simulated-critic": 1} and stats["untagged"] == 1
    assert main(["cache", "stats", "--cache-dir", str(directory)]) == 0
    assert "SIMULATED" in capsys.readouterr().out
    assert sorted(p.name for p in directory.iterdir()) == before


def test_cache_clear_asks_first_unless_yes(tmp_path, capsys, monkeypatch):
    directory = tmp_path / "c"
    with VerdictCache(directory) as cache:
        cache._cache.set("k", answer())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 2
    assert "add --yes" in capsys.readouterr().err
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
    assert "nothing removed" in capsys.readouterr().out
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out


async def test_an_unreadable_entry_is_a_miss_and_a_failed_write_keeps_the_answer(tmp_path):
    cache = VerdictCache(tmp_path)

    def broken_get(*a, **k):
        raise OSError("value file vanished")

    def broken_set(*a, **k):
        raise OSError("disk full")

    cache._cache.get, cache._cache.set = broken_get, broken_set

    async def compute():
        return "fresh"

    found = await cache.get_or_compute("k", compute)
    assert (found.value, found.source) == ("fresh", Source.COMPUTED)
    await cache.aclose()


UNPICKLED: list[str] = []


def _unpickled() -> None:
    UNPICKLED.append("code ran")


class Planted:
    """Loading its pickle runs `_unpickled`."""

    def __reduce__(self):
        return _unpickled, ()


async def test_entries_are_stored_as_json_text_not_pickles(tmp_path):
    cache = VerdictCache(tmp_path)
    await cache.set("k", answer(), tag="gpt-4o")
    await cache.aclose()
    con = sqlite3.connect(tmp_path / "cache.db")
    [(key, value)] = con.execute("SELECT key, value FROM Cache").fetchall()
    con.close()
    assert key == "k" and isinstance(value, str) and json.loads(value) == answer()


async def test_a_pickled_entry_is_never_loaded_and_reads_as_a_miss(tmp_path):
    UNPICKLED.clear()
    with diskcache.Cache(str(tmp_path)) as planted:  # diskcache's default: pickles
        planted.set("k", {"planted": Planted()})
        planted.set(Planted(), answer())  # a pickled key
    cache = VerdictCache(tmp_path)
    assert await cache.get("k") is None

    async def compute():
        return answer("fresh")

    found = await cache.get_or_compute("k", compute)
    assert found.source == Source.COMPUTED
    assert cache.export(tmp_path / "all.jsonl") == 1  # the fresh entry; the pickles skipped
    assert (await cache.get("k"))["text"] == "fresh"
    await cache.aclose()
    assert UNPICKLED == []
