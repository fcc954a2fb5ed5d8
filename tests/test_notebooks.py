"""The notebooks under notebooks/: the expected set, stored without outputs, and each one runs
top to bottom without an error (executed on a copy in a temp directory, so nothing is written
to the repository)."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import ipykernel  # noqa: F401  (the kernel the notebooks run in)
import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = [
    "01_quickstart.ipynb",
    "02_chekhov_blackmail_circuit.ipynb",
    "03_sandbagging_deception.ipynb",
    "04_sae_training.ipynb",
    "05_sharing_circuits.ipynb",
    "06_your_own_model.ipynb",
    "07_real_model_ioi.ipynb",
    "08_real_model_organisms.ipynb",
    "09_one_recipe_two_circuits.ipynb",
]
CELL_TIMEOUT_S = 900  # a hang guard, far above any cell on a loaded machine


def _stripped_problems(nb, where: str) -> list[str]:
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"{where}: code cell {i} has {len(cell.outputs)} stored output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"{where}: code cell {i} has execution_count {cell.execution_count}")
    return problems


def _git_head_version(path: Path) -> str | None:
    """The file as committed at HEAD, or None outside a git checkout / for an uncommitted file."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    rel = path.relative_to(ROOT).as_posix()
    proc = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def _kernel_client(nb, cwd: Path):
    return nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )


def test_notebook_set_is_exactly_the_documented_nine():
    found = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_valid_and_stored_without_outputs(name):
    path = NOTEBOOK_DIR / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("code") >= 3 and kinds.count("markdown") >= 3, "notebooks explain their steps in markdown"
    problems = _stripped_problems(nb, f"{name} (working tree)")
    committed = _git_head_version(path)
    if committed is not None:
        problems += _stripped_problems(nbformat.reads(committed, as_version=4), f"{name} (HEAD)")
    assert not problems, "; ".join(problems) + ": save the notebook with outputs cleared"


def test_kernel_runs_this_interpreter(tmp_path):
    """The python3 kernel must be this environment's Python, or the notebooks would test another install."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    _kernel_client(nb, tmp_path).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream").strip()
    assert Path(printed).resolve() == Path(sys.prefix).resolve()


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_executes_without_errors(name, tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    copy = work / name
    shutil.copy(NOTEBOOK_DIR / name, copy)
    nb = nbformat.read(copy, as_version=4)
    t0 = time.perf_counter()
    try:
        _kernel_client(nb, work).execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{name} failed: {str(err)[-3000:]}")
    seconds = time.perf_counter() - t0
    errors = [
        (i, o.get("ename"), o.get("evalue"))
        for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
        for o in cell.outputs if o.output_type == "error"
    ]
    assert not errors, f"{name}: cells raised {errors}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name}: not every code cell ran"
    # every notebook shows something computed: at least one figure, table or HTML view
    rich = {m for c in code for o in c.outputs if o.output_type in ("execute_result", "display_data") for m in o.data}
    assert rich & {"application/vnd.plotly.v1+json", "text/html"}, f"{name}: no figure or HTML output"
    # the repository's copy is untouched by the run
    assert not _stripped_problems(nbformat.read(NOTEBOOK_DIR / name, as_version=4), name)
    print(f"{name}: {seconds:.1f}s")
