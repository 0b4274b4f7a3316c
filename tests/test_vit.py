"""The ViT family (zoo/models/vit.py): timm's block on the same weights, the skip switch, depth
units, lesion, names and config errors; the rank-collapse measure (zoo/measure/rank.py)."""

from __future__ import annotations

import csv
from functools import partial

import pytest
import torch
from torch import nn

import zoo
from zoo.config.source import config_error_line
from zoo.experiments.lesion import ShortcutOnly, lesion_network, lesioned
from zoo.measure.gradients import residual_gains
from zoo.measure.rank import rank_one_residual
from zoo.models.vit import SubBlock, TransformerBlock

VARIANTS = ["vit_tiny_p4_d8", "plain_vit_tiny_p4_d8"]
NORMS = ["pre", "post", "none"]


def small(name: str = "vit_tiny_p4_d3", **options) -> nn.Module:
    """A narrow ViT: the same code as vit_tiny, a fraction of the arithmetic."""
    torch.manual_seed(0)
    return zoo.create(name, width=24, heads=3, **options).eval()


def zero_branches(net: nn.Module) -> None:
    """Every sub-block's last layer at zero: each branch then outputs 0."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, SubBlock):
                last = list(module.branch.children())[-1]
                last.weight.zero_()
                last.bias.zero_()


# ---------------------------------------------------------------- equivalence anchor (timm)


def timm_keys(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under timm's names: sub-block ``attn.norm`` is timm's ``norm1`` etc."""
    renamed = {}
    for key, value in ours.items():
        key = key.replace("patch_embed.cls_token", "cls_token")
        key = key.replace("patch_embed.pos_embed", "pos_embed")
        key = key.replace("attn.norm.", "norm1.").replace("mlp.norm.", "norm2.")
        renamed[key.replace(".branch.", ".")] = value
    return renamed


