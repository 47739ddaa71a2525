from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from irene.data.catalogue import read_catalogue, read_interactions
from irene.data.wordnet import (
    Synset,
    build_wordnet,
    parse_data_noun,
    parse_index_noun,
    read_lexnames,
    write_wordnet,
)
from irene.data.xc import read_xc, write_xc

REAL_WORDNET_DIR = "/usr/share/wordnet"

LICENSE = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "  2 Princeton University under the following license.  By obtaining, using  ",
    "  3   ",
]


def _line(
    offset: int, lemmas: list[str], ptrs: list[tuple[str, int, str]], gloss: str, lex: int = 3
) -> str:
    words = " ".join(f"{w} {k % 16:x}" for k, w in enumerate(lemmas))
    pointers = "".join(f" {sym} {off:08d} {pos} 0000" for sym, off, pos in ptrs)
    return (
        f"{offset:08d} {lex:02d} n {len(lemmas):02x} {words} {len(ptrs):03d}{pointers} | {gloss}  "
    )


# Hierarchy (hypernym -> hyponyms):
#   100 entity -> 200 animal, 300 plant
#   200 animal -> 400 dog, 500 cat
#   300 plant  -> 700 rose                (only one hyponym: not a label at min_hyponyms=2)
#   400 dog    -> 800 puppy, 600 Fido (@i instance pointer)
TINY = {
    100: (["entity"], [("~", 200, "n"), ("~", 300, "n")], "that which exists"),
    200: (["animal", "beast"], [("@", 100, "n"), ("~", 400, "n"), ("~", 500, "n")], "a beast"),
    300: (["plant"], [("@", 100, "n"), ("~", 700, "n")], "a living organism; green"),
    400: (
        ["dog", "domestic_dog", "Canis_familiaris"],
        [("@", 200, "n"), ("+", 1234, "v"), ("~", 800, "n"), ("~i", 600, "n")],
        'a member of the genus Canis; "the dog barked all night"',
    ),
    500: (["cat", "true_cat"], [("@", 200, "n"), ("-c", 4321, "a")], "feline mammal"),
    600: (["Fido"], [("@i", 400, "n")], "a famous dog"),
    700: (["rose", "rosebush"], [("@", 300, "n")], "a shrub"),
    800: (["puppy"], [("@", 400, "n")], "a young dog"),
}


LEX = {400: 5, 500: 5, 600: 18, 800: 5, 300: 20, 700: 20}  # noun.animal, noun.person, noun.plant
# index.noun sense order: "dog" has an earlier sense (an offset not in data.noun), so dog.n.02
SENSES = {"dog": [999, 400], "fido": [600], "rose": [123, 456, 700]}
NAMES = {
    100: "entity.n.01",
    200: "animal.n.01",
    300: "plant.n.01",
    400: "dog.n.02",
    500: "cat.n.01",
    600: "fido.n.01",
    700: "rose.n.03",
    800: "puppy.n.01",
}
DEPTH = {100: 0, 200: 1, 300: 1, 400: 2, 500: 2, 600: 3, 700: 2, 800: 3}


def _index_noun() -> str:
    senses: dict[str, list[int]] = {}
    for off in sorted(TINY):
        for lemma in TINY[off][0]:
            senses.setdefault(lemma.lower(), [])
            senses[lemma.lower()].append(off)
    senses.update(SENSES)
    lines = [
        f"{lemma} n {len(offs)} 1 @ {len(offs)} 0 " + " ".join(f"{o:08d}" for o in offs) + "  "
        for lemma, offs in sorted(senses.items())
    ]
    return "\n".join(LICENSE + lines) + "\n"


def _text(offset: int) -> str:
    lemmas, _, gloss = TINY[offset]
    return ", ".join(w.replace("_", " ") for w in lemmas) + ": " + gloss


@pytest.fixture
def tiny_dir(tmp_path):
    lines = LICENSE + [_line(o, *TINY[o], lex=LEX.get(o, 3)) for o in sorted(TINY)]
    (tmp_path / "data.noun").write_text("\n".join(lines) + "\n")
    (tmp_path / "index.noun").write_text(_index_noun())
    return tmp_path


