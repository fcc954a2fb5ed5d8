"""Plotly heatmaps of patching results, with labelled axes and token labels.

>>> fig = heatmap(result)                                  # doctest: +SKIP
>>> fig                                                    # doctest: +SKIP  (renders inline in Jupyter)
>>> fig.write_html("patch.html", include_plotlyjs=True)    # doctest: +SKIP  (offline HTML)

Layout: ``layer`` (merged with ``head`` into ``L3H7`` rows when both are present) runs
down; position axes (``pos``, ``dest_pos``, ``src_pos``) run across, labelled ``i:token``;
a leading ``act`` axis ("every" sweeps) becomes one panel per activation.
"""

import torch

from mechkit.patching.result import PatchResult

_POSITIONAL = ("pos", "dest_pos", "src_pos")


def heatmap(result: PatchResult, title: str | None = None, zmid: float | None = None):
    """A plotly Figure: one heatmap (or one panel per ``act``) of ``result``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [(None, result.values, result.dims)]
    if result.dims and result.dims[0] == "act":
        acts = result.labels.get("act", [str(i) for i in range(result.shape[0])])
        panels = [(acts[i], result.values[i], result.dims[1:]) for i in range(result.shape[0])]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] or "" for p in panels],
                        horizontal_spacing=0.06) if len(panels) > 1 else go.Figure()
    if zmid is None:
        zmid = 0.0 if result.method == "attribution" else None
    for k, (_, values, dims) in enumerate(panels):
        z, rows, cols, row_name, col_name = _grid(values, dims, result.labels)
        trace = go.Heatmap(
            z=z.tolist(), x=cols, y=rows, colorscale="RdBu", zmid=zmid,
            colorbar={"title": result.metric}, showscale=k == len(panels) - 1,
            hovertemplate=f"{row_name}=%{{y}}<br>{col_name}=%{{x}}<br>{result.metric}=%{{z:.4f}}<extra></extra>",
        )
        if len(panels) > 1:
            fig.add_trace(trace, row=1, col=k + 1)
            fig.update_xaxes(title_text=col_name, type="category", row=1, col=k + 1)
            fig.update_yaxes(title_text=row_name if k == 0 else None, type="category", autorange="reversed", row=1, col=k + 1)
        else:
            fig.add_trace(trace)
            fig.update_xaxes(title_text=col_name, type="category")
            fig.update_yaxes(title_text=row_name, type="category", autorange="reversed")
    default = f"{result.method} patching: {result.sweep} ({result.direction}, {result.metric})"
    fig.update_layout(title=title or default, height=max(350, 28 * len(rows) + 150))
    return fig


def _grid(values: torch.Tensor, dims: tuple[str, ...], labels: dict[str, list[str]]):
    """Arrange an n-d result as a 2-d grid: non-positional axes down, positional axes across."""
    down = [i for i, d in enumerate(dims) if d not in _POSITIONAL]
    across = [i for i, d in enumerate(dims) if d in _POSITIONAL]
    if not across:  # e.g. (layer, head): the last axis goes across
        down, across = down[:-1], down[-1:]
    z = values.permute(*down, *across).reshape(
        int(torch.tensor([values.shape[i] for i in down]).prod()) if down else 1, -1
    )

    def names(axes: list[int]) -> list[str]:
        out = [""]
        for i in axes:
            lab = labels.get(dims[i], [str(j) for j in range(values.shape[i])])
            prefix = "L" if dims[i] == "layer" and len(axes) > 1 else ""
            out = [f"{a}{' ' if a and not prefix and dims[i] != 'head' else ''}{prefix}{b}" for a in out for b in lab]
        return out

    return z, names(down), names(across), " ".join(dims[i] for i in down), " / ".join(dims[i] for i in across)
