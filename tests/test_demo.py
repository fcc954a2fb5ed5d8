"""`mechkit demo` end to end: writes the artifact and report, and what it wrote verifies."""

import json
import re

from typer.testing import CliRunner

from mechkit.artifacts import load_circuit, verify_circuit
from mechkit.cli import app


def test_demo_writes_a_verified_circuit_and_report(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--prompts", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "faithfulness (resample)" in result.output and "verified" in result.output
    for name in ("chekhov.circuit.json", "chekhov.circuit.html", "report.html", "faithfulness_curve.html",
                 "patching_resid_pre.html", "patching_heads.html", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    circuit = load_circuit(out / "chekhov.circuit.json")
    # the demo keeps the smallest curve budget reaching 0.9 on held-out prompts
    assert summary["faithfulness"][0]["ablation"] == "resample"
    assert summary["faithfulness"][0]["value"] >= 0.9
    assert int(circuit.in_circuit.sum()) == summary["edges"]["circuit"] < summary["edges"]["graph"]
    assert [f.ablation for f in circuit.faithfulness] == ["resample", "mean", "zero"]
    assert verify_circuit(out / "chekhov.circuit.json", device="cpu").passed
    # the EAP-IG integral check is reported, with its parts (its numbers: tests/discovery/test_convergence.py)
    check = summary["eap_ig_convergence"]
    assert check["ig_steps"] == 5 and check["relative_error"] == abs(check["embedding_sum"] - check["total_effect"]) / abs(check["total_effect"])
    assert "EAP-IG integral check" in result.output
    report = (out / "report.html").read_text()
    assert "<script" in report
    # one self-contained report: the three figures embedded, plotly.js inlined once; the
    # standalone figure files share one plotly.min.js instead of inlining 4.6 MB each
    assert report.count("Plotly.newPlot(") == 3 and report.count("plotly.js v") == 1
    assert (out / "plotly.min.js").is_file()
    for name in ("faithfulness_curve.html", "patching_resid_pre.html", "patching_heads.html"):
        assert (out / name).stat().st_size < 500_000
    # offline: nothing is fetched from elsewhere (the SVG namespace URI is only a name)
    # (plotly.js's own bundle is left out of that check: it names plotly.com in a link string)
    from plotly.offline import get_plotlyjs

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", report.replace(get_plotlyjs(), ""))
