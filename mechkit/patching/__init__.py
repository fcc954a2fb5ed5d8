"""Activation, path and attribution patching: many patches per forward pass, exact results.

>>> import mechkit.patching as mp
>>> result = mp.get_act_patch_attn_head_out_by_pos(model, pairs)     # doctest: +SKIP
>>> result.heatmap().write_html("heads.html", include_plotlyjs=True)  # doctest: +SKIP

Sweeps carry TransformerLens's names (``get_act_patch_*``) and return the same numbers as
``transformer_lens.patching`` (with the batch mean of the metric) as a labelled
:class:`PatchResult`. ``SWEEPS`` lists the sweeps by their short names, used by
:func:`activation_patch`, :func:`attribution_patch` and ``mechkit patch --sweep``.
"""

from mechkit.patching._metrics import MetricError as MetricError
from mechkit.patching._sweeps import EVERY as EVERY, SWEEPS as SWEEPS
from mechkit.patching.activation import (
    activation_patch as activation_patch,
    get_act_patch_attn_head_all_pos_every as get_act_patch_attn_head_all_pos_every,
    get_act_patch_attn_head_by_pos_every as get_act_patch_attn_head_by_pos_every,
    get_act_patch_attn_head_k_all_pos as get_act_patch_attn_head_k_all_pos,
    get_act_patch_attn_head_k_by_pos as get_act_patch_attn_head_k_by_pos,
    get_act_patch_attn_head_out_all_pos as get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_head_out_by_pos as get_act_patch_attn_head_out_by_pos,
    get_act_patch_attn_head_pattern_all_pos as get_act_patch_attn_head_pattern_all_pos,
    get_act_patch_attn_head_pattern_by_pos as get_act_patch_attn_head_pattern_by_pos,
    get_act_patch_attn_head_pattern_dest_src_pos as get_act_patch_attn_head_pattern_dest_src_pos,
    get_act_patch_attn_head_q_all_pos as get_act_patch_attn_head_q_all_pos,
    get_act_patch_attn_head_q_by_pos as get_act_patch_attn_head_q_by_pos,
    get_act_patch_attn_head_v_all_pos as get_act_patch_attn_head_v_all_pos,
    get_act_patch_attn_head_v_by_pos as get_act_patch_attn_head_v_by_pos,
    get_act_patch_attn_out as get_act_patch_attn_out,
    get_act_patch_block_every as get_act_patch_block_every,
    get_act_patch_mlp_out as get_act_patch_mlp_out,
    get_act_patch_resid_mid as get_act_patch_resid_mid,
    get_act_patch_resid_post as get_act_patch_resid_post,
    get_act_patch_resid_pre as get_act_patch_resid_pre,
)
from mechkit.patching.attribution import attribution_patch as attribution_patch
from mechkit.patching.data import read_pairs as read_pairs
from mechkit.patching.path import PathError as PathError, path_patch as path_patch, path_patch_heads as path_patch_heads
from mechkit.patching.plot import heatmap as heatmap
from mechkit.patching.result import PatchResult as PatchResult