def _labels_by_offset(ds) -> dict[int, set[int]]:
    """{query offset: {label offsets}} recovered through the unique texts."""
    offset_of = {_text(o): o for o in TINY}
    out = {}
    for X, Y in ((ds.trn_X, ds.trn_X_Y), (ds.tst_X, ds.tst_X_Y)):
        for i, text in enumerate(X):
            out[offset_of[text]] = {offset_of[ds.Y[j]] for j in Y[i].indices}
    return out


def test_parse_data_noun(tiny_dir):
    syn = parse_data_noun(tiny_dir / "data.noun")
    assert sorted(syn) == sorted(TINY)
    dog = syn[400]
    assert dog == Synset(
        400,
        ("dog", "domestic_dog", "Canis_familiaris"),
        'a member of the genus Canis; "the dog barked all night"',
        (200,),
        5,
    )
    assert dog.text == _text(400)
    assert dog.text.startswith("dog, domestic dog, Canis familiaris: a member")
    assert syn[600].hypernyms == (400,)  # @i instance hypernym
    assert syn[100].hypernyms == ()


def test_parse_hex_word_count(tmp_path):
    lemmas = [f"w{k}" for k in range(11)]  # w_cnt "0b", lex_id up to "a"
    (tmp_path / "data.noun").write_text(_line(5, lemmas, [("@", 9, "n")], "g") + "\n")
    assert "n 0b w0 0" in (tmp_path / "data.noun").read_text()
    syn = parse_data_noun(tmp_path / "data.noun")
    assert syn[5].lemmas == tuple(lemmas) and syn[5].hypernyms == (9,)


@pytest.mark.parametrize(
    "bad",
    [
        "00000100 03 n 02 entity 0 000 | gloss",  # fewer words than w_cnt
        "00000100 03 n 01 entity 0 002 @ 00000200 n 0000 | gloss",  # fewer pointers than p_cnt
        "00000100 03 n 01 entity 0 000 no gloss separator",
        "notanoffset 03 n 01 entity 0 000 | gloss",
    ],
)
def test_parse_errors_name_line(tmp_path, bad):
    (tmp_path / "data.noun").write_text("\n".join([*LICENSE, bad]) + "\n")
    with pytest.raises(ValueError, match=r"data\.noun:4: "):
        parse_data_noun(tmp_path / "data.noun")


