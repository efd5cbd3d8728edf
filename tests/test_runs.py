"""The critique run store: manifest, appends, resume, queries, overrides, masks, export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from lvlmva.errors import ConfigError, DataError
from lvlmva.review.synthetic import build_synthetic_run
from lvlmva.runs import CritiqueRun, RunManifest, RunQuery, RunRecord, SampleArrays
from lvlmva.vision.masks import mask_from_verdicts
from lvlmva.vision.render import render_critic_images

NAMES = ("cat", "dog", "eel")


def manifest(**kw) -> RunManifest:
    return RunManifest(dataset="toy", split="train", class_names=NAMES, **kw)


def sample(index: int, *, status: str = "ok", verdicts=None, seed: int = 0):
    """A 6x6 sample with clusters 0, 1, 2 (yellow, magenta, brown) and random responsibilities."""
    rng = np.random.default_rng(seed + index)
    labels = np.array([[-1, 0, 0, 1, 1, -1]] * 3 + [[2, 2, 2, 1, 1, -1]] * 3)
    resp = rng.dirichlet(np.ones(3), size=(6, 6)).transpose(2, 0, 1)
    image = rng.random((1, 6, 6))
    rendered = render_critic_images(image, labels, size=None)
    colours = rendered.colors
    if status == "ok" and verdicts is None:
        verdicts = {"yellow": True, "magenta": False, "brown": True}
    record = RunRecord(
        index=index, split="train", label=index % 3, class_name=NAMES[index % 3], status=status,
        colors=colours, cluster_ids=rendered.cluster_ids, prediction=(index + 1) % 3,
        confidence=0.1 * (index % 10), critique=f"critique {index}",
        verdicts=verdicts if status == "ok" else None,
        agreement={c: 1.0 if index % 2 else 0.5 for c in colours} if status == "ok" else None,
        spurious_colors=("magenta",),
    )
    arrays = SampleArrays(
        images={"original": rendered.original, "clusters": rendered.clusters,
                "overlay": rendered.overlay},
        labels=labels, responsibilities=resp, attribution=rng.normal(size=(6, 6)),
    )
    return record, arrays


@pytest.fixture
def run(tmp_path):
    with CritiqueRun.create(tmp_path / "run", manifest(), sync=False) as r:
        yield r


def test_create_writes_a_manifest_without_secrets_and_it_only_grows(tmp_path):
    m = manifest(critic={"kind": "openai", "api_key": "sk-secret", "critic_model": "gpt-4o"},
                 checkpoint_sha256="ab" * 32)
    with CritiqueRun.create(tmp_path / "r", m) as run:
        assert run.manifest.run_id and run.manifest.created and run.manifest.library_version
        run.extend_manifest(finished="yes")
        run.extend_manifest(finished="yes")  # the same value again is fine
        with pytest.raises(DataError, match="only grows"):
            run.extend_manifest(finished="no")
    text = (tmp_path / "r" / "manifest.json").read_text()
    assert "sk-secret" not in text and "api_key" not in text
    reopened = CritiqueRun.open(tmp_path / "r")
    assert reopened.manifest.critic == {"kind": "openai", "critic_model": "gpt-4o"}
    assert reopened.manifest.extra == {"finished": "yes"}
    with pytest.raises(DataError, match="not empty"):
        CritiqueRun.create(tmp_path / "r", m)


def test_open_names_a_missing_a_foreign_and_a_newer_run(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        CritiqueRun.open(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="is not a critique run"):
        CritiqueRun.open(tmp_path / "other")
    CritiqueRun.create(tmp_path / "new", manifest()).close()
    data = json.loads((tmp_path / "new" / "manifest.json").read_text())
    data["store_version"] = 99
    (tmp_path / "new" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="newer lvlm-va"):
        CritiqueRun.open(tmp_path / "new")


def test_add_is_idempotent_and_resume_retries_failed_samples(run):
    assert run.add(*sample(0)) and run.add(*sample(1, status="failed"))
    assert run.add(sample(2, status="not_run")[0])  # no arrays: allowed when not critiqued
    assert not run.add(*sample(0, verdicts={"yellow": False, "magenta": False, "brown": False}))
    assert run.get(0).record.verdicts == {"yellow": True, "magenta": False, "brown": True}
    assert list(run.done_indices()) == [0]
    assert run.has(1) and not run.has(5)
    assert run.add(*sample(1))  # failed -> critiqued again
    assert list(run.done_indices()) == [0, 1]
    with pytest.raises(DataError, match="needs its arrays"):
        run.add(sample(3)[0])
    with pytest.raises(DataError, match="split"):
        run.add(RunRecord(index=4, split="test", label=0, class_name="cat", status="not_run"))


def test_replace_drops_overrides_with_an_audit_entry_and_old_files(run):
    run.add(*sample(0))
    run.override(0, "yellow", False, reviewer="ann")
    old_files = sorted(p.name for p in (run.root / "samples" / "000000").iterdir())
    assert run.add(*sample(0, seed=7), replace=True)
    got = run.get(0)
    assert got.overrides == {} and got.generation == 1
    assert [e.kind for e in run.audit(0)] == ["verdict", "reset"]
    new_files = sorted(p.name for p in (run.root / "samples" / "000000").iterdir())
    assert all(".g1." in n for n in new_files) and len(new_files) == len(old_files)


def test_arrays_come_back_lazily_and_exactly(run):
    record, arrays = sample(0)
    run.add(record, arrays)
    stored = run.arrays(0)
    assert stored.image("overlay") == arrays.images["overlay"]
    assert np.array_equal(stored.labels, arrays.labels)
    assert stored.responsibilities.dtype == np.float16
    np.testing.assert_allclose(stored.responsibilities, arrays.responsibilities, atol=1e-3)
    expected = mask_from_verdicts(torch.from_numpy(arrays.labels.astype(np.int64)),
                                  record.colors, record.cluster_ids, record.verdicts,
                                  responsibilities=torch.from_numpy(
                                      stored.responsibilities.astype(np.float32)), soft=True)
    np.testing.assert_allclose(stored.mask, expected.numpy(), atol=1e-6)
    with pytest.raises(DataError, match="no image"):
        stored.image("../../etc/passwd")


def _brute(samples, predicate):
    return [s.record.index for s in samples if predicate(s)]


def test_filters_and_sorts_match_a_brute_force_scan(tmp_path):
    run = build_synthetic_run(tmp_path / "s", 120, size=28, seed=3)
    everything = list(run.iter_samples(batch=7))
    assert [s.record.index for s in everything] == list(range(120))
    ok = [s for s in everything if s.effective_verdicts][5]
    run.override(ok.record.index, ok.record.colors[0],
                 not ok.effective_verdicts[ok.record.colors[0]])
    everything = list(run)
    cases = [
        (RunQuery(labels=(2, 3)), lambda s: s.record.label in (2, 3)),
        (RunQuery(predictions=(1,)), lambda s: s.record.prediction == 1),
        (RunQuery(statuses=("failed", "not_run")), lambda s: s.record.status != "ok"),
        (RunQuery(vote_disagreement=True),
         lambda s: bool(s.record.agreement) and min(s.record.agreement.values()) < 1),
        (RunQuery(max_confidence=0.6), lambda s: s.record.confidence < 0.6),
        (RunQuery(min_masked=0.01, max_masked=0.03),
         lambda s: s.effective_masked_share is not None
         and 0.01 <= s.effective_masked_share <= 0.03),
        (RunQuery(truth_disagreement=True),
         lambda s: s.effective_verdicts is not None and any(
             v != (c not in s.record.spurious_colors) for c, v in s.effective_verdicts.items())),
        (RunQuery(overridden=True), lambda s: bool(s.overrides)),
        (RunQuery(misclassified=True), lambda s: s.record.prediction != s.record.label),
    ]
    for query, predicate in cases:
        expected = _brute(everything, predicate)
        assert expected, query  # every filter selects something here
        page = run.query(query, limit=1000)
        assert [s.record.index for s in page.items] == expected, query
        assert page.total == run.count(query) == len(expected)
    by_conf = run.query(RunQuery(sort="confidence", descending=True), offset=10, limit=20)
    confs = [s.record.confidence for s in by_conf.items]
    assert confs == sorted(confs, reverse=True) and len(confs) == 20
    assert confs[0] <= sorted((s.record.confidence for s in everything), reverse=True)[9]
    with pytest.raises(ConfigError, match="unknown sort"):
        RunQuery(sort="colour")


@pytest.mark.parametrize("soft", [False, True])
def test_overrides_change_the_effective_mask_exactly_at_the_toggled_cluster(tmp_path, soft):
    with CritiqueRun.create(tmp_path / "r", manifest(masks="soft" if soft else "hard")) as run:
        record, arrays = sample(0)
        run.add(record, arrays)
        before = run.effective_mask(0)
        after = run.override(0, "brown", False, note="on the stroke? no: a shadow", reviewer="bo")
        assert after.overrides == {"brown": False}
        assert run.effective_verdicts(0) == {"yellow": True, "magenta": False, "brown": False}
        mask = run.effective_mask(0)
        labels = torch.from_numpy(arrays.labels.astype(np.int64))
        resp = torch.from_numpy(run.arrays(0).responsibilities.astype(np.float32))
        expected = mask_from_verdicts(labels, record.colors, record.cluster_ids,
                                      after.effective_verdicts, responsibilities=resp, soft=soft)
        np.testing.assert_allclose(mask, expected.numpy(), atol=1e-6)
        changed = mask != before
        if soft:  # brown (cluster 2) adds its responsibility on the foreground
            delta = np.clip(before + resp[2].numpy(), 0, 1) * (arrays.labels >= 0) - before
            np.testing.assert_allclose(mask - before, delta, atol=1e-6)
        else:  # exactly the pixels of cluster 2
            assert np.array_equal(changed, arrays.labels == 2)
        assert after.effective_masked_share == pytest.approx(float(mask.mean()))
        assert run.override(0, "brown", False).overrides == {"brown": False}  # no change
        assert run.override(0, "brown", True).overrides == {}  # back to the critic's verdict
        trail = run.audit(0)
        assert [(e.color, e.old_verdict, e.new_verdict, e.reviewer) for e in trail] == [
            ("brown", True, False, "bo"), ("brown", False, True, None)]
        assert trail[0].note == "on the stroke? no: a shadow" and trail[0].at
        np.testing.assert_allclose(run.effective_mask(0), before, atol=1e-6)


def test_overrides_and_notes_survive_a_reopen_and_errors_are_clear(tmp_path):
    path = tmp_path / "r"
    with CritiqueRun.create(path, manifest()) as run:
        run.add(*sample(0))
        run.add(*sample(1, status="failed"))
        run.override(0, "magenta", True)
        run.set_note(0, "decoy is faint here", reviewer="cy")
        with pytest.raises(DataError, match="no critic verdicts"):
            run.override(1, "yellow", True)
        with pytest.raises(DataError, match="no cluster coloured 'cyan'"):
            run.override(0, "cyan", True)
        with pytest.raises(DataError, match="not in the run"):
            run.override(9, "yellow", True)
    with CritiqueRun.open(path) as run:
        got = run.get(0)
        assert got.overrides == {"magenta": True} and got.note == "decoy is faint here"
        assert run.effective_mask(1) is None
        summary = run.summary()
        assert summary.by_status == {"ok": 1, "failed": 1, "not_run": 0}
        assert summary.overridden_samples == 1 and summary.notes == 1
        assert summary.audit_entries == 2
        # truth: magenta is spurious; critic said yellow yes, magenta no, brown yes (all right)
        assert summary.critic_accuracy == 1.0 and summary.reviewed_accuracy == pytest.approx(2 / 3)
        assert summary.critic_spurious_recall == 1.0 and summary.reviewed_spurious_recall == 0.0


def test_export_streams_the_reviewed_verdicts_and_masks(run, tmp_path):
    for i in range(5):
        run.add(*sample(i, status="failed" if i == 3 else "ok"))
    run.override(2, "yellow", False)
    result = run.export(tmp_path / "out")
    masks, indices = np.load(result.masks), np.load(result.indices)
    assert result.count == 4 and list(indices) == [0, 1, 2, 4] and masks.shape == (4, 6, 6)
    for row, index in zip(masks, indices, strict=True):
        np.testing.assert_allclose(row, run.effective_mask(int(index)), atol=1e-3)
    lines = [json.loads(x) for x in Path(result.verdicts).read_text().splitlines()]
    assert lines[2]["index"] == 2 and lines[2]["overridden"] == ["yellow"]
    assert lines[2]["verdicts"]["yellow"] is False and lines[2]["critic_verdicts"]["yellow"] is True
    assert [i for i, _ in run.reviewed_masks()] == [0, 1, 2, 4]


def test_one_writer_per_run_but_readers_see_its_rows(tmp_path):
    path = tmp_path / "r"
    writer = CritiqueRun.create(path, manifest(), sync=False)
    writer.add(*sample(0))
    other = CritiqueRun.open(path)
    with pytest.raises(DataError, match="another process"):
        other.add(*sample(1))
    writer.add(*sample(1))
    assert other.count() == 2  # a reader sees committed rows at once
    other.override(1, "yellow", False)  # reviewing while the run fills
    writer.add(*sample(2))
    assert writer.get(1).overrides == {"yellow": False}
    writer.close()
    other.add(*sample(3))  # the lock is free again
    other.close()


def test_bad_records_are_refused_with_the_sample_named():
    with pytest.raises(DataError, match="sample 3: status"):
        RunRecord(index=3, split="train", label=0, class_name="cat", status="done")
    with pytest.raises(DataError, match="sample 4: verdicts must name exactly"):
        RunRecord(index=4, split="train", label=0, class_name="cat", status="ok",
                  colors=("yellow",), cluster_ids=(0,), verdicts={"magenta": True})
    with pytest.raises(DataError, match="does not match labels"):
        SampleArrays(images={}, labels=np.zeros((4, 4), int), mask=np.zeros((3, 3)))


def test_the_database_is_in_wal_mode(run):
    run.add(*sample(0))
    conn = sqlite3.connect(run.root / "run.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


_FILLER = """
import sys
sys.path.insert(0, {tests!r})
from test_runs import sample
from lvlmva.runs import CritiqueRun
run = CritiqueRun.open({path!r})
i = 0
while True:
    run.add(*sample(i, status="failed" if i % 7 == 3 else "ok"))
    run.add(*sample(i, seed=1), replace=True)  # replacements too: old and new files churn
    i += 1
"""


def test_kill_9_mid_fill_leaves_every_sample_fully_in_or_out(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "r"
    CritiqueRun.create(path, manifest()).close()
    code = _FILLER.format(tests=str(Path(__file__).parent), path=str(path))
    child = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        with CritiqueRun.open(path) as reader:
            deadline = time.monotonic() + 60
            while reader.count() < 25 and time.monotonic() < deadline:
                assert child.poll() is None, "the filler died by itself"
                time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    conn = sqlite3.connect(path / "run.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with CritiqueRun.open(path) as run:
        n = run.count()
        assert n >= 25
        for s in run:  # every stored row's files are whole
            stored = run.arrays(s.record.index)
            assert stored.labels.shape == (6, 6)
            assert stored.image("overlay")[:4] == b"\x89PNG"
            if s.record.status == "ok":
                assert run.effective_mask(s.record.index).shape == (6, 6)
        done = set(run.done_indices(("ok", "failed")))
        for i in range(n + 3):  # resume: the stored ones are skipped, the rest added
            if i not in done:
                assert run.add(*sample(i))
        assert run.count() == n + 3
