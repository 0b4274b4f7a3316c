"""Vision Transformers and their plain twins: the skip connection of the Transformer.

Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words": the image cut into patches (a
convolution with stride = patch size), a class token, learned position embeddings, then
blocks of multi-head self-attention and an MLP, each a *sub-block* with its own skip:

  * ``norm="pre"`` (timm's ``VisionTransformer``, GPT-2): ``x = x + attn(norm1(x))``,
    ``x = x + mlp(norm2(x))``, a final LayerNorm before the head;
  * ``norm="post"`` (Vaswani et al. 2017, the original Transformer): ``x = norm1(x + attn(x))``,
    ``x = norm2(x + mlp(x))``; no final norm (the last sub-block ends in one);
  * ``norm="none"``: ``x = x + attn(x)``, ``x = x + mlp(x)``.

``skip=False`` is the plain twin, built by the same code: nothing differs but the ``x +`` of
each sub-block. Xiong et al. (2020) show that post-LN's gradients near the output are large at
initialisation (hence its warm-up) and pre-LN's are not; Dong et al. (2021) that without skips
the tokens collapse towards rank one with depth (``docs/RESULTS.md``, section 8).

Sizes as in timm (``tiny``: 192 wide, 3 heads; ``small``: 384, 6; ``base``: 768, 12; and the
zoo's ``mini``, 64 wide with 4 heads, for training on a CPU), MLP 4x
wide, GELU, LayerNorm eps 1e-6, qkv with bias; timm's initialisation (truncated normal, std
0.02, for the linear layers and the position embedding; class token N(0, 1e-6)), or with
``init="xavier"`` Xavier-uniform linear layers (Vaswani et al. 2017). Names carry
size, patch and depth: ``vit_tiny_p4_d8`` (32 px: 64 tokens; 28 px: 49 tokens), its plain twin
``plain_vit_tiny_p4_d8``, any depth and patch by name (``vit_small_p16_d12`` with
``image_size=224``: 196 tokens). Deviations from timm: the attention and the MLP sub-blocks are
modules of their own (``blocks.3.attn``, ``blocks.3.mlp``, each ``norm`` + ``branch``), so that
gradient flow, residual gain and lesion see each skip; the position embedding lives in the
patch embedding (the stem).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.common import DepthUnit, Network, SkipBlock, run_blocks

DEFAULT_NUM_CLASSES = 10
DEFAULT_IMAGE_SIZE = 32
# The family's facts, read by the registry's describe(): paper, native input (px per side)
PAPER = "Dosovitskiy et al. 2021"
INPUT_SIZE = DEFAULT_IMAGE_SIZE
RELU_AFTER_ADDITION = False  # x + f(x), post-LN's norm (not a ReLU) at most
NORMS = ("pre", "post", "none")
POOLS = ("token", "mean")  # the class token's output (timm's default), or the tokens' mean
# timm: truncated normal, std 0.02 (timm's ViT); xavier: Xavier-uniform linear weights, the
# original Transformer's and the one Xiong et al. 2020 analyse (docs/RESULTS.md, section 8)
INITS = ("timm", "xavier")
# (width, heads): timm's tiny, small, base; mini is the zoo's own, for training runs on a CPU
SIZES = {"mini": (64, 4), "tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
LAYER_NORM_EPS = 1e-6  # timm's VisionTransformer

# ---------------------------------------------------------------- helpers


def divisors(number: int) -> str:
    """The choices an error message offers: ``"1, 2, 4, 7, 14, 28"``."""
    return ", ".join(str(d) for d in range(1, number + 1) if number % d == 0)


def init_linear(module: nn.Module) -> None:
    """timm's ViT initialisation of a linear layer: truncated normal, std 0.02, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PatchEmbedding(nn.Module):
    """Patches -> tokens: a conv with stride = patch, the class token, position embeddings."""

    def __init__(self, in_channels: int, width: int, patch: int, image_size: int,
                 class_token: bool) -> None:
        super().__init__()
        if image_size % patch != 0:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch {patch}: "
                             f"use a patch that divides it ({divisors(image_size)})")
        self.image_size = image_size
        self.proj = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if class_token else None
        tokens = (image_size // patch) ** 2 + int(class_token)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"this ViT was built for {self.image_size} px images, got "
                             f"{tuple(x.shape[-2:])}: build it with image_size={x.shape[-1]}")
        x = self.proj(x).flatten(2).transpose(1, 2)  # [batch, tokens, width]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class Attention(nn.Module):
    """Multi-head self-attention (timm's layer names ``qkv``, ``proj``)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}: use heads that "
                             f"divide it ({divisors(width)})")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [batch, heads, tokens, head width]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    """Linear, GELU, linear (timm's layer names ``fc1``, ``fc2``)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# ---------------------------------------------------------------- blocks


class SubBlock(SkipBlock):
    """One branch (attention or MLP) with its norm and its skip: ``x + f(norm(x))`` (pre-LN),
    ``norm(x + f(x))`` (post-LN), ``x + f(x)`` (none); ``skip=False`` drops the ``x +``."""

    relu_after_addition = RELU_AFTER_ADDITION

    def __init__(self, branch: nn.Module, width: int, norm: str, skip: bool = True) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.skip = skip
        self.norm_position = norm
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS) if norm != "none" else nn.Identity()
        self.branch = branch

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(self.norm(x) if self.norm_position == "pre" else x)

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def after_addition(self, out: torch.Tensor) -> torch.Tensor:
        """What follows the sum: post-LN's norm, nothing otherwise (also for a lesion)."""
        return self.norm(out) if self.norm_position == "post" else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual_branch(x)
        if self.skip:
            out = x + out  # the skip connection: x + f(x)
        return self.after_addition(out)