def test_missing_file_hints_apt(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y wordnet-base"):
        build_wordnet(str(tmp_path / "nowhere"))


def test_labels_two_hops_min_hyponyms(tiny_dir):
    ds = build_wordnet(str(tiny_dir), test_fraction=0.3, seed=0)
    assert ds.Y == [_text(100), _text(200), _text(400)]  # eligible labels, sorted by offset
    assert len(ds.trn_X) == 5 and len(ds.tst_X) == 2  # round(0.3 * 7) test queries
    assert _labels_by_offset(ds) == {
        200: {100},
        300: {100},
        400: {100, 200},
        500: {100, 200},
        600: {200, 400},  # via @i; entity is three hops away
        700: {100},  # plant has a single hyponym -> not a label
        800: {200, 400},
    }
    assert ds.trn_X_Y.data.tolist() == [1.0] * ds.trn_X_Y.nnz


def test_hops_and_min_hyponyms_parameters(tiny_dir):
    one_hop = _labels_by_offset(build_wordnet(str(tiny_dir), hops=1))
    assert one_hop == {200: {100}, 300: {100}, 400: {200}, 500: {200}, 600: {400}, 800: {400}}
    assert 700 not in one_hop  # its only hypernym (plant) is not a label: query dropped
    loose = _labels_by_offset(build_wordnet(str(tiny_dir), min_hyponyms=1))
    assert loose[700] == {100, 300}
    assert loose[600] == {200, 400}


def test_filter_pairs_are_self_pairs(tiny_dir):
    ds = build_wordnet(str(tiny_dir), test_fraction=0.3, seed=0)
    pairs = [(ds.trn_X[q], ds.Y[lab]) for q, lab in ds.filter_train.tolist()]
    pairs += [(ds.tst_X[q], ds.Y[lab]) for q, lab in ds.filter_test.tolist()]
    assert sorted(pairs) == sorted([(_text(200), _text(200)), (_text(400), _text(400))])


def test_split_is_seeded(tiny_dir):
    a = build_wordnet(str(tiny_dir), seed=1, test_fraction=0.3)
    b = build_wordnet(str(tiny_dir), seed=1, test_fraction=0.3)
    assert a.trn_X == b.trn_X and a.tst_X == b.tst_X
    splits = {
        tuple(build_wordnet(str(tiny_dir), seed=s, test_fraction=0.3).tst_X) for s in range(8)
    }
    assert len(splits) > 1
    for ds in (a, b):
        assert sorted(ds.trn_X + ds.tst_X) == sorted(_text(o) for o in TINY if o != 100)


def test_max_queries_subsample(tiny_dir):
    ds = build_wordnet(str(tiny_dir), max_queries=4, test_fraction=0.25, seed=2)
    assert len(ds.trn_X) + len(ds.tst_X) == 4
    labels = _labels_by_offset(ds)
    used = set().union(*labels.values())
    assert {_text(o) for o in used} == set(ds.Y)  # only labels that some kept query has


def test_invalid_parameters(tiny_dir):
    with pytest.raises(ValueError, match="test_fraction"):
        build_wordnet(str(tiny_dir), test_fraction=1.0)
    with pytest.raises(ValueError, match="hops"):
        build_wordnet(str(tiny_dir), hops=0)


def test_write_wordnet_roundtrip(tiny_dir, tmp_path):
    ds = write_wordnet(tmp_path / "out", wordnet_dir=str(tiny_dir), test_fraction=0.3)
    back = read_xc(tmp_path / "out")
    assert back.trn_X == ds.trn_X and back.Y == ds.Y
    assert (back.tst_X_Y != ds.tst_X_Y).nnz == 0
    np.testing.assert_array_equal(back.filter_train, ds.filter_train)
    np.testing.assert_array_equal(back.filter_test, ds.filter_test)


def _lexname(offset: int) -> str:
    return {3: "noun.Tops", 5: "noun.animal", 18: "noun.person", 20: "noun.plant"}[
        LEX.get(offset, 3)
    ]


def _meta(offset: int) -> dict:
    return {"lexname": _lexname(offset), "depth": DEPTH[offset], "lemmas": TINY[offset][0]}


def _read_lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_write_wordnet_catalogue_files(tiny_dir, tmp_path):
    out = tmp_path / "out"
    ds = write_wordnet(out, wordnet_dir=str(tiny_dir), test_fraction=0.3, new_items=3)
    offset_of = {_text(o): o for o in TINY}
    labels = [offset_of[t] for t in ds.Y]
    cat = read_catalogue(str(out / "catalogue.parquet"))
    assert cat.texts == ds.Y == _read_lines(out / "Y.txt")
    assert cat.ids == _read_lines(out / "Y_ids.txt") == ["entity.n.01", "animal.n.01", "dog.n.02"]
    assert cat.ids == [NAMES[o] for o in labels] and len(set(cat.ids)) == len(cat.ids)
    assert cat.metadata == [_meta(o) for o in labels]
    for name, X, Y in (
        ("interactions.parquet", ds.trn_X, ds.trn_X_Y),
        ("eval_interactions.parquet", ds.tst_X, ds.tst_X_Y),
    ):
        inter = read_interactions(str(out / name), cat)
        assert inter.queries == X
        assert inter.Y.shape == Y.shape and (inter.Y != Y).nnz == 0
        assert (inter.n_rows, inter.n_dropped) == (Y.nnz, 0)
    new = [json.loads(line) for line in _read_lines(out / "new_items.jsonl")]
    assert len(new) == 3
    for item in new:
        o = offset_of[item["text"]]
        assert o not in labels
        assert item == {"id": NAMES[o], "text": _text(o), "metadata": _meta(o)}
    assert len({item["id"] for item in new} | set(cat.ids)) == 3 + len(cat.ids)

    # seeded; all non-labels when fewer than asked; the XC files are build_wordnet's
    again = write_wordnet(
        tmp_path / "again", wordnet_dir=str(tiny_dir), test_fraction=0.3, new_items=3
    )
    assert (tmp_path / "again" / "new_items.jsonl").read_bytes() == (
        out / "new_items.jsonl"
    ).read_bytes()
    write_wordnet(tmp_path / "all", wordnet_dir=str(tiny_dir), new_items=100)
    new = [json.loads(line)["id"] for line in _read_lines(tmp_path / "all" / "new_items.jsonl")]
    assert new == [NAMES[o] for o in sorted(TINY) if o not in (100, 200, 400)]
    write_xc(build_wordnet(str(tiny_dir), test_fraction=0.3), tmp_path / "xc")
    for f in (tmp_path / "xc").iterdir():
        assert f.read_bytes() == (out / f.name).read_bytes(), f.name
    assert again.Y == ds.Y


def test_index_noun_and_lexnames(tiny_dir):
    senses = parse_index_noun(tiny_dir / "index.noun")
    assert senses["dog"] == [999, 400] and senses["canis_familiaris"] == [400]
    assert read_lexnames(str(tiny_dir))[5] == "noun.animal"  # built-in: wordnet-base has none
    (tiny_dir / "lexnames").write_text("00\tadj.all\t3\n05\tnoun.beast\t1\n")
    assert read_lexnames(str(tiny_dir))[5] == "noun.beast"
    (tiny_dir / "index.noun").unlink()
    with pytest.raises(FileNotFoundError, match="apt-get install -y wordnet-base"):
        write_wordnet(tiny_dir / "out", wordnet_dir=str(tiny_dir))


def test_real_wordnet_catalogue(tmp_path):
    if not os.path.exists(os.path.join(REAL_WORDNET_DIR, "index.noun")):
        pytest.fail("wordnet-base missing: run `apt-get install -y wordnet-base`")
    ds = write_wordnet(tmp_path, wordnet_dir=REAL_WORDNET_DIR, seed=0)
    cat = read_catalogue(str(tmp_path / "catalogue.parquet"))
    assert len(set(cat.ids)) == len(cat.ids) == len(ds.Y)
    assert cat.texts == ds.Y and cat.ids == _read_lines(tmp_path / "Y_ids.txt")
    meta = dict(zip(cat.ids, cat.metadata, strict=True))
    assert meta["entity.n.01"] == {"lexname": "noun.Tops", "depth": 0, "lemmas": ["entity"]}
    assert meta["dog.n.01"]["lexname"] == "noun.animal" and meta["dog.n.01"]["depth"] == 8
    assert cat.texts[cat.ids.index("dog.n.01")].startswith("dog, domestic dog, Canis familiaris")
    inter = read_interactions(str(tmp_path / "interactions.parquet"), cat)
    assert inter.queries == ds.trn_X and (inter.Y != ds.trn_X_Y).nnz == 0
    ev = read_interactions(str(tmp_path / "eval_interactions.parquet"), cat)
    assert ev.queries == ds.tst_X and (ev.Y != ds.tst_X_Y).nnz == 0
    new = [json.loads(line) for line in _read_lines(tmp_path / "new_items.jsonl")]
    assert len(new) == 2000 and not {r["id"] for r in new} & set(cat.ids)
    assert len({r["id"] for r in new}) == 2000


def test_real_wordnet_full_build():
    data_noun = os.path.join(REAL_WORDNET_DIR, "data.noun")
    if not os.path.exists(data_noun):
        pytest.fail(f"{data_noun} missing: run `apt-get install -y wordnet-base`")
    t0 = time.perf_counter()
    ds = build_wordnet(REAL_WORDNET_DIR, seed=0)
    elapsed = time.perf_counter() - t0
    st = ds.stats()
    n_queries = st["n_train"] + st["n_test"]
    assert n_queries > 50_000
    assert st["n_labels"] > 5_000
    assert st["n_test"] == round(0.2 * n_queries)
    for Y in (ds.trn_X_Y, ds.tst_X_Y):
        assert (np.diff(Y.indptr) >= 1).all()  # every query has a label
        assert (np.diff(Y.indptr) <= 20).all()
    assert st["avg_labels_per_query_train"] > 1.0 and st["avg_labels_per_query_train"] < 4.0
    assert st["avg_query_chars"] > 20 and st["avg_label_chars"] > 20
    assert "dog, domestic dog, Canis familiaris: a member of the genus Canis" in "\n".join(
        ds.trn_X + ds.tst_X
    )
    # filter pairs: query and label are the same synset, never a ground-truth pair
    for X, Y, F in (
        (ds.trn_X, ds.trn_X_Y, ds.filter_train),
        (ds.tst_X, ds.tst_X_Y, ds.filter_test),
    ):
        assert len(F) > 0
        for q, lab in F[:200].tolist():
            assert X[q] == ds.Y[lab]
            assert Y[q, lab] == 0
    assert elapsed < 30, f"building the WordNet dataset took {elapsed:.1f}s"
