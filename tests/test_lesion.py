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


def test_batchnorm_reestimation_uses_the_calibration_images_and_puts_everything_back():
    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10, in_channels=1).eval()
    first_bn = net.bn1
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(16, 1, 12, 12) * 3 + 2
    with experiments.reestimated_batchnorm(net, [(images[:8], None), (images[8:], None)]):
        assert not net.training
        # the stem's BN sees conv1's output: its running mean is that output's channel mean
        # over all 16 images (a cumulative average, not an exponential one of the last batch)
        expected = net.conv1(images).mean(dim=(0, 2, 3))
        torch.testing.assert_close(first_bn.running_mean, expected, rtol=1e-4, atol=1e-4)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert first_bn.momentum == 0.1 and not net.training


def test_random_draws_differ_between_training_seeds_and_repeat_for_one():
    blocks = lesion.deletable_blocks(zoo.create("resnet56", num_classes=10))
    seed0 = lesion.random_deletions(blocks, 4, 20, seed="0:0")
    assert seed0 == lesion.random_deletions(blocks, 4, 20, seed="0:0")
    assert len(seed0) == 4 * 20 and len({names for _, _, names in seed0}) == 80
    seed1 = lesion.random_deletions(blocks, 4, 20, seed="0:1")
    # k >= 2: 300+ possible sets, so independent draws of 20 share only a few by chance
    shared = {n for k, _, n in seed0 if k >= 2} & {n for k, _, n in seed1 if k >= 2}
    assert len(shared) < 10


def test_lesion_statistics_use_the_sample_std_and_the_90_percent_rule():
    from zoo.experiments import lesion_figures

    assert lesion_figures.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # n - 1, not n (0.816)
    rows = [{"run": r, "model": "m", "unit_name": u, "deleted": "intact" if u == "none" else "x",
             "downsampling": u == "d", "accuracy": a}
            for r, accs in (("a", (0.9, 0.85, 0.5, 0.80)), ("b", (0.9, 0.83, 0.5, 0.82)))
            for u, a in zip(("none", "u1", "d", "u2"), accs, strict=True)]
    # u1: mean 0.84 >= 0.81 kept; u2: 0.81 >= 0.81 kept at the border; d: downsampling, not counted
    assert lesion_figures.kept_fraction(rows) == (2, 2)
    assert lesion_figures.kept_fraction(rows, share=0.95) == (0, 2)


def test_gain_against_cost_pairs_each_residual_block_with_its_deletion():
    from zoo.experiments import lesion_figures

    rows = [{"run": "r", "model": "resnet20", "unit_name": f"b{i}", "downsampling": i == 2,
             "deleted": "intact" if i == 0 else "shortcut only", "accuracy": acc,
             "residual_gain": gain}
            for i, (acc, gain) in enumerate([(0.9, math.nan), (0.5, 2.0), (0.1, 9.0),
                                             (0.85, 0.2), (0.7, 1.0)])]
    points = lesion_figures.gain_and_cost(rows)
    assert [(p["unit_name"], round(p["cost"], 6)) for p in points] == [
        ("b1", 40.0), ("b3", 5.0), ("b4", 20.0)]  # the downsampling b2 is left out
    assert lesion_figures.spearman([p["gain"] for p in points], [p["cost"] for p in points]) == \
        pytest.approx(1.0)
    assert "does not predict" in lesion_figures.gain_finding(0.1)
    assert "the less its deletion costs" in lesion_figures.gain_finding(0.6)
