"""Every registered network: builds, trains a step, has the published size and layout.

Parametrized over ``zoo.list_models()``, so a new variant is tested the day it is registered."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import StochasticDepth

import zoo
from zoo.models import describe, family_of
from zoo.models.common import SkipBlock, count_parameters
from zoo.models.densenet import DenseLayer, Transition

NAMES = zoo.list_models()
CIFAR_DENSENETS = (
    "densenet40_12", "densenet_bc_100_12", "densenet_bc_250_24", "densenet_bc_190_40"
)
# Up to tens of seconds on 2 busy CPU cores: run with -m slow where listed.
VERY_DEEP = {"resnet1202", "plain1202", "preact_resnet1001"}
# Tens of seconds each on 2 busy cores (15-25M parameters, 250-layer concatenations).
HEAVY = {"densenet_bc_250_24", "densenet_bc_190_40"}


def _is_cifar(name: str) -> bool:
    return family_of(name) in ("cifar_resnet", "preact_resnet", "vit") or name in CIFAR_DENSENETS


def _input(name: str, batch: int = 2) -> torch.Tensor:
    # 32 px even for ImageNet nets (their last maps are then 1x1): enough to check the wiring.
    return torch.randn(batch, 3, 32, 32)


def _classes(name: str) -> int:
    return 10 if _is_cifar(name) else 1000


def _slow_if(names: list[str], slow: set[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


# ---------------------------------------------------------------- every network


@pytest.mark.parametrize("name", _slow_if(NAMES, HEAVY))
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    net = zoo.create(name, num_classes=7)
    x = _input(name)
    out = net(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    # Deep plain BN nets explode their gradients at init (plain1202's first layers get
    # inf/NaN in float32): that is the phenomenon the zoo shows, so finiteness is asserted
    # for networks with a skip connection only.
    finite_grads_expected = describe(name)["skip"] != "none"
    for param_name, param in net.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        if finite_grads_expected:
            assert torch.isfinite(param.grad).all(), param_name
    # forward_features / forward_head are the forward pass, split.
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.forward_head(net.forward_features(x)), net(x))


# Exact numbers: torchvision's for the ImageNet nets (DESIGN.md), and counts computed from the
# architecture where the paper only gives a rounded figure (that figure is checked separately).
EXACT_PARAMETERS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "densenet121": 7_978_856, "densenet161": 28_681_000, "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "resnet20": 269_722, "plain20": 269_722,  # 10 classes, option A (community checkpoints)
    "resnet8": 75_290, "plain8": 75_290,  # not in the paper: computed, 1 block per stage
    # ViT-Tiny, patch 4 on 32 px (65 tokens): timm's VisionTransformer of that size has as many
    "vit_tiny_p4_d8": 3_583_306, "plain_vit_tiny_p4_d8": 3_583_306,
    # Plain ImageNet twins have no projection shortcut: resnet minus its downsample layers.
    "plain18": 11_689_512 - 173_824, "plain34": 21_797_672 - 173_824,
    "plain50": 25_557_032 - 2_776_576, "plain101": 44_549_160 - 2_776_576,
    "plain152": 60_192_808 - 2_776_576,
    "densenet40_12": 1_019_722, "densenet_bc_100_12": 769_162,
    "densenet_bc_250_24": 15_324_406, "densenet_bc_190_40": 25_624_430,
    "preact_resnet110": 1_730_522, "preact_resnet164": 1_703_258,
    "preact_resnet1001": 10_327_706,
}
# Millions, to the paper's rounding (He et al. 2015 Table 6; 2016 Table 3; Huang et al. 2017
# Table 2), all for 10 classes. ResNet-1001's paper figure is 10.2M; the authors' architecture
# (fb.resnet.torch preresnet, n = 111) counts 10.33M, so it is pinned exactly above instead.
PAPER_MILLIONS = {
    "resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
    "resnet110": 1.7, "resnet1202": 19.4,
    "densenet40_12": 1.0, "densenet_bc_100_12": 0.8, "densenet_bc_250_24": 15.3,
    "densenet_bc_190_40": 25.6, "preact_resnet110": 1.7, "preact_resnet164": 1.7,
}


def _count_on_meta(name: str, num_classes: int) -> int:
    with torch.device("meta"):  # no memory, no init cost: counts only
        return count_parameters(zoo.create(name, num_classes=num_classes))


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name: str) -> None:
    count = _count_on_meta(name, _classes(name))
    if name in EXACT_PARAMETERS:
        assert count == EXACT_PARAMETERS[name]
    paper = PAPER_MILLIONS.get(name.replace("plain", "resnet") if _is_cifar(name) else name)
    if paper is not None:
        decimals = len(str(paper).split(".")[1])
        assert round(count / 1e6, decimals) == paper, f"{name}: {count:,}"
    assert name in EXACT_PARAMETERS or paper is not None, f"pin {name}'s parameter count"


def test_every_published_number_is_registered() -> None:
    assert set(EXACT_PARAMETERS) | set(PAPER_MILLIONS) <= set(NAMES)


# ---------------------------------------------------------------- plain twins


def _twin(name: str) -> str:
    return "plain_" + name if family_of(name) == "vit" else name.replace("resnet", "plain", 1)


RESIDUAL = [n for n in NAMES if describe(n)["skip"] == "add"]


SLOW_TWINS = VERY_DEEP | {"resnet110", "resnet101", "resnet152"}


@pytest.mark.parametrize("name", _slow_if(RESIDUAL, SLOW_TWINS))
def test_plain_twin_is_the_residual_net_without_shortcuts(name: str) -> None:
    torch.manual_seed(0)
    residual = zoo.create(name, num_classes=10).eval()
    plain = zoo.create(_twin(name), num_classes=10).eval()
    assert describe(_twin(name))["skip"] == "none"
    residual_keys, plain_keys = set(residual.state_dict()), set(plain.state_dict())
    # The plain twin is the residual net's layers minus its shortcut modules, nothing else.
    assert plain_keys <= residual_keys
    extra = residual_keys - plain_keys
    assert all(("downsample" in k or "shortcut" in k or "projection" in k) for k in extra), extra
    if family_of(name) == "cifar_resnet":  # option A shortcuts have no parameters
        assert count_parameters(plain) == count_parameters(residual)
    missing, unexpected = plain.load_state_dict(residual.state_dict(), strict=False)
    assert not missing and set(unexpected) == extra
    x = _input(name)
    with torch.no_grad():
        residual_out = residual(x)
        assert not torch.allclose(plain(x), residual_out, atol=1e-3)
        # Turning the switch off in the residual net gives the plain twin, exactly.
        for module in residual.modules():
            if isinstance(module, SkipBlock):
                module.skip = False
        torch.testing.assert_close(residual(x), plain(x))


# ---------------------------------------------------------------- torchvision layout


@pytest.mark.parametrize(
    "name",
    [
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
        "densenet121", "densenet161", "densenet169", "densenet201",
    ],
)
def test_torchvision_state_dict_gives_identical_logits(name: str) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    # Random BN statistics, so that a wrongly wired BN cannot hide behind identity stats.
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    ours = zoo.create(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def _legacy_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    old = {}
    for key, value in state_dict.items():
        for part in ("norm1", "norm2", "conv1", "conv2", "relu1", "relu2"):
            key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        old[key] = value
    return old


def test_densenet_loads_torchvision_legacy_keys() -> None:
    reference = torchvision.models.densenet121(weights=None).eval()
    # The old files predate BN's num_batches_tracked buffers.
    current = {k: v for k, v in reference.state_dict().items() if "num_batches" not in k}
    legacy = _legacy_densenet_keys(current)
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    ours = zoo.create("densenet121").eval()
    ours.load_state_dict(legacy, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- memory switch


MEMORY_CASES = [
    ("resnet20", {}),
    ("resnet18", {"stem": "cifar", "drop_path": 0.2}),  # recompute must redraw the same masks
    ("resnet50", {"stem": "cifar"}),
    ("preact_resnet164", {}),
    ("densenet40_12", {}),  # single-conv layers: the whole branch is checkpointed
    ("densenet_bc_100_12", {}),
    ("densenet121", {}),
]


def _train_step(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    torch.manual_seed(1)
    out = net(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize(("name", "options"), MEMORY_CASES)
def test_memory_efficient_is_numerically_equal(name: str, options: dict) -> None:
    torch.manual_seed(0)
    normal = zoo.create(name, num_classes=10, **options).train()
    efficient = zoo.create(name, num_classes=10, memory_efficient=True, **options).train()
    efficient.load_state_dict(normal.state_dict())
    x = torch.randn(4, 3, 32, 32)
    out, x_grad = _train_step(normal, x)
    out_efficient, x_grad_efficient = _train_step(efficient, x)
    torch.testing.assert_close(out_efficient, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_grad_efficient, x_grad, atol=1e-5, rtol=1e-4)
    for (param_name, p), q in zip(normal.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=param_name)


@pytest.mark.parametrize("name",
                         ["densenet_bc_100_12", "densenet40_12", "resnet20", "preact_resnet110"])
def test_memory_efficient_mode_updates_bn_statistics_once(name: str) -> None:
    # torch.utils.checkpoint reruns training-mode BNs in backward; their running statistics
    # must still take one momentum step per batch, as in the normal mode.
    normal = zoo.create(name, num_classes=10).train()
    efficient = zoo.create(name, num_classes=10, memory_efficient=True).train()
    efficient.load_state_dict(normal.state_dict())
    x = torch.randn(4, 3, 32, 32)
    _train_step(normal, x)
    _train_step(efficient, x)
    for key, value in normal.state_dict().items():
        torch.testing.assert_close(efficient.state_dict()[key], value, msg=key)


# ---------------------------------------------------------------- depth units


@pytest.mark.parametrize("name", NAMES)
def test_depth_units_in_forward_order_cover_the_network(name: str) -> None:
    with torch.device("meta"):  # forward order only: no memory, no arithmetic
        net = zoo.create(name, num_classes=10)
        x = torch.empty(1, 3, 32 if _is_cifar(name) else 64, 32 if _is_cifar(name) else 64)
    units = net.depth_units()
    assert units[0].stage == "stem" and units[-1].stage == "head"
    order: dict[int, int] = {}

    def record(module: nn.Module, _inputs: object) -> None:
        order.setdefault(id(module), len(order))

    hooks = [m.register_forward_pre_hook(record) for m in net.modules() if not list(m.children())]
    net(x)
    for hook in hooks:
        hook.remove()
    first_call = [
        min(order[id(m)] for m in unit.module.modules() if id(m) in order) for unit in units
    ]
    assert first_call == sorted(first_call), "depth_units out of forward order"
    covered = {id(p) for unit in units for p in unit.module.parameters()}
    assert covered == {id(p) for p in net.parameters()}, "parameters outside every unit"
    blocks = [m for m in net.modules() if isinstance(m, (SkipBlock, DenseLayer, Transition))]
    unit_modules = {id(unit.module) for unit in units}
    assert all(id(b) in unit_modules for b in blocks)
    for unit in units:
        net.get_submodule(unit.name)  # names are real module paths


# ---------------------------------------------------------------- options


def test_skip_types() -> None:
    assert describe("resnet50")["skip"] == "add"
    assert describe("plain50")["skip"] == "none"
    assert describe("preact_resnet164")["skip"] == "add"
    assert describe("preact_plain164")["skip"] == "none"
    assert all(describe(n)["skip"] == "concat" for n in NAMES if n.startswith("densenet"))


def test_cifar_stem_keeps_32px_resolution() -> None:
    net = zoo.create("resnet18", num_classes=10, stem="cifar")
    assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
    assert net.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    assert zoo.create("resnet18").eval().forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 1


def test_in_channels() -> None:
    for name in ("resnet18", "densenet_bc_100_12", "preact_resnet110"):
        out = zoo.create(name, num_classes=10, in_channels=1)(torch.randn(2, 1, 32, 32))
        assert out.shape == (2, 10)


def test_zero_init_residual_makes_every_block_start_as_identity() -> None:
    net = zoo.create("resnet50", zero_init_residual=True).eval()
    blocks = [m for m in net.modules() if isinstance(m, SkipBlock)]
    assert len(blocks) == 16
    x = torch.randn(1, 256, 8, 8)
    block = net.layer1[1]  # an identity-shortcut block
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))
    assert all(b.bn3.weight.abs().sum() == 0 for b in blocks)
    assert zoo.create("resnet50").layer1[1].bn3.weight.abs().sum() > 0


def test_norm_free_cifar_nets_have_no_batchnorm_and_biased_convolutions() -> None:
    net = zoo.create("resnet20", norm="none", shortcut="B")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    convolutions = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(c.bias is not None and not c.bias.any() for c in convolutions)
    assert all(c.bias is None for c in zoo.create("resnet20").modules() if isinstance(c, nn.Conv2d))
    # still the same shapes and depth units as the BN net
    assert [u.name for u in net.depth_units()] == [
        u.name for u in zoo.create("resnet20").depth_units()]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_norm_free_resnet_activations_grow_with_depth_and_plain_ones_do_not() -> None:
    """Without BN, every He-initialised residual block adds its own variance: the features of a
    norm-free ResNet grow exponentially with depth (Fixup, section 2); a plain net's do not."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)

    def feature_std(name: str, **options) -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            return float(zoo.create(name, norm="none", **options).forward_features(x).std())

    # 27 blocks against 3: about sqrt(2)**24 = 4096 in standard deviation
    assert feature_std("resnet56") > 1e3 * feature_std("resnet8")
    assert feature_std("plain56") < feature_std("plain8")
    # init_gain multiplies each of the 55 convolutions' weights: the plain net's output by gain**55
    ratio = feature_std("plain56", init_gain=1.2) / feature_std("plain56")
    assert ratio == pytest.approx(1.2**55, rel=1e-3)


