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
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from irene import io
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
    return Synset(offset, tuple(words[0::2]), gloss.strip(), hypernyms)


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
    return ds


def write_wordnet(out_dir: str | os.PathLike, **kwargs) -> XCDataset:
    """``build_wordnet(**kwargs)`` and write it to ``out_dir`` in the XC format."""
    ds = build_wordnet(**kwargs)
    write_xc(ds, out_dir)
    return ds
