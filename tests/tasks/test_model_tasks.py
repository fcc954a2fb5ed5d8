"""Real-model tasks on SmolLM2's tokenizer: token checks, balance, lengths, reproducibility."""

import pytest
import torch

from mechkit.errors import DataError
from mechkit.tasks import needs_model, regenerate, task
from mechkit.tasks.ioi import NAMES

FIELDS = ("clean", "corrupted", "answer", "wrong", "answer_pos")
MODEL_TASKS = ("ioi", "ioi-s2-flip", "repeated-tokens", "capitals")


def same(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def row(pairs, i, which="clean") -> list[int]:
    return getattr(pairs, which)[i, : int(pairs.answer_pos[i]) + 1].tolist()


@pytest.mark.parametrize("name", ["ioi", "ioi-s2-flip"])
def test_ioi_names_are_single_tokens_and_only_s2_changes(tokenizer, name):
    pairs = task(name).generate(64, seed=0, model=tokenizer)
    names = {tokenizer.encode(" " + n, add_special_tokens=False)[0]: n for n in NAMES}
    for i in range(len(pairs)):
        io, s = int(pairs.answer[i]), int(pairs.wrong[i])
        assert io in names and s in names and io != s
        assert tokenizer.decode([io]) == " " + names[io]  # the answer is the name with its leading space
        clean, corrupted = row(pairs, i), row(pairs, i, "corrupted")
        assert len(clean) == len(corrupted)
        changed = [j for j, (a, b) in enumerate(zip(clean, corrupted)) if a != b]
        assert len(changed) == 1 and clean[changed[0]] == s  # the second mention of S, and nothing else
        new = corrupted[changed[0]]
        if name == "ioi":
            assert new in names and new not in (io, s)  # a third name
        else:
            assert new == io
        assert clean.count(io) == 1 and clean.count(s) == 2


def test_ioi_is_balanced_between_abba_and_baba(tokenizer):
    pairs = task("ioi").generate(40, seed=3, model=tokenizer)
    io_first = [row(pairs, i).index(int(pairs.answer[i])) < row(pairs, i).index(int(pairs.wrong[i]))
                for i in range(len(pairs))]
    assert sum(io_first) == 20  # ABBA: IO first; BABA: S first


def test_rows_are_right_padded_with_answer_at_the_last_token(tokenizer):
    pairs = task("ioi").generate(64, seed=0, model=tokenizer)
    assert pairs.clean.shape == pairs.corrupted.shape
    assert len(set(pairs.answer_pos.tolist())) > 1  # templates differ in length
    pad = tokenizer.pad_token_id
    for i in range(len(pairs)):
        end = int(pairs.answer_pos[i]) + 1
        assert (pairs.clean[i, end:] == pad).all() and (pairs.corrupted[i, end:] == pad).all()
        text = tokenizer.decode(row(pairs, i), skip_special_tokens=True)
        assert text.endswith(" to") and row(pairs, i)[-len(tokenizer.encode(text, add_special_tokens=False)):] \
            == tokenizer.encode(text, add_special_tokens=False)
    one = task("ioi", templates=[0]).generate(16, seed=0, model=tokenizer)
    assert (one.answer_pos == one.clean.shape[1] - 1).all()  # one template: one length, no padding


def test_bos_follows_the_model_unless_asked(smollm2, tokenizer):
    bos = smollm2.cfg.default_prepend_bos  # False: SmolLM2's own tokenizer adds no BOS
    pairs = task("ioi").generate(4, seed=0, model=smollm2)
    assert bos is False and pairs.task["params"]["prepend_bos"] is bos and not bool((pairs.clean[:, 0] == 1).any())
    # a tokenizer alone: its own behaviour decides (TransformerLens's wrapper adds a BOS)
    adds = tokenizer.encode("a")[:1] == [tokenizer.bos_token_id]
    pairs = task("ioi").generate(4, seed=0, model=tokenizer)
    assert pairs.task["params"]["prepend_bos"] is adds and bool((pairs.clean[:, 0] == 1).all()) is adds
    plain = task("ioi", prepend_bos=False).generate(4, seed=0, model=tokenizer)
    with_bos = task("ioi", prepend_bos=True).generate(4, seed=0, model=tokenizer)
    assert (with_bos.clean[:, 0] == tokenizer.bos_token_id).all() and torch.equal(with_bos.clean[:, 1:], plain.clean)
    assert (plain.clean[:, 0] != tokenizer.bos_token_id).all()


@pytest.mark.parametrize("name", MODEL_TASKS)
def test_generate_is_deterministic_and_regenerate_rebuilds_it(tokenizer, name):
    t = task(name, filter=False) if name == "capitals" else task(name)
    a, b = t.generate(24, seed=5, model=tokenizer), t.generate(24, seed=5, model=tokenizer)
    assert same(a, b)
    assert not torch.equal(a.clean, t.generate(24, seed=6, model=tokenizer).clean)
    assert not torch.equal(a.clean, t.generate(24, seed=5, split="train", model=tokenizer).clean)
    assert same(regenerate(a.task, tokenizer), a)
    assert a.task["n"] == 24 and a.task["params"]["tokenizer"] and needs_model(name)


def test_test_split_holds_out_name_pairs(tokenizer):
    def name_pairs(split):
        p = task("ioi").generate(300, seed=0, split=split, model=tokenizer)
        return {frozenset((a, w)) for a, w in zip(p.answer.tolist(), p.wrong.tolist())}

    assert not name_pairs("test") & name_pairs("train")


@pytest.mark.parametrize("corruption", ["fresh", "swap"])
def test_repeated_tokens(tokenizer, corruption):
    t = task("repeated-tokens", seq_len=8, corruption=corruption, prepend_bos=False)
    pairs = t.generate(16, seed=0, model=tokenizer)
    assert pairs.clean.shape == (16, 15)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    assert not special & set(torch.cat([pairs.clean, pairs.corrupted]).flatten().tolist())
    first, second = pairs.clean[:, :8], pairs.clean[:, 8:]
    assert torch.equal(first[:, :7], second) and torch.equal(pairs.answer, first[:, 7])
    assert torch.equal(pairs.corrupted[:, 8:], second)
    changed = (pairs.corrupted[:, :8] != first).sum(1)
    if corruption == "swap":
        assert (changed == 1).all() and torch.equal(pairs.wrong, pairs.corrupted[:, 7])
    else:
        assert (changed == 8).all()
        assert not set(pairs.corrupted[0, :8].tolist()) & set(pairs.clean[0, :8].tolist())  # nothing repeats


def test_capitals_without_the_model(tokenizer):
    with pytest.raises(DataError, match="needs the model"):
        task("capitals").generate(4, model=tokenizer)
    pairs = task("capitals", filter=False).generate(16, seed=0, model=tokenizer)
    assert (pairs.answer != pairs.wrong).all() and (pairs.answer_pos == pairs.clean.shape[1] - 1).all()
    assert tokenizer.decode(row(pairs, 0), skip_special_tokens=True).startswith("The capital of ")


def test_bad_input_is_one_line(tokenizer):
    with pytest.raises(DataError, match="pass model="):
        task("ioi").generate(4)
    with pytest.raises(DataError, match="different tokenizer|use the model the pairs were made with"):
        regenerate({**task("ioi").generate(2, model=tokenizer).task, "params": {"tokenizer": "0" * 16}}, tokenizer)
    with pytest.raises(DataError, match="corruption"):
        task("ioi", corruption="abd").generate(2, model=tokenizer)
    with pytest.raises(DataError, match="templates"):
        task("ioi", templates=[99]).generate(2, model=tokenizer)


def test_sae_sources_of_real_model_tasks_are_in_the_models_tokens(smollm2):
    """`mechkit sae cache MODEL --source task:ioi` reads the same pairs the task gives for the model."""
    import torch

    from mechkit.sae.data import load_source
    from mechkit.tasks import task

    got = load_source(smollm2, "task:ioi", n=4, seed=3, split="train")
    want = task("ioi").generate(4, seed=3, split="train", model=smollm2)
    assert torch.equal(got.clean, want.clean) and torch.equal(got.answer, want.answer)
