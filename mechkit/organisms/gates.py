"""Hard-concrete gates on every head and MLP, for training organisms whose behaviour lives in a
few components (Louizos et al. 2018, "Learning sparse neural networks through L0
regularization"; applied to attention heads by Voita et al. 2019).

Each component's output is multiplied by a gate in [0, 1]. While training, the gate is a
stretched, clipped sample of a concrete distribution with a learned location ``log_alpha``;
the penalty is the expected number of open gates, which cannot be lowered by rescaling
weights (unlike a norm penalty, which a pre-LayerNorm model sidesteps by shrinking every
output evenly). At evaluation the gate is deterministic, and :meth:`ComponentGates.fold`
writes it into the weights: a closed head's ``W_O`` (an MLP's ``W_out``, ``b_out``) becomes
zero, so the saved organism is a plain HookedTransformer.
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedTransformer

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # temperature and stretch interval of Louizos et al.


class ComponentGates(nn.Module):
    """One gate per (layer, head) and, unless attention-only, per layer's MLP."""

    def __init__(self, model: HookedTransformer, init: float = 3.0, seed: int = 0):
        super().__init__()
        cfg = model.cfg
        self.attn_only = bool(cfg.attn_only)
        self.head_log_alpha = nn.Parameter(torch.full((cfg.n_layers, cfg.n_heads), init))
        self.mlp_log_alpha = nn.Parameter(torch.full((0 if self.attn_only else cfg.n_layers,), init))
        self.noise = torch.Generator().manual_seed(seed)  # gate samples are reproducible

    def sample(self, log_alpha: Tensor) -> Tensor:
        """Training gates: a stretched and clipped concrete sample per component."""
        if not self.training:
            return self.deterministic(log_alpha)
        u = torch.rand(log_alpha.shape, generator=self.noise).clamp(1e-6, 1 - 1e-6).to(log_alpha.device)
        s = torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    @staticmethod
    def deterministic(log_alpha: Tensor) -> Tensor:
        return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def expected_open(self) -> Float[Tensor, ""]:
        """The L0 penalty: the expected number of gates that are not exactly zero."""
        shift = BETA * math.log(-GAMMA / ZETA)
        return torch.sigmoid(self.head_log_alpha - shift).sum() + torch.sigmoid(self.mlp_log_alpha - shift).sum()

    def hooks(self) -> list:
        """Forward hooks applying one gate sample per forward pass (shared by the batch)."""
        n_layers = self.head_log_alpha.shape[0]
        state: dict[str, Tensor] = {}

        def heads(z: Tensor, hook) -> Tensor:  # z: [batch, pos, head, d_head]
            if hook.layer() == 0:  # the first hook of a forward draws every gate
                state["heads"] = self.sample(self.head_log_alpha)
                state["mlps"] = self.sample(self.mlp_log_alpha)
            return z * state["heads"][hook.layer()][:, None]

        def mlp(out: Tensor, hook) -> Tensor:  # out: [batch, pos, d_model]
            return out * state["mlps"][hook.layer()]

        hooks = [(f"blocks.{i}.attn.hook_z", heads) for i in range(n_layers)]
        if not self.attn_only:
            hooks += [(f"blocks.{i}.hook_mlp_out", mlp) for i in range(n_layers)]
        return hooks

    @torch.no_grad()
    def fold(self, model: HookedTransformer) -> dict[str, list]:
        """Write the deterministic gates into ``model``'s weights; returns the gate values."""
        heads = self.deterministic(self.head_log_alpha)
        mlps = self.deterministic(self.mlp_log_alpha)
        for i, block in enumerate(model.blocks):
            block.attn.W_O.mul_(heads[i][:, None, None].to(block.attn.W_O.device))
            if not self.attn_only:
                block.mlp.W_out.mul_(mlps[i])
                block.mlp.b_out.mul_(mlps[i])
        return {"heads": [[round(float(g), 4) for g in row] for row in heads], "mlps": [round(float(g), 4) for g in mlps]}
