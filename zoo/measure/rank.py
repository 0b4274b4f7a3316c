"""Rank collapse of a Transformer's tokens: how far the token matrix is from rank one.

Dong, Cordonnier, Loukas (2021), "Attention is not all you need: pure attention loses rank
doubly exponentially with depth", section 2: the residual ``res(X) = X - 1 x^T`` of the token
matrix ``X`` (tokens x width) from the nearest matrix whose rows are all one vector ``x``. Pure
self-attention drives it to zero with depth; skip connections (and MLPs) prevent that.

Here in the Frobenius norm, relative to the matrix's own: ``||X - 1 x^T||_F / ||X||_F``, whose
minimising ``x`` is the tokens' mean. 0: every token the same (collapsed); 1: the tokens have
zero mean, nothing shared. (Dong et al. bound a composite l1/l-inf norm; the Frobenius form is
the one that needs no optimisation and is scale-free.) Plain functions, no Lightning.
"""

from __future__ import annotations

import torch


def rank_one_residual(tokens: torch.Tensor) -> torch.Tensor:
    """``||X - 1 mean(X)^T|| / ||X||`` per token matrix, averaged over a batch ``[B, N, D]``
    (or of one ``[N, D]`` matrix), in fp32."""
    x = tokens.float()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    residual = x - x.mean(dim=1, keepdim=True)
    ratio = residual.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-30)
    return ratio.mean()