def test_init_gain_scales_the_he_initialised_weights() -> None:
    torch.manual_seed(0)
    base = zoo.create("plain20")
    torch.manual_seed(0)
    scaled = zoo.create("plain20", init_gain=2.0)
    torch.testing.assert_close(scaled.layer2[1].conv1.weight, 2.0 * base.layer2[1].conv1.weight)
    torch.testing.assert_close(scaled.linear.weight, base.linear.weight)  # the head: not a conv


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_cifar_zero_init_residual_starts_every_block_as_the_identity(norm: str) -> None:
    net = zoo.create("resnet20", norm=norm, zero_init_residual=True).eval()
    x = torch.relu(torch.randn(2, 16, 8, 8))  # a block's input is the previous block's ReLU output
    with torch.no_grad():
        torch.testing.assert_close(net.layer1[1](x), x)
    assert zoo.create("resnet20", norm=norm).eval().layer1[1](x).sub(x).abs().max() > 0


def test_fixup_rescale_false_zeroes_the_last_layer_alone() -> None:
    # Fixup without normalisation: the branch's first conv times L^-1/2 (L = 9 blocks in
    # ResNet-20) and the classifier at zero; fixup_rescale=False keeps the He init of both.
    torch.manual_seed(0)
    fixup = zoo.create("resnet20", norm="none", zero_init_residual=True)
    torch.manual_seed(0)
    last_only = zoo.create("resnet20", norm="none", zero_init_residual=True, fixup_rescale=False)
    torch.manual_seed(0)
    default = zoo.create("resnet20", norm="none")
    torch.testing.assert_close(fixup.layer2[1].conv1.weight, default.layer2[1].conv1.weight / 3)
    torch.testing.assert_close(last_only.layer2[1].conv1.weight, default.layer2[1].conv1.weight)
    assert not fixup.linear.weight.any()
    torch.testing.assert_close(last_only.linear.weight, default.linear.weight)
    assert not last_only.layer2[1].conv2.weight.any()  # the last layer starts at zero in both


