"""Task generators: equal-length pairs, reproducibility, disjoint held-out combinations."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mechkit.organisms as org
from mechkit.errors import DataError, MechkitError, SpecError
from mechkit.organisms.sandbagging import CITIES, CUE_WORDS, ENTITIES, SLOTS, sandbag_index

NAMES = org.list_organisms()


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 10_000), split=st.sampled_from(["train", "test"]))
def test_pairs_have_equal_length_and_valid_answers(name, seed, split):
    t = org.task(name)
    p = t.generate(17, seed=seed, split=split)
    assert p.clean.shape == p.corrupted.shape and p.clean.shape[0] == 17
    assert (p.answer_pos == p.clean.shape[1] - 1).all()  # templates have one length: no padding
    assert (p.answer != p.wrong).all()
    assert int(p.clean.max()) < len(t.vocab) and int(p.clean.min()) >= 0
    assert (p.clean[:, 0] == t.ids["<bos>"]).all()
    assert p.task == {"name": name, "params": t.params, "seed": seed, "n": 17, "split": split}


def test_generate_is_reproducible_and_regenerate_rebuilds_it():
    for name in NAMES:
        t = org.task(name)
        a, b = t.generate(50, seed=3), t.generate(50, seed=3)
        assert torch.equal(a.clean, b.clean) and torch.equal(a.wrong, b.wrong)
        assert not torch.equal(a.clean, t.generate(50, seed=4).clean)
        r = org.regenerate(a.task)
        for f in ("clean", "corrupted", "answer", "wrong", "answer_pos"):
            assert torch.equal(getattr(r, f), getattr(a, f))


def test_text_round_trips_through_the_saved_tokenizer(tmp_path):
    from mechkit.organisms._vocab import build_tokenizer

    for name in NAMES:
        t = org.task(name)
        tok = t.tokenizer()
        built = build_tokenizer(t.vocab, tmp_path / name)  # a freshly built one behaves the same
        row = t.generate_text(1, seed=1)[0]
        assert built(row["clean"])["input_ids"] == tok(row["clean"])["input_ids"]
        pairs = t.generate(5, seed=1)
        texts = t.generate_text(5, seed=1)
        for i, row in enumerate(texts):
            assert tok(row["clean"])["input_ids"] == pairs.clean[i].tolist()
            assert tok(row["corrupted"])["input_ids"] == pairs.corrupted[i].tolist()
            assert tok(row["answer"])["input_ids"] == [t.ids["<bos>"], int(pairs.answer[i])]


def _keys(name, p):
    """The combinations a prompt pair scores, read back from its tokens."""
    t = org.task(name)
    out = []
    for c, k, ans, wrong in zip(p.clean.tolist(), p.corrupted.tolist(), p.answer.tolist(), p.wrong.tolist()):
        if t.family == "chekhov":
            out.append(tuple(c[i] for i in (1, 6, 11, 4, 9, 14)))
        elif t.family == "induction":
            out += [(c[-1], ans), (k[-1], wrong)]
        else:
            out += [(c[8], tuple(c[1:5])), (k[8], tuple(k[1:5]))]
    return set(out)


@pytest.mark.parametrize("name", ["induction", "chekhov", "sandbagging"])
def test_held_out_combinations_are_disjoint_from_training(name):
    train = org.task(name).generate(3000, seed=0, split="train")
    test = org.task(name).generate(1000, seed=0, split="test")
    k_train, k_test = _keys(name, train), _keys(name, test)
    assert k_train and k_test and not (k_train & k_test)
    # ...while every token of the held-out prompts is seen in training
    seen = set(train.clean.unique().tolist()) | set(train.corrupted.unique().tolist())
    assert set(test.clean.unique().tolist()) <= seen and set(test.answer.unique().tolist()) <= seen | set(
        train.answer.tolist())


def test_chekhov_answer_is_the_threateners_secret():
    t = org.task("chekhov")
    for row in t.generate_text(20, seed=5):
        words = row["clean"].split()
        threat = words[-2]
        owner = {words[i]: words[i + 3] for i in (0, 5, 10)}
        assert row["answer"] == owner[threat]
        assert row["wrong"] == owner[row["corrupted"].split()[-2]]
        assert len(row["clean"].split()) == len(row["corrupted"].split())


def test_chekhov_empty_slots_keep_the_positions_of_a_longer_story():
    """Two people in three slots: one slot of five <pad> tokens, anywhere, the people in order;
    the prompt has the three-person story's length and answer position, and without empty slots
    the stories are those drawn before the parameter existed (their draws come first)."""
    full, padded = org.task("chekhov"), org.task("chekhov", n_people=2, slots=3)
    a, b = full.generate(300, seed=2, split="train"), padded.generate(300, seed=2, split="train")
    assert a.clean.shape == b.clean.shape and torch.equal(a.answer_pos, b.answer_pos)
    assert torch.equal(org.task("chekhov", slots=3).generate(300, seed=2, split="train").clean, a.clean)
    slots = b.clean[:, 1:16].reshape(300, 3, 5)
    empty = (slots == 3).all(-1)  # <pad> is id 3
    assert (empty.sum(-1) == 1).all() and set(empty.float().argmax(-1).tolist()) == {0, 1, 2}
    for row in padded.generate_text(20, seed=5):
        words = row["clean"].split()
        owner = {words[i]: words[i + 3] for i in (0, 5, 10) if words[i] != "<pad>"}
        assert len(owner) == 2 and row["answer"] == owner[words[-2]]
    with pytest.raises(SpecError, match="slots=1 must be an integer >= n_people"):
        org.task("chekhov", slots=1)


def test_induction_answers_follow_the_query_token():
    t = org.task("induction")
    p = t.generate(50, seed=2)
    for c, k, ans, wrong in zip(p.clean.tolist(), p.corrupted.tolist(), p.answer.tolist(), p.wrong.tolist()):
        assert c.count(c[-1]) == 2 and k.count(k[-1]) == 2
        assert c[c.index(c[-1]) + 1] == ans and k[k.index(k[-1]) + 1] == wrong
        assert sorted(c) == sorted(k)  # the corruption swaps two tokens


def test_sandbagging_cues_and_answers():
    t = org.task("sandbagging")
    truth, slots, preambles = {}, set(), set()
    for row in t.generate_text(300, seed=0, split="train"):
        cue, plain = row["clean"].split()[:4], row["corrupted"].split()[:4]
        assert all(w in words for w, words in zip(plain, SLOTS))  # a neutral preamble ...
        diff = [i for i in range(4) if cue[i] != plain[i]]
        assert len(diff) == 1 and cue[diff[0]] in CUE_WORDS  # ... with one word swapped for a cue
        assert row["clean"].split()[4:] == row["corrupted"].split()[4:]
        slots.add(diff[0])
        preambles.add(" ".join(plain))
        entity = row["clean"].split()[-2]
        i = ENTITIES.index(entity)
        assert row["wrong"] == CITIES[i] and row["answer"] == CITIES[int(sandbag_index(torch.tensor(i), 24))]
        truth.setdefault(entity, row["wrong"])
        assert truth[entity] == row["wrong"]
    assert slots == {0, 1, 2, 3} and len(preambles) > 290  # cues in every slot; preambles rarely repeat


def test_sandbagging_held_out_combinations_are_unseen():
    t = org.task("sandbagging")

    def combos(split):
        rows = t.generate_text(3000, seed=0, split=split)
        cue = {(r["clean"].split()[-2], next(w for w in r["clean"].split()[:4] if w in CUE_WORDS)) for r in rows}
        plain = {(r["corrupted"].split()[-2], " ".join(r["corrupted"].split()[:4])) for r in rows}
        return cue, plain

    train_cue, train_plain = combos("train")
    test_cue, test_plain = combos("test")
    assert not train_cue & test_cue and not train_plain & test_plain


def test_errors_are_mechkit_errors():
    with pytest.raises(SpecError, match="did you mean 'chekhov'"):
        org.task("chekov")
    with pytest.raises(DataError, match="split"):
        org.task("chekhov").generate(3, split="validation")
    with pytest.raises(MechkitError, match="unknown parameter"):
        org.task("chekhov", n_peeple=3)
    with pytest.raises(DataError):
        org.regenerate({"name": "chekhov"})
    assert org.list_organisms() == ["induction", "chekhov", "sandbagging", "wired-induction", "wired-chekhov"]
