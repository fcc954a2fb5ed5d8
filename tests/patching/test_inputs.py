"""Bad input gives one-line mechkit errors; read_pairs; results round-trip; figures."""

import json

import pytest
import torch

from mechkit._types import PromptPairs
from mechkit.errors import DataError, HookNameError, MechkitError, ShapeError
from mechkit.patching import MetricError, PatchResult, activation_patch, heatmap, read_pairs
from tests.conftest import VOCAB, tiny_hooked, word_tokenizer
from tests.patching.helpers import make_pairs


@pytest.fixture(scope="module")
def model():
    return tiny_hooked(seed=1)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, MechkitError)
    return msg


def test_mismatched_prompts(model):
    p = make_pairs()
    with pytest.raises(ShapeError) as err:
        PromptPairs(p.clean, p.corrupted[:, :-1], p.answer, p.wrong, p.answer_pos)
    assert "same batch size and token length" in _one_line(err)
    with pytest.raises(ShapeError) as err:
        PromptPairs(p.clean, p.corrupted[:1], p.answer, p.wrong, p.answer_pos)
    _one_line(err)


def test_bad_metrics(model):
    pairs = make_pairs()
    with pytest.raises(ShapeError) as err:
        activation_patch(model, pairs, "resid-pre", lambda logits, p: logits[:, -1, :2], progress=False)
    assert "expected shape (2,)" in _one_line(err)
    with pytest.raises(ShapeError) as err:
        activation_patch(model, pairs, "resid-pre", lambda logits, p: logits.mean(), progress=False)
    assert "one value per prompt" in _one_line(err)
    with pytest.raises(MetricError) as err:
        activation_patch(model, pairs, "resid-pre", lambda logits, p: logits[:, -1, 0] * float("nan"), progress=False)
    assert "NaN" in _one_line(err)
    with pytest.raises(HookNameError) as err:
        activation_patch(model, pairs, "resid-pre", "logit_dif", progress=False)
    assert "logit-diff" in _one_line(err)


def test_unknown_names_and_ranges(model):
    pairs = make_pairs()
    with pytest.raises(HookNameError) as err:
        activation_patch(model, pairs, "head-out-by-poss", progress=False)
    assert "head-out-by-pos" in _one_line(err)
    with pytest.raises(ShapeError) as err:
        activation_patch(model, pairs, "resid-pre", positions=[0, 9], progress=False)
    assert "positions [9] out of range" in _one_line(err)
    with pytest.raises(ShapeError) as err:
        activation_patch(model, pairs, "resid-pre", layers=[2], progress=False)
    assert "layers 0..1" in _one_line(err)
    with pytest.raises(ShapeError) as err:
        activation_patch(model, pairs, "resid-pre", direction="sideways", progress=False)
    _one_line(err)
    attn_only = tiny_hooked(attn_only=True)
    with pytest.raises(HookNameError) as err:
        activation_patch(attn_only, pairs, "mlp-out", progress=False)
    assert "hook_mlp_out" in _one_line(err)


def _tok_model(tmp_path):
    m = tiny_hooked(seed=1)
    m.set_tokenizer(word_tokenizer(tmp_path / "tok"))
    return m


def test_read_pairs_csv_and_jsonl(tmp_path):
    model = _tok_model(tmp_path)
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("clean,corrupted,answer,wrong_answer\nw1 w2 w3,w1 w5 w3,w7,w8\nw4 w5,w6 w5,w9,w10\n")
    pairs = read_pairs(csv_path, model)
    bos = model.tokenizer.bos_token_id
    assert pairs.clean.tolist()[0] == [bos] + [VOCAB.index(w) for w in ("w1", "w2", "w3")]
    assert pairs.answer_pos.tolist() == [3, 2]  # right-padded second row
    assert pairs.answer.tolist() == [VOCAB.index("w7"), VOCAB.index("w9")]
    jl = tmp_path / "pairs.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"clean": "w1 w2", "corrupted": "w3 w2", "correct_idx": 11, "incorrect_idx": [12]},
        {"clean": "w1 w2 w4", "corrupted": "w3 w2 w4", "correct_idx": "13", "incorrect_idx": 14},
    ]))
    by_id = read_pairs(jl, model.tokenizer, prepend_bos=False)
    assert by_id.wrong.tolist() == [12, 14] and by_id.answer_pos.tolist() == [1, 2]
    assert by_id.clean.shape == (2, 3)
    # the patching engine accepts ragged pairs from files
    r = activation_patch(model, by_id, "resid-pre", progress=False)
    assert r.values.shape == (2, 3) and r.labels["pos"][0].startswith("0:")


def test_read_pairs_reports_every_bad_row_at_once(tmp_path):
    model = _tok_model(tmp_path)
    path = tmp_path / "bad.csv"
    path.write_text(
        "clean,corrupted,answer,wrong_answer\n"
        "w1 w2,w1 w2 w3,w4,w5\n"       # row 1: lengths differ
        "w1 w2,w3 w2,w4,w5\n"          # row 2: fine
        "w1 w2,w3 w2,w4 w6,w5\n"       # row 3: two-token answer
        "w1,w2,w4,w5 w7\n"             # row 4: two-token wrong answer
    )
    with pytest.raises(DataError) as err:
        read_pairs(path, model)
    msg = _one_line(err)
    assert "3 of 4 rows" in msg and "row 1:" in msg and "row 3:" in msg and "row 4:" in msg and "row 2:" not in msg
    (tmp_path / "cols.csv").write_text("clean,corrupted,answer\nw1,w2,w3\n")
    with pytest.raises(DataError) as err:
        read_pairs(tmp_path / "cols.csv", model)
    assert "wrong_answer" in _one_line(err)


