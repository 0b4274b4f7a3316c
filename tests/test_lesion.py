"""The lesion experiment (Veit et al. 2016): a deleted block becomes its shortcut (or the
identity), the network is put back afterwards, the k-random draws are distinct, seeded and spare
the downsampling blocks, and a block whose residual branch is zero changes nothing when deleted."""

from __future__ import annotations

import math

import pytest
import torch

import zoo
from zoo import experiments
from zoo.experiments import LesionError, ShortcutOnly, lesion, lesioned


def _net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = zoo.create(name, num_classes=10, in_channels=1)
    net.train()
    with torch.no_grad():  # non-trivial BN statistics, so that eval mode is not the identity
        net(torch.randn(16, 1, 16, 16))
    return net.eval()


@pytest.mark.parametrize("name", ["resnet8", "plain8", "preact_resnet110"])
def test_lesion_restores_the_network(name):
    net = _net(name)
    x = torch.randn(4, 1, 16, 16)
    before_state = {k: v.clone() for k, v in net.state_dict().items()}
    blocks = [u.name for u in net.depth_units() if u.stage not in ("stem", "head")]
    before_modules = [net.get_submodule(name) for name in blocks]
    with torch.no_grad():
        before = net(x)
    deletable = [u for u in net.depth_units() if u.stage not in ("stem", "head")]
    changed = 0
    for unit in deletable:
        try:
            with lesioned(net, unit.name) as replacement, torch.no_grad():
                assert net.get_submodule(unit.name) is replacement
                changed += not torch.allclose(net(x), before)
        except LesionError:
            assert not unit.module.skip  # only plain blocks that change the shape are refused
    assert changed > 0  # the lesions did something
    with torch.no_grad():
        after = net(x)
    assert torch.equal(after, before)
    assert all(net.get_submodule(name) is module
               for name, module in zip(blocks, before_modules, strict=True))
    state = net.state_dict()
    assert state.keys() == before_state.keys()
    assert all(torch.equal(state[k], before_state[k]) for k in state)


def test_lesion_restores_on_error():
    net = _net("resnet8")
    original = net.get_submodule("layer1.0")
    with pytest.raises(RuntimeError), lesioned(net, "layer1.0"):
        raise RuntimeError("boom")
    assert net.get_submodule("layer1.0") is original


def test_residual_lesion_keeps_only_the_shortcut():
    net = _net("resnet8")
    block = net.get_submodule("layer2.0")  # stride 2: the option-A shortcut pads and subsamples
    x = torch.relu(torch.randn(2, 16, 8, 8))
    with lesioned(net, "layer2.0") as replacement, torch.no_grad():
        assert isinstance(replacement, ShortcutOnly)
        assert torch.equal(replacement(x), torch.relu(block.shortcut_branch(x)))
        identity_block = net.get_submodule("layer1.0")
    with lesioned(net, "layer1.0") as replacement, torch.no_grad():
        # post-activation identity block without f: relu(x) = x for the non-negative x it receives
        assert torch.equal(replacement(x), x)
    assert net.get_submodule("layer1.0") is identity_block
    assert "layer1.0.conv1.weight" in net.state_dict()


def test_preact_lesion_has_no_relu_after_the_addition():
    net = _net("preact_resnet110")
    x = torch.randn(2, 16, 8, 8)  # negative entries survive: nothing follows a pre-act sum
    with lesioned(net, "layer1.3") as replacement, torch.no_grad():
        assert torch.equal(replacement(x), x)


def test_plain_lesion_bypasses_or_refuses():
    net = _net("plain8")
    with lesioned(net, "layer1.0") as replacement:
        assert isinstance(replacement, torch.nn.Identity)
    with pytest.raises(LesionError, match="changes the shape"), lesioned(net, "layer2.0"):
        pass
    dense = zoo.create("densenet40_12", num_classes=10, in_channels=1)
    layer = next(u for u in dense.depth_units() if u.stage == "dense1")
    with pytest.raises(LesionError), lesioned(dense, layer.name):
        pass


def test_lesion_network_rows_mark_downsampling_blocks():
    net = _net("resnet8")
    batches = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    rows = experiments.lesion_network(net, batches)
    assert rows[0]["deleted"] == "intact"
    assert [(r["unit_name"], r["downsampling"]) for r in rows[1:]] == [
        ("layer1.0", False), ("layer2.0", True), ("layer3.0", True)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)


def test_random_deletions_are_distinct_seeded_and_spare_downsampling_blocks():
    blocks = lesion.deletable_blocks(zoo.create("resnet20", num_classes=10))
    assert blocks == [
        f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3) if f"{s}.{i}" not in ("2.0", "3.0")
    ]
    plan = lesion.random_deletions(blocks, max_deleted=7, draws=10, seed=0)
    for k in range(1, 8):
        sets = [names for kk, _, names in plan if kk == k]
        assert len(sets) == min(10, math.comb(7, k)) == len(set(sets))  # distinct draws
        assert all(
            len(names) == k and list(names) == sorted(names, key=blocks.index) for names in sets
        )
    assert plan == lesion.random_deletions(blocks, 7, 10, seed=0)  # seeded
    assert plan != lesion.random_deletions(blocks, 7, 10, seed=1)
    # the sets for one k do not depend on how far the curve goes
    assert [p for p in plan if p[0] <= 3] == lesion.random_deletions(blocks, 3, 10, seed=0)
    assert lesion.deletable_blocks(zoo.create("plain20", num_classes=10)) == blocks  # same places


def _zero_init_resnet(zero_init: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    net = zoo.create("resnet20", num_classes=10, in_channels=1, zero_init_residual=zero_init)
    with torch.no_grad():  # BN statistics of a batch; training would move the zero-init weights
        net.train()(torch.randn(32, 1, 16, 16))
    return net.eval()


def test_deleting_zero_initialised_residual_blocks_keeps_accuracy_exactly():
    """With its residual branches at zero a block is the shortcut alone, so deleting it changes
    nothing -- any block, downsampling ones too, and any k of them. The same lesions of the
    same net with live branches do change its predictions (so the lesions remove something)."""
    images = torch.randn(64, 1, 16, 16)
    for zero_init in (True, False):
        net = _zero_init_resnet(zero_init)
        with torch.no_grad():
            predictions = net(images).argmax(1)  # labels the intact net gets 100% on
        batches = [(images, predictions)]
        single = experiments.lesion_network(net, batches)
        randomised = experiments.lesion_random(net, batches, max_deleted=7, draws=3)
        accuracies = [r["accuracy"] for r in single + randomised]
        assert len(single) == 10 and len(randomised) == 1 + 3 * 6 + 1
        if zero_init:
            assert accuracies == [1.0] * len(accuracies)
        else:
            assert min(accuracies) < 0.9
