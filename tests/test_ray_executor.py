"""The Ray executor on a local Ray cluster (2 CPUs, shared by the tests of this module): the
same stored samples and verdicts as the local executor on the same seed, the driver's one rate
limit held at the server, no request paid twice, also when a vision worker is SIGKILLed midway
(Ray restarts it and reruns its batches); the CLI's --executor ray resuming a local run.

The rate cap is checked on a 3-s window instead of 60 s: the engine's limiter is built with
`window=3.0`, so `--rpm R` means R requests per 3 s, and the server's `peak_in_window(3.0)` is
the figure `peak_requests_60s` gives for a 60-s window. The limiter's arithmetic is the same
for any window; a short one keeps the test to seconds.

Each actor runs torch with as many threads as it has CPUs (1 here), and torch's kernels give
results that differ in the low bits with the thread count on some CPUs (an AVX-512 Xeon does,
for some batch sizes): the local runs these tests compare with are made with 1 thread too.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install "
                          "-c constraints.txt -e '.[ray]'")

from lvlmva.critics import CriticSettings  # noqa: E402
from lvlmva.engine.ratelimit import RateLimiter  # noqa: E402
from lvlmva.pipeline import CritiqueOptions  # noqa: E402
from lvlmva.pipeline.critique_run import critique_run, sample_order  # noqa: E402
from lvlmva.pipeline.executors import ExecutorSettings, VisionJob  # noqa: E402
from lvlmva.runs import CritiqueRun  # noqa: E402

WINDOW_S, CAP = 3.0, 6
N = 8  # samples: 16 requests, more than two windows' worth


@pytest.fixture(scope="module")
def cluster():
    from ray import cloudpickle

    import tests.ray_support as support

    cloudpickle.register_pickle_by_value(support)  # the workers need not import tests/
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@contextlib.contextmanager
def _threads(n: int):
    """torch on `n` threads inside the block, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    from lvlmva.vision.datasets import load_dataset

    return load_dataset("decoy-digits", seed=0)


@pytest.fixture(scope="module")
def model(digits):
    from lvlmva.vision.models import build_model
    from lvlmva.vision.training import train_classifier

    torch.manual_seed(0)
    net = build_model("mlp", digits.info)  # a little training: explanations need no more
    train_classifier(net, digits.train.subset(range(512)), epochs=1, seed=0, progress=False)
    return net


def _stored(path) -> dict[int, tuple]:
    with CritiqueRun.open(path) as run:
        out = {}
        for index in run.done_indices():
            record, arrays = run.get(index).record, run.arrays(index)
            out[index] = (record.verdicts, record.colors, record.prediction,
                          arrays.labels.tolist(), arrays.attribution.tolist())
        return out


async def _served_run(digits, net, out, *, rpm=None, executor=None, n=N):
    """A critique run against the simulated LVLM served over HTTP; the server's stats."""
    from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
    from lvlmva.pipeline.oracle import oracle_items
    from lvlmva.simulation import DictOracle, SimulatedLVLM, start_sim_server
    from lvlmva.vision.render import PALETTE

    oracle = DictOracle()  # the ground truth of the samples asked for
    for png, mask in oracle_items(digits.train.subset(sample_order(len(digits.train), n, 0))):
        oracle.add(png, mask)
    sim = SimulatedLVLM(oracle=oracle, palette=PALETTE, seed=0)
    server = await start_sim_server(sim)
    provider = OpenAICompatibleProvider(base_url=server.base_url, api_key="sim")
    try:
        result = await critique_run(
            net, digits, out, critic=CriticSettings(rpm=rpm), n=n, progress=False,
            critique=CritiqueOptions(explain_batch=4), providers=(provider, None),
            executor=executor,
        )  # fmt: skip
    finally:
        await server.close()
    return result, sim.stats


async def test_ray_matches_local_holds_the_cap_and_pays_once_when_a_worker_is_killed(
    cluster, digits, model, tmp_path, monkeypatch, capfd
):
    from tests.ray_support import HoldOnce, Killer

    with _threads(1):  # as in the actors
        local, _ = await _served_run(digits, copy.deepcopy(model), tmp_path / "local")
    monkeypatch.setattr(
        "lvlmva.engine.dispatch.RateLimiter", functools.partial(RateLimiter, window=WINDOW_S)
    )
    marker = tmp_path / "hold.pid"
    killer = Killer(marker)
    killer.start()
    held = HoldOnce(copy.deepcopy(model), str(marker))
    result, stats = await _served_run(
        digits, held, tmp_path / "ray", rpm=CAP, executor=ExecutorSettings("ray", workers=2)
    )
    killer.join(timeout=1)
    assert killer.killed is not None  # a vision worker died midway through a batch ...
    assert result.stored == local.stored == {"ok": N}  # ... and no sample was lost
    assert _stored(tmp_path / "ray") == _stored(tmp_path / "local")
    with CritiqueRun.open(tmp_path / "ray") as run:
        assert sorted(run.done_indices()) == sorted(sample_order(len(digits.train), N, 0).tolist())
    assert stats.requests == result.counts.tally.provider_calls == 2 * N > 2 * CAP
    assert stats.duplicate_answers == 0
    assert stats.peak_in_window(WINDOW_S) <= CAP
    # the actors take no object refs in their constructors (ray-project/ray#53727)
    assert "has constructor arguments in the object store" not in capfd.readouterr().err


def test_the_cli_resumes_a_local_run_on_ray_with_the_same_results(
    cluster, digits, model, tmp_path, capsys
):
    from lvlmva.cli import main
    from lvlmva.vision.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", model, "mlp", digits.info)
    common = ["critique", "--model", str(tmp_path / "m.pt"), "--quiet", "--device", "cpu"]
    with _threads(1):  # as in the actors
        assert main([*common, "--n", "10", "--out", str(tmp_path / "local")]) == 0
        assert main([*common, "--n", "6", "--out", str(tmp_path / "ray")]) == 0  # then, on Ray:
    assert main([*common, "--n", "10", "--executor", "ray", "--ray-workers", "2",
                 "--out", str(tmp_path / "ray")]) == 0
    printed = capsys.readouterr().out
    assert "vision: Ray actors" in printed and "6 already stored, now 4 ok" in printed
    assert _stored(tmp_path / "ray") == _stored(tmp_path / "local")


async def test_gpu_workers_on_a_cluster_without_gpus_are_refused_before_any_work(
    cluster, digits, model
):
    from lvlmva.errors import ConfigError
    from lvlmva.pipeline.executors import open_executor

    async with open_executor(ExecutorSettings("ray", gpus_per_worker=1.0)) as executor:
        job = VisionJob(model, digits.train, torch.arange(4), CritiqueOptions(), seed=0,
                        device=torch.device("cpu"))  # fmt: skip
        stream = executor.rendered(job)
        with pytest.raises(ConfigError, match="0 GPUs, too few for one vision worker"):
            await anext(stream)
    assert ray.is_initialized()  # the caller's connection is left open