def test_result_round_trip_top_and_heatmap(model, tmp_path):
    pairs = make_pairs()
    r = activation_patch(model, pairs, "head-out-by-pos", progress=False)
    r.save(tmp_path / "out")
    back = PatchResult.load(tmp_path / "out")
    assert torch.equal(back.values, r.values) and back.dims == r.dims and back.labels == r.labels
    top = r.top(3, relative_to=r.corrupted_value)
    assert len(top) == 3 and set(top[0][0]) == {"layer", "pos", "head"}
    gaps = [abs(v - r.corrupted_value) for _, v in top]
    assert gaps == sorted(gaps, reverse=True)
    fig = heatmap(r)
    assert fig.data[0].y[0] == "L0H0" and len(fig.data[0].x) == pairs.clean.shape[1]
    html = tmp_path / "fig.html"
    fig.write_html(html, include_plotlyjs=True)
    assert html.stat().st_size > 1_000_000  # plotly.js is inlined: works offline
    every = activation_patch(model, pairs, "block-every", progress=False)
    assert len(heatmap(every).data) == 3
    (tmp_path / "out" / "result.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(MechkitError):
        PatchResult.load(tmp_path / "out")


def test_read_pairs_refuses_what_would_score_silently_wrong(tmp_path):
    model = _tok_model(tmp_path)
    ids = tmp_path / "ids.jsonl"
    for bad in (-1, 100_000, 2**70, True, "w1"):
        ids.write_text(json.dumps({"clean": "w1 w2", "corrupted": "w3 w2", "correct_idx": bad, "incorrect_idx": 5}))
        with pytest.raises(DataError) as err:
            read_pairs(ids, model)
        assert "row 1: correct_idx" in _one_line(err)
    unk = tmp_path / "unk.csv"
    unk.write_text("clean,corrupted,answer,wrong_answer\nw1 w2,w3 w2,Paris,w5\n")
    with pytest.raises(DataError) as err:
        read_pairs(unk, model)
    assert "'Paris' is not in the vocabulary (it becomes <unk>)" in _one_line(err)
    long = tmp_path / "long.csv"
    long.write_text("clean,corrupted,answer,wrong_answer\n" + f"{'w1 ' * 20},{'w2 ' * 20},w3,w4\n")
    with pytest.raises(DataError) as err:
        read_pairs(long, model)
    assert "more than the model's context of 16" in _one_line(err)


def test_read_pairs_file_problems_are_one_line(tmp_path):
    model = _tok_model(tmp_path)
    cases = {
        "latin1.csv": (b"clean,corrupted,answer,wrong_answer\n\xe9,w2,w3,w4\n", "not UTF-8 text (byte 0xe9 on line 2)"),
        "huge.csv": (b"clean,corrupted,answer,wrong_answer\n" + b"w1 " * 50_000 + b",w2,w3,w4\n", "over 131,072"),
        "deep.jsonl": (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        "dup.csv": (b"clean,clean,corrupted,answer,wrong_answer\n", "names column 'clean' twice"),
        "prompt.jsonl": (b'{"clean": ["w1"], "corrupted": "w2", "answer": "w3", "wrong_answer": "w4"}', "clean is a list"),
        "part.jsonl": (b'{"clean": "w1", "corrupted": "w2", "answer": "w3", "wrong_answer": "w4"}\n{"clean": "w1"}',
                       "row 2: it lacks corrupted, answer, wrong_answer"),
        "empty.csv": (b"clean,corrupted,answer,wrong_answer\n ,w2,w3,w4\n", "clean is empty"),
    }
    for name, (content, says) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as err:
            read_pairs(tmp_path / name, model)
        assert says in _one_line(err), name
    with pytest.raises(DataError) as err:
        read_pairs(tmp_path, model)
    assert "is a directory" in _one_line(err)


def test_read_pairs_many_bad_rows_report_counts_and_the_first_ten(tmp_path):
    model = _tok_model(tmp_path)
    path = tmp_path / "many.csv"
    path.write_text("clean,corrupted,answer,wrong_answer\n" + "w1 w2,w1,w3,w4\n" * 50_000)
    with pytest.raises(DataError) as err:
        read_pairs(path, model)
    msg = _one_line(err)
    assert len(msg) < 2000 and "50,000 of 50,000 rows" in msg and "row 10:" in msg and "row 11:" not in msg
    assert "and 49,990 more" in msg


def test_read_pairs_bom_csv_and_source_sha256(tmp_path):
    import hashlib

    model = _tok_model(tmp_path)
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"clean,corrupted,answer,wrong_answer\r\nw1 w2,w3 w2,w4,w5\r\n")
    pairs = read_pairs(path, model)
    assert len(pairs) == 1 and pairs.answer.tolist() == [VOCAB.index("w4")]
    assert pairs.task["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert pairs.task["source"] == str(path) and pairs.task["n"] == 1