def test_pre_ln_block_is_timms_block_on_the_same_weights():
    timm = pytest.importorskip("timm")  # in the dev extra
    torch.manual_seed(0)
    ours = TransformerBlock(48, 4, mlp_ratio=4.0, norm="pre", skip=True).eval()
    reference = timm.models.vision_transformer.Block(
        48, 4, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    # random norm scales and biases: identity LayerNorms could hide a norm in the wrong place
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.normal_(0, 0.3)
    missing, unexpected = reference.load_state_dict(timm_keys(ours.state_dict()), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(TransformerBlock(48, 4, 4.0, "post", True).eval()(x),
                                  reference(x), atol=1e-3)


def test_pre_ln_network_is_timms_vision_transformer_on_the_same_weights():
    timm = pytest.importorskip("timm")
    net = zoo.create("vit_tiny_p4_d2", width=48, heads=4).eval()
    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=2, num_heads=4).eval()
    reference.load_state_dict(timm_keys(net.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- shapes and the skip switch


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("image_size, channels, patch, tokens", [
    (28, 1, 4, 49), (32, 3, 4, 64), (224, 3, 16, 196)])
def test_tokens_and_logits_for_the_three_input_sizes(name, image_size, channels, patch, tokens):
    name = name.replace("_p4_d8", f"_p{patch}_d1")
    torch.manual_seed(0)
    net = zoo.create(name, num_classes=7, in_channels=channels, image_size=image_size).eval()
    x = torch.randn(2, channels, image_size, image_size)
    with torch.no_grad():
        features = net.forward_features(x)
        assert features.shape == (2, tokens + 1, 192)  # + the class token
        assert net(x).shape == (2, 7)


def test_an_image_of_another_size_says_how_to_build_for_it():
    with pytest.raises(ValueError, match="image_size=28"):
        small()(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"patch that divides it \(1, 2, 4, 7, 14, 28\)"):
        zoo.create("vit_tiny_p5_d1", image_size=28)
    with pytest.raises(ValueError, match=r"heads that divide it \(1, 2, 3, 4, 6, 8, 12,"):
        zoo.create("vit_tiny_p4_d1", heads=5)


@pytest.mark.parametrize("norm", ["pre", "none"])
def test_with_branches_at_zero_the_skip_net_is_the_identity_on_tokens_and_the_plain_is_not(norm):
    x = torch.randn(2, 3, 32, 32)
    residual, plain = small(norm=norm), small(norm=norm, skip=False)
    zero_branches(residual)
    zero_branches(plain)
    with torch.no_grad():
        tokens = residual.patch_embed(x)
        torch.testing.assert_close(residual.forward_features(x), tokens)
        assert plain.forward_features(x).abs().max() == 0  # nothing passes without the x +


def test_the_plain_twin_differs_in_the_skip_switch_only():
    residual, plain = small(), small("plain_vit_tiny_p4_d3")
    assert zoo.describe("plain_vit_tiny_p4_d3")["skip"] == "none"
    plain.load_state_dict(residual.state_dict(), strict=True)  # the same parameters
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(residual(x), plain(x), atol=1e-3)
        for module in residual.modules():
            if isinstance(module, SubBlock):
                module.skip = False
        torch.testing.assert_close(residual(x), plain(x))
    # model.skip= switches it too, whatever the name
    assert not any(m.skip for m in small(skip=False).modules() if isinstance(m, SubBlock))
    assert all(m.skip for m in small("plain_vit_tiny_p4_d3", skip=True).modules()
               if isinstance(m, SubBlock))


def test_init_is_timms_truncated_normal_or_xavier_and_keeps_the_embeddings():
    timm_net, xavier_net = small(), small(init="xavier")
    qkv = timm_net.blocks[0].attn.branch.qkv.weight
    assert float(qkv.std()) == pytest.approx(0.02, rel=0.1)  # cut at +-2 (absolute), as timm
    bound = (6 / (24 + 72)) ** 0.5  # Xavier-uniform for 24 -> 72
    xavier_qkv = xavier_net.blocks[0].attn.branch.qkv.weight
    assert float(xavier_qkv.abs().max()) <= bound
    assert float(xavier_qkv.std()) == pytest.approx(bound / 3**0.5, rel=0.1)
    torch.testing.assert_close(xavier_net.patch_embed.pos_embed, timm_net.patch_embed.pos_embed)


def test_post_ln_normalises_after_the_sum():
    block = SubBlock(nn.Linear(8, 8), 8, "post").eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.norm(x + block.branch(x)))


# ---------------------------------------------------------------- depth units and measurements


@pytest.mark.parametrize("mlp_ratio", [4.0, 0.0])
def test_depth_units_are_stem_then_attention_and_mlp_per_block_then_head(mlp_ratio):
    net = small(mlp_ratio=mlp_ratio)
    names = [unit.name for unit in net.depth_units()]
    per_block = ["attn", "mlp"] if mlp_ratio else ["attn"]
    assert names == (["patch_embed"]
                     + [f"blocks.{i}.{sub}" for i in range(3) for sub in per_block] + ["head"])
    stages = {unit.stage for unit in net.depth_units()}
    assert stages == {"stem", "head", *per_block}
    covered = {id(p) for unit in net.depth_units() for p in unit.module.parameters()}
    assert covered == {id(p) for p in net.parameters()}  # class token and positions in the stem


def test_residual_gain_is_measured_for_every_sub_block_with_a_skip():
    x = torch.randn(4, 3, 32, 32)
    assert len(residual_gains(small(), x)) == 6
    assert residual_gains(small(skip=False), x) == []


@pytest.mark.parametrize("norm", NORMS)
def test_lesion_deletes_a_sub_block_and_keeps_its_skip(norm):
    net = small(norm=norm)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        intact = net(x)
        reference = small(norm=norm)
        with torch.no_grad():  # the same net with block 1's attention branch at zero
            reference.blocks[1].attn.branch.proj.weight.zero_()
            reference.blocks[1].attn.branch.proj.bias.zero_()
        with lesioned(net, "blocks.1.attn") as replacement:
            assert isinstance(replacement, ShortcutOnly)
            assert isinstance(net.blocks[1].attn, ShortcutOnly)
            lesioned_out = net(x)
        torch.testing.assert_close(lesioned_out, reference(x))
        assert not torch.allclose(lesioned_out, intact, atol=1e-4)
        torch.testing.assert_close(net(x), intact)  # put back


def test_lesion_bypasses_a_plain_sub_block_and_runs_over_every_sub_block():
    net = small("plain_vit_tiny_p4_d3")
    with lesioned(net, "blocks.2.mlp") as replacement:
        assert isinstance(replacement, nn.Identity)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    rows = lesion_network(small(), batches)
    assert [r["unit_name"] for r in rows[1:]] == [
        f"blocks.{i}.{sub}" for i in range(3) for sub in ("attn", "mlp")]
    assert {r["deleted"] for r in rows[1:]} == {"shortcut only"}


# ---------------------------------------------------------------- names and configs


def test_any_size_patch_and_depth_by_name_and_a_bad_name_gets_the_rule():
    with torch.device("meta"):
        assert len(zoo.create("plain_vit_small_p8_d5").blocks) == 5
    with pytest.raises(ValueError, match="size one of mini, tiny, small, base"):
        zoo.create("vit_huge_p4_d8")


@pytest.mark.parametrize("override, line", [
    ("model.norm=side", "model.norm: Invalid value 'side', expected one of [pre, post, none]"),
    ("model.pool=max", "model.pool: Invalid value 'max', expected one of [token, mean]"),
    ("model.skip=sometimes", "model.skip: Value 'sometimes' is not a valid bool (type str)"),
    ("model.init=kaiming", "model.init: Invalid value 'kaiming', expected one of [timm, xavier]"),
])
def test_a_bad_vit_option_gets_one_line_naming_the_key_and_the_allowed_values(
        compose, override, line):
    with pytest.raises(Exception) as raised:  # noqa: PT011 - Hydra's or OmegaConf's
        compose("data=digits", "model=vit_tiny_p4_d8", override)
    assert config_error_line(raised.value) == line


def test_any_depth_name_composes_with_the_families_settings(compose):
    cfg = compose("data=fashion_mnist", "model=plain_vit_tiny_p4_d16", "model.norm=post")
    assert cfg.model.name == "plain_vit_tiny_p4_d16" and cfg.model.image_size == 28
    assert str(cfg.model.norm) == "post"


@pytest.mark.slow
def test_train_py_trains_a_post_ln_plain_vit_and_logs_gradient_flow_per_sub_block(tmp_path):
    from conftest import run_train

    run_train(tmp_path / "run", "model=vit_tiny_p4_d2", "model.width=16", "model.heads=2",
              "model.norm=post", "model.skip=false", "trainer.max_epochs=1",
              "trainer.limit_train_batches=3", "logger=csv")
    with open(tmp_path / "run" / "gradient_flow.csv") as handle:
        units = {row["unit_name"]: row["stage"] for row in csv.DictReader(handle)}
    assert units == {"patch_embed": "stem", "blocks.0.attn": "attn", "blocks.0.mlp": "mlp",
                     "blocks.1.attn": "attn", "blocks.1.mlp": "mlp", "head": "head"}


def test_train_py_refuses_a_bad_norm_in_one_line(tmp_path):
    from conftest import run_train

    result = run_train(tmp_path / "run", "model=vit_tiny_p4_d8", "model.norm=side", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.norm: Invalid value 'side', expected one of [pre, post, none]"]


# ---------------------------------------------------------------- rank collapse measure


def test_rank_one_residual_is_zero_for_equal_tokens_and_one_for_zero_mean_tokens():
    row = torch.randn(1, 1, 16)
    assert float(rank_one_residual(row.expand(3, 10, 16))) == pytest.approx(0.0, abs=1e-6)
    tokens = torch.randn(3, 10, 16)
    centred = tokens - tokens.mean(dim=1, keepdim=True)
    assert float(rank_one_residual(centred)) == pytest.approx(1.0, abs=1e-6)
    # between: a shared row plus small per-token differences
    value = float(rank_one_residual(row + 0.1 * centred))
    assert 0.0 < value < 0.5


def test_pure_attention_without_skips_collapses_the_tokens_and_with_skips_does_not():
    """Dong et al. 2021, at initialisation: attention-only blocks, no norm."""
    x = torch.randn(4, 3, 32, 32)
    residuals = {}
    for skip in (True, False):
        net = small("vit_tiny_p4_d12", skip=skip, norm="none", mlp_ratio=0.0)
        with torch.no_grad():
            residuals[skip] = float(rank_one_residual(net.forward_features(x)))
    assert residuals[False] < 0.05 < 0.5 < residuals[True]


# ---------------------------------------------------------------- experiments without training


def test_a_transformer_blocks_gradient_norm_is_its_sub_blocks_together():
    from zoo.experiments.vit_init import block_norms

    rows = [{"seed": 0, "stage": "stem", "unit_name": "patch_embed", "grad_norm": 9.0},
            {"seed": 0, "stage": "attn", "unit_name": "blocks.0.attn", "grad_norm": 3.0},
            {"seed": 0, "stage": "mlp", "unit_name": "blocks.0.mlp", "grad_norm": 4.0},
            {"seed": 0, "stage": "attn", "unit_name": "blocks.1.attn", "grad_norm": 1.0},
            {"seed": 0, "stage": "head", "unit_name": "head", "grad_norm": 7.0}]
    assert block_norms(rows) == {0: [5.0, 1.0]}


@pytest.mark.slow  # ~25 s on the loaded 2-core machine, mostly drawing
def test_vit_experiments_write_tidy_files_and_redraw_the_same_figures(tmp_path):
    from zoo.experiments.__main__ import main
    from zoo.experiments.tidy import read_csv

    grads, rank = tmp_path / "gradients", tmp_path / "rank"
    assert main(["vit_gradients", "--out", str(grads), "--depths", "1", "2", "--seeds", "1",
                 "--batch-size", "2", "--norms", "post"]) == 0
    assert main(["vit_rank", "--out", str(rank), "--depth", "3", "--seeds", "1",
                 "--batch-size", "2", "--inits", "timm", "--norms", "pre"]) == 0
    summary = read_csv(grads / "vit_gradients_summary.csv")
    assert len(summary) == 2 * 2 * 2  # init x skip x depth
    assert {(r["init"], r["norm"], r["skip"]) for r in summary} == {
        (i, "post", s) for i in ("timm", "xavier") for s in (True, False)}
    rows = read_csv(rank / "vit_rank.csv")
    assert {r["layer"] for r in rows} == {0, 1, 2, 3}
    plain_end = [r["rank_residual"] for r in rows if r["layer"] == 3 and not r["skip"]]
    skip_end = [r["rank_residual"] for r in rows if r["layer"] == 3 and r["skip"]]
    assert max(plain_end) < 0.01 < 0.5 < min(skip_end)  # the collapse, at 3 blocks already
    figures = [grads / "vit_gradients_at_init.png", rank / "vit_rank_at_init.png"]
    before = [path.read_bytes() for path in figures]
    assert main(["redraw", str(grads), str(rank)]) == 0
    assert [path.read_bytes() for path in figures] == before


def test_vit_degradation_overlay_composes_and_names_its_runs_by_norm_and_warm_up(compose):
    from pathlib import Path

    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose("experiment=vit_degradation_cpu", "seed=0"), resolve=True)
    assert cfg["group"] == "vit_degradation_cpu" and cfg["optim"]["name"] == "adamw"
    assert cfg["run_name"] == "vit_mini_p7_d6-pre-warmup0.1-fashion_mnist-s0"
    plain = OmegaConf.to_container(compose(
        "experiment=vit_degradation_cpu", "model=plain_vit_mini_p7_d12", "model.norm=post",
        "scheduler.warmup_fraction=0.0", "seed=1"), resolve=True)
    assert plain["run_name"] == "plain_vit_mini_p7_d12-post-warmup0.0-fashion_mnist-s1"
    configs = Path(__file__).parents[1] / "configs"
    overlay = OmegaConf.load(configs / "experiment" / "vit_degradation_cpu.yaml")
    for model in str(overlay.hydra.sweeper.params.model).split(","):
        assert zoo.describe(model)["family"] == "vit"


def test_rank_after_training_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    from zoo.experiments.vit_init import trained_rank

    sweep_file = tmp_path / "multirun.yaml"
    sweep_file.write_text("hydra: {}\n")
    with pytest.raises(ValueError, match="not a run directory or a .ckpt checkpoint"):
        trained_rank([sweep_file])