def test_drop_path_rates_rise_linearly_and_drop_whole_samples() -> None:
    net = zoo.create("resnet34", drop_path=0.3)
    rates = [m.p for m in net.modules() if isinstance(m, StochasticDepth)]
    assert len(rates) == 16
    assert rates[0] == pytest.approx(0.3 / 16) and rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates)
    drop = StochasticDepth(0.5, mode="row").train()
    torch.manual_seed(0)
    out = drop(torch.ones(2000, 3, 2, 2))
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 2).all(1)).all()
    assert 0.45 < (per_sample[:, 0] == 0).float().mean() < 0.55
    drop.eval()
    assert torch.equal(drop(torch.ones(3, 2)), torch.ones(3, 2))
    # Eval mode: the net with drop_path computes what the net without it computes.
    plain_rate = zoo.create("resnet34", drop_path=0.0).eval()
    plain_rate.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), plain_rate(x))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet18", {"stem": "tiny"}, "stem must be one of"),
        ("resnet18", {"drop_path": 1.0}, "drop_path"),
        ("plain18", {"drop_path": 0.1}, "need the skip connection"),
        ("plain50", {"zero_init_residual": True}, "need the skip connection"),
        ("densenet121", {"stem": "cifar"}, "options are: memory_efficient"),
        ("resnet20", {"norm": "group"}, "norm must be one of batch, none"),
        ("resnet20", {"init_gain": 0}, "init_gain must be a number"),
        ("resnet20", {"init_gain": "2"}, "init_gain must be a number"),
        ("plain20", {"zero_init_residual": True}, "needs the skip connection"),
        ("resnet20", {"fixup_rescale": False}, "only changes a net with norm=none"),
        ("resnet20", {"fixup_rescale": "no"}, "fixup_rescale must be true or false"),
        ("resnet18", {"norm": "none"}, "does not take option"),
        ("resnet20", {"widths": (8, 16)}, "widths must be three whole numbers"),
        ("preact_resnet164", {"widths": (4, 0, 16)}, "widths must be three whole numbers"),
    ],
)
def test_bad_options(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        zoo.create(name, **options)


@pytest.mark.parametrize(("name", "last_channels"),
                         [("resnet20", 16), ("preact_resnet110", 16), ("preact_resnet164", 64)])
def test_widths_narrow_every_stage_and_keep_the_depth(name: str, last_channels: int) -> None:
    # the 1000-layer and degradation experiments narrow the stages to 4/8/16 filters (a
    # bottleneck outputs 4x) so that depth, not width, is what they vary
    default, narrow = zoo.create(name), zoo.create(name, widths=(4, 8, 16))
    assert narrow.linear.in_features == last_channels
    assert len(narrow.depth_units()) == len(default.depth_units())
    def count(net):
        return sum(p.numel() for p in net.parameters())
    assert count(narrow) < count(default) / 10
    x = torch.randn(2, 3, 32, 32)
    assert narrow(x).shape == (2, 10)


def test_bad_names() -> None:
    with pytest.raises(ValueError, match=r"6n\+2"):
        zoo.create("resnet21")
    with pytest.raises(ValueError, match="preact_resnet164"):
        zoo.create("preact_resnet50")
    with pytest.raises(zoo.UnknownModelError) as error:
        zoo.create("densenet122")
    for listed in ("densenet121", "preact_resnet1001", "resnet50", "plain18"):
        assert listed in str(error.value)


def test_cifar_densenets_default_to_10_classes() -> None:
    assert zoo.create("densenet_bc_100_12")(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert zoo.create("densenet121")(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_models_md_is_the_catalogue() -> None:
    """docs/MODELS.md holds exactly what `python -m zoo.models --markdown` prints today."""
    from pathlib import Path

    from zoo.models.catalogue import catalogue, markdown_table

    marker = "<!-- generated: python -m zoo.models --markdown -->\n"
    page = (Path(__file__).parents[1] / "docs" / "MODELS.md").read_text()
    assert marker in page, "docs/MODELS.md lost its generated-table marker"
    assert page.split(marker, 1)[1].strip() == markdown_table(catalogue()).strip(), (
        "docs/MODELS.md is stale: regenerate its table with `python -m zoo.models --markdown`"
    )
