"""Models (MLP, DeepLift-safe ResNets) and checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import DeepLift
from torch import nn
from torchvision.models import resnet18, resnet50

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.checkpoint import load_checkpoint, save_checkpoint
from lvlmva.vision.datasets.base import DatasetInfo
from lvlmva.vision.deeplift_safety import make_deeplift_safe
from lvlmva.vision.models import Normalize, build_model


def _info(channels: int = 1, size: int = 16, classes: int = 3) -> DatasetInfo:
    return DatasetInfo(
        name="toy",
        class_names=tuple(f"c{i}" for i in range(classes)),
        channels=channels,
        image_size=size,
        task="toy-task",
        mean=tuple(0.4 + 0.1 * c for c in range(channels)),
        std=tuple(0.2 + 0.05 * c for c in range(channels)),
        group_names=("g0", "g1"),
        options={"seed": 4, "csv": "/data/x.csv"},
    )


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is small and shared
    yield
    torch.set_num_threads(threads)


def _relu_calls(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    calls = {name: 0 for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    handles = [
        m.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name, m in model.named_modules()
        if isinstance(m, nn.ReLU)
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return calls


def test_mlp_is_the_reference_architecture_and_normalises():
    info = _info(channels=3, size=8, classes=4)
    torch.manual_seed(0)
    model = build_model("mlp", info)
    assert isinstance(model[0], Normalize)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(3 * 8 * 8, 256), (256, 4)]
    x = torch.rand(5, 3, 8, 8)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    manual = model.fc2(torch.relu(model.fc1(((x - mean) / std).flatten(1))))
    assert torch.allclose(model(x), manual, atol=1e-6)


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [("resnet18", 1, 16), ("resnet18", 3, 40), ("resnet50", 1, 40)],
)
def test_resnets_take_any_channels_and_classes(arch, channels, size):
    model = build_model(arch, _info(channels=channels, size=size, classes=5)).eval()
    conv1 = model.net.conv1
    assert conv1.in_channels == channels
    assert conv1.kernel_size == ((3, 3) if size <= 32 else (7, 7))
    assert isinstance(model.net.maxpool, nn.Identity) == (size <= 32)
    with torch.no_grad():
        assert model(torch.rand(2, channels, size, size)).shape == (2, 5)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_relu_is_called_exactly_once(arch):
    model = build_model(arch, _info()).eval()
    calls = _relu_calls(model, torch.rand(1, 1, 16, 16))
    assert len(calls) == {"resnet18": 1 + 8 * 2, "resnet50": 1 + 16 * 3}[arch]
    assert set(calls.values()) == {1}
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    # torchvision's own blocks do reuse their ReLU: the hook counter does see reuse
    unsafe = {"resnet18": resnet18, "resnet50": resnet50}[arch](weights=None).eval()
    assert max(_relu_calls(unsafe, torch.rand(1, 3, 32, 32)).values()) > 1


@pytest.mark.parametrize("factory", [resnet18, resnet50])
def test_safe_resnet_computes_the_same_function(factory):
    torch.manual_seed(0)
    unsafe = factory(weights=None, num_classes=4).eval()
    for module in unsafe.modules():  # non-trivial batch-norm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    safe = make_deeplift_safe(copy.deepcopy(unsafe))
    assert safe.state_dict().keys() == unsafe.state_dict().keys()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(safe(x), unsafe(x))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_deeplift_runs_on_the_safe_resnet18():
    torch.manual_seed(0)
    model = build_model("resnet18", _info(channels=3, size=16)).eval()
    x = torch.rand(2, 3, 16, 16)
    attributions, delta = DeepLift(model).attribute(
        x, baselines=torch.zeros_like(x), target=torch.tensor([0, 2]), return_convergence_delta=True
    )
    assert attributions.shape == x.shape and torch.isfinite(attributions).all()
    assert delta.abs().max() < 1e-2  # summation to delta holds: the multipliers are right


class _ReusesReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.relu = nn.Linear(4, 4), nn.Linear(4, 2), nn.ReLU(inplace=True)

    def forward(self, x):
        return self.b(self.relu(self.a(self.relu(x))))


def test_user_models_that_reuse_a_module_get_one_copy_per_use():
    torch.manual_seed(0)
    model = _ReusesReLU()
    safe = make_deeplift_safe(copy.deepcopy(model))
    x = torch.randn(6, 4)
    assert set(_relu_calls(safe, x).values()) == {1} and len(_relu_calls(safe, x)) == 2
    assert torch.equal(safe(x), model(x))
    assert safe.state_dict().keys() == model.state_dict().keys()
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    assert make_deeplift_safe(plain) is plain


def test_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet18"):
        build_model("vgg", _info())


# --- checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["mlp", "resnet18"])
def test_checkpoint_round_trip(tmp_path, arch):
    info = _info()
    torch.manual_seed(1)
    model = build_model(arch, info).eval()
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, arch, info, extra={"lambda": 10.0})
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == arch and raw["info"]["class_names"] == ["c0", "c1", "c2"]
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.info, loaded.extra) == (arch, info, {"lambda": 10.0})
    assert not loaded.model.training
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_checkpoint_errors(tmp_path):
    info = _info()
    with pytest.raises(DataError, match=r"cannot load checkpoint .*nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match=r"cannot load checkpoint .*not a readable torch file"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(DataError, match="not an lvlmva checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    path = save_checkpoint(tmp_path / "m.pt", build_model("mlp", info), "mlp", info)
    payload = torch.load(path, weights_only=True)
    payload["arch"] = "resnet18"
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(DataError, match="weights do not fit a resnet18") as exc:
        load_checkpoint(tmp_path / "mismatch.pt")
    assert "\n" not in str(exc.value)
    payload["arch"], payload["version"] = "mlp", 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(DataError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(tmp_path / "x.pt", build_model("mlp", info), "mlp", info, {"f": object()})


def test_reinitialize_draws_fresh_weights_like_build_model():
    from lvlmva.vision.models import reinitialize

    built = build_model("resnet18", _info(channels=1, size=40))
    trained = copy.deepcopy(built)
    with torch.no_grad():  # as if trained: every weight moved, running statistics filled
        for p in trained.parameters():
            p.add_(0.5)
        for name, b in trained.named_buffers():
            if "running" in name:
                b.add_(3.0)
    state = torch.get_rng_state()
    reinitialize(trained, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    again = copy.deepcopy(trained)
    torch.manual_seed(1)  # a seed is torch.manual_seed(seed) before drawing
    reinitialize(again)
    for (name, a), b in zip(trained.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # reproducible for a seed
    convs = [(m, n) for m, n in zip(trained.modules(), built.modules(), strict=True)
             if isinstance(m, nn.Conv2d)]
    for fresh, original in convs:  # torchvision's rule: Kaiming-normal, fan_out, ReLU gain
        fan_out = fresh.out_channels * fresh.kernel_size[0] * fresh.kernel_size[1]
        assert fresh.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)
        assert not torch.equal(fresh.weight, original.weight)
    for m in trained.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
            assert (m.running_mean == 0).all() and (m.running_var == 1).all()
    fc = trained.net.fc
    bound = 1 / fc.in_features**0.5  # torch's default for nn.Linear
    assert fc.weight.abs().max().item() <= bound and fc.weight.abs().max().item() > bound / 2
