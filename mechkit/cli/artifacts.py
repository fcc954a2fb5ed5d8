"""``mechkit verify``, ``mechkit show``, ``mechkit export`` and ``mechkit import``: circuit artifacts."""

from pathlib import Path

import typer

from mechkit.cli import app


def _one_line(err: Exception, path: Path) -> str:
    msg = " ".join(str(err).split())
    if str(path) not in msg and not msg.startswith(path.name):
        msg = f"{path}: {msg}"
    return f"error: {msg}"


@app.command()
def verify(
    files: list[Path] = typer.Argument(..., help="circuit artifacts (*.circuit.json)"),
    tolerance: float = typer.Option(0.02, help="largest absolute faithfulness difference that passes"),
    allow_fingerprint_mismatch: bool = typer.Option(
        False, "--allow-fingerprint-mismatch", help="evaluate even when the model's weights differ"
    ),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
) -> None:
    """Reload each circuit's model and task, re-measure its faithfulness, compare with the record.

    Every file is checked, even after one fails. A file that cannot be read or is refused
    (corrupted, hostile, not a regular file) counts as failed and is reported as one 'error:'
    line on stderr. Exit status: 0 every circuit verified; 1 at least one circuit was re-measured
    and failed its checks; 2 every problem was bad input (only unreadable or refused files).
    """
    from mechkit.artifacts.verify import verify_circuit
    from mechkit.errors import MechkitError

    if tolerance != tolerance or tolerance < 0:
        from mechkit.errors import ArtifactError

        raise ArtifactError(f"--tolerance {tolerance}: must be a number of at least 0")
    passed = failed = unreadable = 0
    for path in files:
        try:
            result = verify_circuit(
                path, tolerance=tolerance, allow_fingerprint_mismatch=allow_fingerprint_mismatch, device=device
            )
        except MechkitError as err:
            unreadable += 1
            typer.echo(_one_line(err, path), err=True)
            continue
        for line in result.lines():
            typer.echo(line)
        passed += result.passed
        failed += not result.passed
    if len(files) > 1:
        typer.echo(f"{passed} of {len(files)} circuits verified"
                   + (f" ({unreadable} could not be read)" if unreadable else ""))
    if failed:
        raise typer.Exit(1)
    if unreadable:
        raise typer.Exit(2)


def _output_file(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    from mechkit.errors import ArtifactError

    if path.is_dir():
        raise ArtifactError(f"{option} {path} is a directory: give a file name")
    if not path.parent.is_dir():
        raise ArtifactError(f"{option} {path}: directory {path.parent} does not exist; create it first")
    if path.exists() and not path.is_file():
        raise ArtifactError(f"{option} {path} exists and is not a regular file: give another file name")


@app.command()
def show(
    file: Path = typer.Argument(..., help="a circuit artifact (*.circuit.json)"),
    html: Path = typer.Option(..., "--html", help="where to write the self-contained HTML page"),
) -> None:
    """Write an offline HTML page drawing the circuit (edge budget slider, scores on hover)."""
    from mechkit.artifacts import load_circuit
    from mechkit.viewer import write_html

    _output_file(html, "--html")
    circuit = load_circuit(file)
    write_html(circuit, html)
    typer.echo(f"wrote {html} ({int(circuit.in_circuit.sum())} of {len(circuit.edge_names)} edges in circuit)")


def _model_cfg(spec: str, d_model: int | None) -> dict:
    if d_model is not None:
        return {"d_model": d_model}
    from mechkit.models.loading import load_config

    cfg = load_config(spec)  # the config alone: no weights are loaded
    return {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "parallel_attn_mlp": bool(cfg.parallel_attn_mlp)}


@app.command()
def export(
    file: Path = typer.Argument(..., help="a circuit artifact (*.circuit.json)"),
    to: str = typer.Option("eap-ig", help="eap-ig (graph JSON) or mib (circuit-track submission folder)"),
    out: Path = typer.Option(..., "--out", "-o", help="output file (eap-ig) or submission directory (mib)"),
    d_model: int = typer.Option(None, help="residual width (default: read from the model spec's config)"),
    mib_task: str = typer.Option(None, help="MIB task name (default: the artifact's task name)"),
    mib_model: str = typer.Option(None, help="MIB model name, e.g. gpt2 (default: from the model spec)"),
) -> None:
    """Export a circuit to EAP-IG's graph JSON or a MIB importance-score submission."""
    from mechkit.artifacts import load_circuit
    from mechkit.artifacts.interchange import write_eap_ig, write_mib
    from mechkit.errors import ArtifactError

    if to not in ("eap-ig", "mib"):
        raise ArtifactError(f"unknown export format {to!r}: use eap-ig or mib")
    if to == "eap-ig":
        _output_file(out, "--out")
    elif out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out} is not a directory: MIB submissions are written into a folder")
    elif not out.parent.is_dir():
        raise ArtifactError(f"--out {out}: directory {out.parent} does not exist; create it first")
    circuit = load_circuit(file)
    cfg = _model_cfg(circuit.model_spec, d_model)
    if to == "eap-ig":
        path = write_eap_ig(circuit, out, **cfg)
    elif to == "mib":
        task = mib_task or str(circuit.task.get("name", ""))
        model = mib_model or circuit.model_spec.split(":")[-1].rstrip("/").split("/")[-1]
        path = write_mib(circuit, out, task=task, model=model, **cfg)
    else:
        raise ArtifactError(f"unknown export format {to!r}: use eap-ig or mib")
    typer.echo(f"wrote {path}")


@app.command(name="import")
def import_(
    file: Path = typer.Argument(..., help="an EAP-IG graph JSON (Graph.to_json)"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the circuit artifact"),
    model: str = typer.Option(None, help="model spec, when the file carries no mechkit metadata"),
    fingerprint: str = typer.Option(None, help="model fingerprint (default: computed from --model)"),
    task: str = typer.Option(None, help="task name, when the file carries no mechkit metadata"),
    method: str = typer.Option(None, help="discovery method, e.g. eap-ig"),
) -> None:
    """Import an EAP-IG graph JSON as a mechkit circuit artifact."""
    from mechkit.artifacts import save_circuit
    from mechkit.artifacts.interchange import read_eap_ig

    _output_file(out, "--out")
    circuit = read_eap_ig(file, model_spec=model, model_fingerprint=fingerprint if fingerprint is not None else (
        "" if model is not None else None), task={"name": task} if task else None, method=method)
    if model is not None and fingerprint is None:  # the file is read and checked before the model loads
        import dataclasses

        from mechkit.models import fingerprint as fp, load_model

        circuit = dataclasses.replace(circuit, model_fingerprint=fp(load_model(model, device="cpu")))
    save_circuit(circuit, out)
    typer.echo(f"wrote {out} ({int(circuit.in_circuit.sum())} of {len(circuit.edge_names)} edges in circuit)")