class TransformerBlock(nn.Module):
    """An attention sub-block, then an MLP sub-block (none when ``mlp_ratio`` is 0: pure
    attention, as in Dong et al. 2021's rank-collapse theorem)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, norm: str, skip: bool) -> None:
        super().__init__()
        self.attn = SubBlock(Attention(width, heads), width, norm, skip)
        hidden = int(width * mlp_ratio)
        self.mlp = SubBlock(Mlp(width, hidden), width, norm, skip) if hidden > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(x)
        return x if self.mlp is None else self.mlp(x)


# ---------------------------------------------------------------- network


class VisionTransformer(Network):
    def __init__(
        self,
        depth: int,
        patch: int,
        width: int,
        heads: int,
        num_classes: int = DEFAULT_NUM_CLASSES,
        in_channels: int = 3,
        image_size: int = DEFAULT_IMAGE_SIZE,
        skip: bool = True,
        norm: str = "pre",
        mlp_ratio: float = 4.0,
        pool: str = "token",
        memory_efficient: bool = False,
        init: str = "timm",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if depth < 1 or not 0 <= mlp_ratio <= 64:
            raise ValueError(f"ViT needs depth >= 1 and mlp_ratio in [0, 64], got depth {depth}, "
                             f"mlp_ratio {mlp_ratio}")
        self.pool = pool
        self.memory_efficient = memory_efficient
        self.patch_embed = PatchEmbedding(in_channels, width, patch, image_size, pool == "token")
        self.blocks = nn.Sequential(
            *(TransformerBlock(width, heads, mlp_ratio, norm, skip) for _ in range(depth)))
        # pre-LN's sum is never normalised inside a block: timm and GPT-2 add a final norm.
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS) if norm == "pre" else nn.Identity()
        self.head = nn.Linear(width, num_classes)
        self.apply(init_linear)
        if init == "xavier":  # drawn after timm's, so that one seed gives the same position
            for module in self.modules():  # embeddings and class token under both inits
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)

    # forward_features / forward_head / depth_units have the same shape in every family file on
    # purpose: each file reads alone (the `duplicates` tool lists these pairs; they are deliberate).
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        return run_blocks(self.blocks, x, self.memory_efficient)  # [batch, tokens, width]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.head(x[:, 0] if self.pool == "token" else x.mean(dim=1))

    def depth_units(self) -> list[DepthUnit]:
        units = [DepthUnit("patch_embed", "stem", self.patch_embed)]
        for index, block in enumerate(self.blocks):
            units.append(DepthUnit(f"blocks.{index}.attn", "attn", block.attn))
            if block.mlp is not None:
                units.append(DepthUnit(f"blocks.{index}.mlp", "mlp", block.mlp))
        return units + [DepthUnit("head", "head", nn.ModuleList([self.norm, self.head]))]


# ---------------------------------------------------------------- variants

VARIANTS: dict[str, dict[str, Any]] = {
    "vit_tiny_p4_d8": {"size": "tiny", "patch": 4, "depth": 8, "skip": True},
    "plain_vit_tiny_p4_d8": {"size": "tiny", "patch": 4, "depth": 8, "skip": False},
}
_NAME = re.compile(r"^(plain_)?vit_([a-z]+)_p(\d+)_d(\d+)$")


def resolve(name: str) -> dict[str, Any] | None:
    """Any size, patch and depth by name (``vit_small_p16_d12``, ``plain_vit_tiny_p4_d64``)."""
    match = _NAME.match(name)
    if match is None:
        return None
    size, patch, depth = match.group(2), int(match.group(3)), int(match.group(4))
    if size not in SIZES or patch < 1 or depth < 1:
        raise ValueError(
            f"{name}: ViT names are [plain_]vit_<size>_p<patch>_d<depth> with size one of "
            f"{', '.join(SIZES)}, patch and depth >= 1 (vit_tiny_p4_d8, plain_vit_small_p16_d12)")
    return {"size": size, "patch": patch, "depth": depth, "skip": match.group(1) is None}


def skip_type(arguments: dict[str, Any]) -> str:
    return "add" if arguments["skip"] else "none"


# build(): the registry's entry point (zoo/models/__init__.py), the same few lines in every family
# file on purpose, so that each file reads alone.
def build(
    variant: dict[str, Any],
    num_classes: int,
    in_channels: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    skip: bool | None = None,
    norm: str = "pre",
    width: int | None = None,
    heads: int | None = None,
    mlp_ratio: float = 4.0,
    pool: str = "token",
    memory_efficient: bool = False,
    init: str = "timm",
) -> VisionTransformer:
    # skip, width, heads: None takes the name's (plain_ twin; tiny/small/base)
    size_width, size_heads = SIZES[variant["size"]]
    return VisionTransformer(
        variant["depth"],
        variant["patch"],
        width=width or size_width,
        heads=heads or size_heads,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        skip=variant["skip"] if skip is None else skip,
        norm=norm,
        mlp_ratio=mlp_ratio,
        pool=pool,
        memory_efficient=memory_efficient,
        init=init,
    )
