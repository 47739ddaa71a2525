"""An XC dataset built from WordNet nouns (Debian package ``wordnet-base``).

Query = a noun synset, text ``"lemma, lemma: gloss"``. Labels = its hypernyms up to ``hops``
hops (``@`` and ``@i`` pointers), restricted to synsets that are the direct hypernym of at
least ``min_hyponyms`` synsets; label text has the same format. Queries without a label are
dropped. A synset can be both a query and a label: those (query, label) pairs of the same
synset go to the filter files so a query never retrieves itself.

``data.noun`` is parsed directly (WordNet database format, ``man 5 wndb``)::

    synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt
        [ptr_symbol synset_offset pos source/target...] | gloss

``w_cnt`` is two hex digits, ``p_cnt`` three decimal digits; lines starting with two spaces
are the license header.

:func:`write_wordnet` also writes the same data as a user's catalogue would be
(:mod:`irene.data.catalogue`): ``catalogue.parquet`` (the labels, ids = NLTK-style synset names
such as ``dog.n.01`` from the sense order of ``index.noun``), ``interactions.parquet`` and
``eval_interactions.parquet`` (the train / test (query, label) pairs), ``Y_ids.txt`` and
``new_items.jsonl`` (noun synsets that are not labels: items arriving after training).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from irene import io
from irene.data.catalogue import write_table
from irene.data.xc import XCDataset, write_xc

log = logging.getLogger(__name__)

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
HYPERNYM_POINTERS = frozenset({"@", "@i"})
INSTALL_HINT = "install WordNet with `apt-get install -y wordnet-base`"


@dataclass(frozen=True)
class Synset:
    offset: int
    lemmas: tuple[str, ...]  # as in the file (underscores kept)
    gloss: str
    hypernyms: tuple[int, ...]  # offsets from "@" and "@i" pointers, file order
    lex_filenum: int = 0  # lexicographer file (see LEXNAMES)

    @property
    def text(self) -> str:
        """``"lemma one, lemma two: gloss"`` (underscores replaced by spaces)."""
        return ", ".join(lemma.replace("_", " ") for lemma in self.lemmas) + ": " + self.gloss


def _parse_line(path: str, lineno: int, line: str) -> Synset:
    head, sep, gloss = line.partition(" | ")
    if not sep:
        # a synset without a gloss still has the " |" separator at the end of the line
        head, sep, gloss = line.rstrip().partition(" |")
    if not sep:
        raise ValueError(f"{path}:{lineno}: no ' | ' gloss separator")
    toks = head.split()
    try:
        offset = int(toks[0])
        lex_filenum = int(toks[1])
        w_cnt = int(toks[3], 16)
        words = toks[4 : 4 + 2 * w_cnt]
        p_pos = 4 + 2 * w_cnt
        p_cnt = int(toks[p_pos])
        ptrs = toks[p_pos + 1 :]
        if len(words) != 2 * w_cnt or w_cnt == 0 or len(ptrs) != 4 * p_cnt:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"{path}:{lineno}: malformed WordNet data line {line[:80]!r}") from None
    hypernyms = tuple(
        int(ptrs[k + 1])
        for k in range(0, len(ptrs), 4)
        if ptrs[k] in HYPERNYM_POINTERS and ptrs[k + 2] == "n"
    )
    return Synset(offset, tuple(words[0::2]), gloss.strip(), hypernyms, lex_filenum)


def parse_data_noun(path) -> dict[int, Synset]:
    """Parse a WordNet ``data.noun`` file -> {offset: Synset}."""
    path = str(path)
    if not io.exists(path):
        raise FileNotFoundError(f"WordNet noun data not found at {path}; {INSTALL_HINT}")
    synsets: dict[int, Synset] = {}
    text = io.read_text(path)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.startswith("  ") or not line.strip():
            continue  # license header / final newline
        s = _parse_line(path, lineno, line)
        if s.offset in synsets:
            raise ValueError(f"{path}:{lineno}: duplicate synset offset {s.offset}")
        synsets[s.offset] = s
    return synsets


def _ancestors(synsets: dict[int, Synset], offset: int, hops: int) -> set[int]:
    """Hypernyms of ``offset`` reachable in 1..hops steps (unknown offsets ignored)."""
    found: set[int] = set()
    frontier = {offset}
    for _ in range(hops):
        nxt = {h for o in frontier if o in synsets for h in synsets[o].hypernyms}
        nxt -= found
        found |= nxt
        frontier = nxt
    found.discard(offset)
    return found


def _label_matrix(rows: list[list[int]], n_labels: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])  # (N+1,)
    indices = np.asarray([i for r in rows for i in sorted(r)], dtype=np.int64)
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_labels))


def _self_filter(offsets: list[int], label_of: dict[int, int]) -> np.ndarray:
    pairs = [(q, label_of[o]) for q, o in enumerate(offsets) if o in label_of]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # (m, 2)


@dataclass
class _Built:
    ds: XCDataset
    synsets: dict[int, Synset]
    trn_q: list[int]  # query offsets, trn_X order
    tst_q: list[int]
    labels: list[int]  # label offsets, Y order


def _build(
    wordnet_dir: str = DEFAULT_WORDNET_DIR,
    seed: int = 0,
    test_fraction: float = 0.2,
    min_hyponyms: int = 2,
    hops: int = 2,
    max_queries: int | None = None,
) -> _Built:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if hops < 1 or min_hyponyms < 1:
        raise ValueError(f"hops and min_hyponyms must be >= 1, got {hops}, {min_hyponyms}")
    synsets = parse_data_noun(io.join(wordnet_dir, "data.noun"))
    n_hyponyms = Counter(h for s in synsets.values() for h in set(s.hypernyms))
    eligible = {o for o, c in n_hyponyms.items() if c >= min_hyponyms and o in synsets}

    labels_of: dict[int, set[int]] = {}
    for off in sorted(synsets):
        labs = _ancestors(synsets, off, hops) & eligible
        if labs:
            labels_of[off] = labs
    queries = sorted(labels_of)  # offsets
    rng = np.random.default_rng(seed)
    if max_queries is not None and max_queries < len(queries):
        keep = np.sort(rng.choice(len(queries), size=max_queries, replace=False))
        queries = [queries[i] for i in keep.tolist()]
    n_test = round(test_fraction * len(queries))
    perm = rng.permutation(len(queries))
    tst_q = [queries[i] for i in np.sort(perm[:n_test]).tolist()]
    trn_q = [queries[i] for i in np.sort(perm[n_test:]).tolist()]

    label_offsets = sorted(set().union(*(labels_of[q] for q in queries)))
    label_of = {o: i for i, o in enumerate(label_offsets)}
    L = len(label_offsets)

    def rows(qs: list[int]) -> list[list[int]]:
        return [[label_of[o] for o in labels_of[q]] for q in qs]

    ds = XCDataset(
        trn_X=[synsets[q].text for q in trn_q],
        tst_X=[synsets[q].text for q in tst_q],
        Y=[synsets[o].text for o in label_offsets],
        trn_X_Y=_label_matrix(rows(trn_q), L),
        tst_X_Y=_label_matrix(rows(tst_q), L),
        filter_train=_self_filter(trn_q, label_of),
        filter_test=_self_filter(tst_q, label_of),
        name="wordnet-noun",
    )
    log.info("built WordNet dataset: %s", ds.stats())
    return _Built(ds, synsets, trn_q, tst_q, label_offsets)


def build_wordnet(
    wordnet_dir: str = DEFAULT_WORDNET_DIR,
    seed: int = 0,
    test_fraction: float = 0.2,
    min_hyponyms: int = 2,
    hops: int = 2,
    max_queries: int | None = None,
) -> XCDataset:
    """Build the WordNet-noun hypernym XC dataset (see module docstring).

    Queries are ordered by offset, optionally subsampled to ``max_queries`` (seeded), then
    split train/test with a seeded permutation. Labels are the eligible hypernyms that label
    at least one kept query, ordered by offset.
    """
    return _build(wordnet_dir, seed, test_fraction, min_hyponyms, hops, max_queries).ds


# ----------------------------------------------------------------------------------------------
# the catalogue view: synset names, lexicographer files, depths

# lexnames(5WN): the lexicographer file of each lex_filenum (Debian's wordnet-base does not
# ship the ``lexnames`` file; it is read when present).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
NEW_ITEMS = 2000
CATALOGUE = "catalogue.parquet"
INTERACTIONS = "interactions.parquet"
EVAL_INTERACTIONS = "eval_interactions.parquet"
Y_IDS = "Y_ids.txt"
NEW_ITEMS_FILE = "new_items.jsonl"


def read_lexnames(wordnet_dir: str) -> list[str]:
    """``lexnames`` of ``wordnet_dir`` ("NN<TAB>name<TAB>category" lines) or :data:`LEXNAMES`."""
    path = io.join(wordnet_dir, "lexnames")
    if not io.exists(path):
        return list(LEXNAMES)
    names: dict[int, str] = {}
    for lineno, line in enumerate(io.read_text(path).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{lineno}: malformed lexnames line {line[:80]!r}")
        names[int(parts[0])] = parts[1]
    return [names.get(k, f"lex.{k:02d}") for k in range(max(names, default=-1) + 1)]


def parse_index_noun(path) -> dict[str, list[int]]:
    """``index.noun`` -> {lemma: synset offsets in sense order}.

    Line format (``man 5 wndb``): ``lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt
    tagsense_cnt synset_offset [synset_offset...]``; the offsets are the last synset_cnt tokens.
    """
    path = str(path)
    if not io.exists(path):
        raise FileNotFoundError(f"WordNet noun index not found at {path}; {INSTALL_HINT}")
    senses: dict[str, list[int]] = {}
    for lineno, line in enumerate(io.read_text(path).split("\n"), start=1):
        if line.startswith("  ") or not line.strip():
            continue
        toks = line.split()
        try:
            n = int(toks[2])
            offsets = [int(t) for t in toks[-n:]] if n > 0 else []
            if n < 1 or len(toks) < 6 + n:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{lineno}: malformed index line {line[:80]!r}") from None
        senses[toks[0]] = offsets
    return senses


def synset_names(synsets: dict[int, Synset], senses: dict[str, list[int]]) -> dict[int, str]:
    """{offset: NLTK-style name}: first lemma (lower case) + ".n." + its 2-digit sense number."""
    names: dict[int, str] = {}
    for off, s in synsets.items():
        lemma = s.lemmas[0].lower()
        try:
            k = senses[lemma].index(off) + 1
        except (KeyError, ValueError):
            raise ValueError(
                f"synset {off:08d} ({s.lemmas[0]}) is not a sense of {lemma!r} in index.noun"
            ) from None
        names[off] = f"{lemma}.n.{k:02d}"
    dup = [n for n, c in Counter(names.values()).items() if c > 1]
    if dup:
        raise ValueError(f"synset names are not unique: {dup[:5]}")
    return names


def min_depths(synsets: dict[int, Synset]) -> dict[int, int]:
    """{offset: shortest hypernym-path length to a root} (roots, e.g. entity.n.01: 0)."""
    hyponyms: dict[int, list[int]] = {}
    for off, s in synsets.items():
        for h in s.hypernyms:
            if h in synsets:
                hyponyms.setdefault(h, []).append(off)
    frontier = [o for o, s in synsets.items() if not any(h in synsets for h in s.hypernyms)]
    depth = dict.fromkeys(frontier, 0)
    d = 0
    while frontier:  # breadth first: the first visit is the shortest path
        d += 1
        nxt = []
        for o in frontier:
            for c in hyponyms.get(o, ()):
                if c not in depth:
                    depth[c] = d
                    nxt.append(c)
        frontier = nxt
    return depth


def _interaction_table(texts: list[str], Y: sp.csr_matrix, ids: list[str]) -> pa.Table:
    counts = np.diff(Y.indptr)  # (n,)
    return pa.table(
        {
            "query": pa.array(np.repeat(np.asarray(texts, dtype=object), counts), pa.string()),
            "item_id": pa.array([ids[j] for j in Y.indices.tolist()], pa.string()),
            "weight": pa.array(np.ones(Y.nnz), pa.float64()),
        }
    )


def write_wordnet(out_dir: str | os.PathLike, new_items: int = NEW_ITEMS, **kwargs) -> XCDataset:
    """``build_wordnet(**kwargs)`` written to ``out_dir`` in the XC format, plus the catalogue
    files (module docstring); ``new_items``: how many non-label synsets go to new_items.jsonl."""
    b = _build(**kwargs)
    wordnet_dir = str(kwargs.get("wordnet_dir", DEFAULT_WORDNET_DIR))
    names = synset_names(b.synsets, parse_index_noun(io.join(wordnet_dir, "index.noun")))
    lexnames = read_lexnames(wordnet_dir)
    depth = min_depths(b.synsets)

    def lexname(s: Synset) -> str:
        return lexnames[s.lex_filenum] if s.lex_filenum < len(lexnames) else f"lex.{s.lex_filenum}"

    label_ids = [names[o] for o in b.labels]
    label_set = set(b.labels)
    candidates = [o for o in sorted(b.synsets) if o not in label_set]
    # its own random stream: the XC split stays as build_wordnet makes it
    rng = np.random.default_rng([kwargs.get("seed", 0), 1])
    n_new = min(new_items, len(candidates))
    picked = np.sort(rng.choice(len(candidates), size=n_new, replace=False)) if n_new else []
    new_offsets = [candidates[i] for i in np.asarray(picked, dtype=np.int64).tolist()]
    if len(set(label_ids) | {names[o] for o in new_offsets}) != len(label_ids) + len(new_offsets):
        raise ValueError("catalogue and new item ids are not unique")

    write_xc(b.ds, out_dir)
    labels = [b.synsets[o] for o in b.labels]
    catalogue = pa.table(
        {
            "id": pa.array(label_ids, pa.string()),
            "text": pa.array(b.ds.Y, pa.string()),
            "lexname": pa.array([lexname(s) for s in labels], pa.string()),
            "depth": pa.array([depth[o] for o in b.labels], pa.int64()),
            "lemmas": pa.array([list(s.lemmas) for s in labels], pa.list_(pa.string())),
        }
    )
    write_table(io.join(out_dir, CATALOGUE), catalogue)
    write_table(
        io.join(out_dir, INTERACTIONS), _interaction_table(b.ds.trn_X, b.ds.trn_X_Y, label_ids)
    )
    write_table(
        io.join(out_dir, EVAL_INTERACTIONS), _interaction_table(b.ds.tst_X, b.ds.tst_X_Y, label_ids)
    )
    io.write_text(io.join(out_dir, Y_IDS), "".join(i + "\n" for i in label_ids))
    records = []
    for o in new_offsets:
        s = b.synsets[o]
        meta = {"lexname": lexname(s), "depth": depth[o], "lemmas": list(s.lemmas)}
        records.append({"id": names[o], "text": s.text, "metadata": meta})
    io.write_text(
        io.join(out_dir, NEW_ITEMS_FILE),
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
    )
    log.info(
        "wrote %s: %d catalogue items, %d + %d interactions, %d new items",
        out_dir,
        len(label_ids),
        b.ds.trn_X_Y.nnz,
        b.ds.tst_X_Y.nnz,
        len(records),
    )
    return b.ds
