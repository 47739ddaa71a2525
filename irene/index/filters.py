"""Filters over item records: the grammar (pydantic, shared with the HTTP schema) and its
vectorised evaluation over a :class:`Columns` view of a record store.

A filter is Qdrant-shaped::

    {"must": [cond, ...], "should": [cond, ...], "must_not": [cond, ...]}

``must``: every condition holds; ``should``: at least one holds (when the list is not empty);
``must_not``: none holds. A condition is one of

- ``{"key": K, "match": {"value": V}}``: the field equals ``V`` (a string, an integer or a
  bool; types are strict: ``"1"`` does not match ``1``, ``true`` does not match ``1``); a
  list-of-strings field matches when any element equals ``V``;
- ``{"key": K, "match": {"any": [V, ...]}}``: the field equals one of the values (strings or
  integers);
- ``{"key": K, "range": {"gt": x, "gte": x, "lt": x, "lte": x}}``: a numeric field (integer or
  float, not bool) within the bounds given (at least one);
- ``{"id_prefix": P}``: the item's string id starts with ``P``;
- a nested filter (``{"must": ..., "should": ..., "must_not": ...}``).

``K`` names a metadata key, except ``"source"`` and ``"version"``, which name the record's
source (``trained`` / ``generated``) and the bundle version that made its vector; a metadata key
with one of those names is reached as ``"metadata.source"``. An item without the key does not
match a ``match``/``range`` condition (so it does match its ``must_not``). Items stored without
any record match no filter.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Annotated, Any, Protocol

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    model_validator,
)

from irene.index.idmap import grown

RECORD_KEYS = ("source", "version")
INT64 = 1 << 63
FLOAT_EXACT = 1 << 53  # integers up to this size compare the same as float64
META_PREFIX = "metadata."

Scalar = StrictStr | StrictInt | StrictBool
Number = StrictInt | StrictFloat


class _Clause(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchValue(_Clause):
    value: Scalar = Field(description="equals this string, integer or bool (types are strict)")


class MatchAny(_Clause):
    any: list[StrictStr] | list[StrictInt] = Field(
        min_length=1, description="equals one of these strings (or integers)"
    )


class Range(_Clause):
    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Range:
        bounds = [b for b in (self.gt, self.gte, self.lt, self.lte) if b is not None]
        if not bounds:
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        if not all(math.isfinite(b) for b in bounds):
            raise ValueError("range bounds must be finite numbers")
        return self


def _match_tag(v: Any) -> str | None:
    if isinstance(v, dict):
        return "any" if "any" in v else "value"
    if isinstance(v, BaseModel):
        return "any" if hasattr(v, "any") else "value"
    return None


Match = Annotated[
    Annotated[MatchValue, Tag("value")] | Annotated[MatchAny, Tag("any")],
    Discriminator(_match_tag),
]


class FieldCondition(_Clause):
    key: str = Field(min_length=1, max_length=200, description="metadata key, source or version")
    match: Match | None = None
    range: Range | None = None

    @model_validator(mode="after")
    def _one_test(self) -> FieldCondition:
        if (self.match is None) == (self.range is None):
            raise ValueError(f"condition on {self.key!r}: give exactly one of match, range")
        if self.range is not None and self.key in RECORD_KEYS:
            raise ValueError(f"condition on {self.key!r}: range applies to numbers only")
        return self


class IdPrefix(_Clause):
    id_prefix: str = Field(
        min_length=1, max_length=256, pattern=r"^[^\x00]+$", description="string id starts with"
    )


def _condition_tag(v: Any) -> str | None:
    if isinstance(v, dict):
        keys = v.keys()
    elif isinstance(v, BaseModel):
        keys = type(v).model_fields.keys()
    else:
        return None  # not an object: pydantic reports it as a bad condition
    if "key" in keys:
        return "field"
    if "id_prefix" in keys:
        return "id_prefix"
    return "filter"


class Filter(_Clause):
    """A boolean combination of conditions (module docstring)."""

    must: list[Condition] = Field(default_factory=list, max_length=64)
    should: list[Condition] = Field(default_factory=list, max_length=64)
    must_not: list[Condition] = Field(default_factory=list, max_length=64)

    def keys(self) -> set[str]:
        """Every field key the filter reads (nested filters included)."""
        out: set[str] = set()
        for c in (*self.must, *self.should, *self.must_not):
            if isinstance(c, FieldCondition):
                out.add(c.key)
            elif isinstance(c, Filter):
                out |= c.keys()
        return out

    def is_empty(self) -> bool:
        """No condition anywhere (nested empty filters included): it matches every item."""
        return all(
            isinstance(c, Filter) and c.is_empty()
            for c in (*self.must, *self.should, *self.must_not)
        )

    def uses_ids(self) -> bool:
        return any(
            isinstance(c, IdPrefix) or (isinstance(c, Filter) and c.uses_ids())
            for c in (*self.must, *self.should, *self.must_not)
        )


Condition = Annotated[
    Annotated[FieldCondition, Tag("field")]
    | Annotated[IdPrefix, Tag("id_prefix")]
    | Annotated[Filter, Tag("filter")],
    Discriminator(_condition_tag),
]
Filter.model_rebuild()


def as_filter(f: Filter | dict | None) -> Filter | None:
    """``f`` as a :class:`Filter` (pydantic's ``ValidationError`` names the bad clause)."""
    if f is None or isinstance(f, Filter):
        return f
    return Filter.model_validate(f)


def metadata_key(key: str) -> str | None:
    """The metadata key a condition's ``key`` names (None: a record field)."""
    if key in RECORD_KEYS:
        return None
    return key[len(META_PREFIX) :] if key.startswith(META_PREFIX) else key


# --------------------------------------------------------------------------- evaluation
def append_at(a: np.ndarray, at: int, values: np.ndarray) -> np.ndarray:
    """``a`` with ``values`` written at ``[at, at + len(values))``, grown as needed
    (``irene.index.idmap.grown``)."""
    need = at + len(values)
    a = grown(a, need)
    a[at:need] = values
    return a


_TAIL_MIN = 4096  # rows appended past the sorted views that are scanned, not re-sorted ...
_TAIL_FRACTION = 8  # ... up to max(_TAIL_MIN, n / 8)


class KeyColumn:
    """One metadata key over rows ``[0, n)``, by value type: ``num`` float64 (int and float
    values; NaN elsewhere), ``ints`` int64 with ``is_int``, ``bools`` int8 (-1: not a bool),
    and the strings (a string, or the elements of a list) as codes ``kw_codes`` into ``vocab``
    with CSR offsets ``kw_off`` (n + 1,). Appending rows costs amortised O(rows).

    Two sorted views, built on first use and rebuilt once the rows appended since pass
    ``max(4096, n/8)`` (those are scanned meanwhile), find rows in O(log n + matches): the
    rows of each string (postings) and the rows ordered by their number."""

    def __init__(self) -> None:
        self.n = 0
        self._nkw = 0
        self._num = np.zeros(0, np.float64)
        self._ints = np.zeros(0, np.int64)
        self._is_int = np.zeros(0, bool)
        self._bools = np.zeros(0, np.int8)
        self._kw_off = np.zeros(1, np.int64)
        self._kw_codes = np.zeros(0, np.int32)
        self.vocab: dict[str, int] = {}
        self._one_each = True  # every row so far holds exactly one string
        self._big_ints = False  # an int beyond +-FLOAT_EXACT: float64 order is not exact
        self._sorted_n = -1  # rows the sorted views cover (-1: not built)
        self._kw_rows = np.zeros(0, np.int32)  # rows of the strings, grouped by code
        self._kw_start = np.zeros(1, np.int64)  # (codes + 1,) group offsets into _kw_rows
        self._num_rows = np.zeros(0, np.int32)  # rows holding a number, by that number
        self._num_sorted = np.zeros(0, np.float64)  # their numbers, ascending

    num = property(lambda self: self._num[: self.n])
    ints = property(lambda self: self._ints[: self.n])
    is_int = property(lambda self: self._is_int[: self.n])
    bools = property(lambda self: self._bools[: self.n])
    kw_off = property(lambda self: self._kw_off[: self.n + 1])
    kw_codes = property(lambda self: self._kw_codes[: self._nkw])

    def extend(self, values: list[Any]) -> None:
        """Append the values of the next rows (``None``: the row lacks the key)."""
        k, n = len(values), self.n
        num = np.full(k, np.nan)
        ints = np.zeros(k, np.int64)
        is_int = np.zeros(k, bool)
        bools = np.full(k, -1, np.int8)
        lens = np.zeros(k, np.int64)
        codes: list[int] = []
        vocab = self.vocab
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, bool):
                bools[i] = v
            elif isinstance(v, int):
                ints[i], is_int[i], num[i] = v, True, float(v)
            elif isinstance(v, float):
                num[i] = v
            else:
                strs = [v] if isinstance(v, str) else v
                lens[i] = len(strs)
                codes.extend(vocab.setdefault(s, len(vocab)) for s in strs)
        self._num = append_at(self._num, n, num)
        self._ints = append_at(self._ints, n, ints)
        self._is_int = append_at(self._is_int, n, is_int)
        self._bools = append_at(self._bools, n, bools)
        self._kw_off = append_at(self._kw_off, n + 1, self._kw_off[n] + np.cumsum(lens))
        self._kw_codes = append_at(self._kw_codes, self._nkw, np.asarray(codes, np.int32))
        self._nkw += len(codes)
        self._one_each = self._one_each and bool((lens == 1).all())
        big = is_int & ((ints > FLOAT_EXACT) | (ints < -FLOAT_EXACT))
        self._big_ints = self._big_ints or bool(big.any())
        self.n = n + k

    def has_string(self, wanted: list[str]) -> np.ndarray:
        """(n,) bool: the row's string (or one of its list's strings) is in ``wanted``."""
        codes = [self.vocab[s] for s in wanted if s in self.vocab]
        if not codes or not self._nkw:
            return np.zeros(self.n, bool)
        if self._one_each:  # one string in every row: code i is row i's
            return np.isin(self.kw_codes, codes)
        off = self.kw_off
        hit = np.isin(self.kw_codes, codes).astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(hit)])
        return csum[off[1:]] > csum[off[:-1]]

    def _sorted_views(self) -> int:
        """Bring the sorted views up to date if too many rows came after them; returns the
        rows they cover."""
        n = self.n
        if self._sorted_n < 0 or n - self._sorted_n > max(_TAIL_MIN, n // _TAIL_FRACTION):
            codes = self.kw_codes
            if self._one_each:
                entry_row = np.arange(len(codes), dtype=np.int32)
            else:
                entry_row = np.repeat(np.arange(n, dtype=np.int32), np.diff(self.kw_off))
            order = np.argsort(codes, kind="stable")  # rows ascending within a code
            self._kw_rows = entry_row[order]
            counts = np.bincount(codes, minlength=len(self.vocab))
            self._kw_start = np.concatenate([[0], np.cumsum(counts)])
            has = np.flatnonzero(~np.isnan(self.num))
            order = np.argsort(self.num[has], kind="stable")
            self._num_rows = has[order].astype(np.int32)
            self._num_sorted = self.num[self._num_rows]
            self._sorted_n = n
        return self._sorted_n

    def rows_with_strings(self, wanted: list[str]) -> np.ndarray:
        """Rows whose string, or one of whose list's strings, is in ``wanted``: unsorted, a
        row holding several strings may repeat (:func:`sorted_unique`); views of the postings
        where possible."""
        codes = list(dict.fromkeys(self.vocab[s] for s in wanted if s in self.vocab))
        if not codes:
            return np.zeros(0, np.int32)
        p = self._sorted_views()
        start, groups = self._kw_start, len(self._kw_start) - 1
        parts = [self._kw_rows[start[c] : start[c + 1]] for c in codes if c < groups]
        if self.n > p:  # rows appended since: their strings, scanned
            e0 = int(self._kw_off[p])
            hit = np.flatnonzero(np.isin(self._kw_codes[e0 : self._nkw], codes)) + e0
            parts.append(np.searchsorted(self.kw_off, hit, side="right") - 1)  # entry -> row
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def rows_in_range(
        self, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False
    ) -> np.ndarray:
        """Rows whose number lies between ``lo`` and ``hi`` as float64 (each bound included
        unless ``*_open``): unsorted, each row once (a view of the sorted view where no rows
        came after it)."""
        p = self._sorted_views()
        vals = self._num_sorted
        a = np.searchsorted(vals, lo, side="right" if lo_open else "left")
        b = np.searchsorted(vals, hi, side="left" if hi_open else "right")
        rows = self._num_rows[a:b]
        if self.n > p:  # rows appended since, scanned
            x = self._num[p : self.n]
            with np.errstate(invalid="ignore"):
                above = x > lo if lo_open else x >= lo
                below = x < hi if hi_open else x <= hi
            rows = np.concatenate([rows, np.flatnonzero(above & below) + p])
        return rows

    def take(self, rows: np.ndarray) -> _KeySubset:
        """This column over ``rows`` only (sorted, unique)."""
        return _KeySubset(self, rows)

    def nbytes(self) -> int:
        arrays = (self._num, self._ints, self._is_int, self._bools, self._kw_off, self._kw_codes)
        views = (self._kw_rows, self._kw_start, self._num_rows, self._num_sorted)
        return sum(a.nbytes for a in (*arrays, *views))


class _KeySubset:
    """A :class:`KeyColumn` restricted to some of its rows (what ``_field`` reads)."""

    def __init__(self, col: KeyColumn, rows: np.ndarray) -> None:
        self._col, self._rows = col, rows

    # each gathered on first use: a condition reads one or three of them
    num = cached_property(lambda self: self._col.num[self._rows])
    ints = cached_property(lambda self: self._col.ints[self._rows])
    is_int = cached_property(lambda self: self._col.is_int[self._rows])
    bools = cached_property(lambda self: self._col.bools[self._rows])

    def has_string(self, wanted: list[str]) -> np.ndarray:
        hit = sorted_unique(self._col.rows_with_strings(wanted))
        at = np.minimum(np.searchsorted(hit, self._rows), max(len(hit) - 1, 0))
        return hit[at] == self._rows if len(hit) else np.zeros(len(self._rows), bool)


class Columns(Protocol):
    """What a filter reads, every array over the same ``n`` rows."""

    n: int

    def key(self, key: str) -> KeyColumn | _KeySubset: ...

    def record_field(self, field: str) -> tuple[np.ndarray, list[str]]:
        """(codes (n,), names): the row's value is ``names[codes[row]]``."""
        ...

    def ids(self) -> np.ndarray:
        """(n,) ``S`` dtype: each row's string id, UTF-8."""
        ...


def _field(c: FieldCondition, cols: Columns) -> np.ndarray:
    meta = metadata_key(c.key)
    if meta is None:  # source / version: one string per row
        codes, names = cols.record_field(c.key)
        m = c.match
        wanted = [m.value] if isinstance(m, MatchValue) else list(m.any)
        hit = [i for i, name in enumerate(names) if name in wanted]
        return np.isin(codes, hit) if hit else np.zeros(cols.n, bool)
    col = cols.key(meta)
    if c.range is not None:
        r, x, is_int = c.range, col.num, col.is_int
        out = ~np.isnan(x)
        with np.errstate(invalid="ignore"):
            for bound, op in (
                (r.gt, np.greater),
                (r.gte, np.greater_equal),
                (r.lt, np.less),
                (r.lte, np.less_equal),
            ):
                if bound is None:
                    continue
                hit = op(x, bound)  # floats (and ints, as float64)
                if isinstance(bound, int) and -INT64 <= bound < INT64:
                    hit = np.where(is_int, op(col.ints, bound), hit)  # ints: exactly
                out &= hit
        return out
    m = c.match
    values = [m.value] if isinstance(m, MatchValue) else list(m.any)
    out = np.zeros(cols.n, bool)
    strs = [v for v in values if isinstance(v, str)]
    if strs:
        out |= col.has_string(strs)
    bools = [v for v in values if isinstance(v, bool)]
    for b in bools:
        out |= col.bools == int(b)
    ints = [
        v for v in values if isinstance(v, int) and not isinstance(v, bool) and -INT64 <= v < INT64
    ]
    if ints:
        out |= col.is_int & np.isin(col.ints, ints)
    return out


def _condition(c: Any, cols: Columns) -> np.ndarray:
    if isinstance(c, FieldCondition):
        return _field(c, cols)
    if isinstance(c, IdPrefix):
        return np.char.startswith(cols.ids(), c.id_prefix.encode("utf-8"))
    return evaluate(c, cols)


def evaluate(f: Filter, cols: Columns) -> np.ndarray:
    """(n,) bool: the rows of ``cols`` that ``f`` matches."""
    out = np.ones(cols.n, bool)
    for c in f.must:
        out &= _condition(c, cols)
    if f.should:
        any_ = np.zeros(cols.n, bool)
        for c in f.should:
            any_ |= _condition(c, cols)
        out &= any_
    for c in f.must_not:
        out &= ~_condition(c, cols)
    return out


def sorted_unique(rows: np.ndarray) -> np.ndarray:
    """``rows`` sorted, without repeats, as int64 (numpy's ``unique`` hashes first: slower)."""
    rows = np.sort(rows).astype(np.int64, copy=False)
    if len(rows) > 1:
        rows = rows[np.concatenate([[True], rows[1:] != rows[:-1]])]
    return rows


_SUBSET_FRACTION = 32  # evaluate over candidate rows when they are under n/32 of the rows


def _range_side(strict: Any, loose: Any, low: bool) -> tuple[float, bool, bool]:
    """One side of a range as ``(bound, open, exact)``: the tighter of its strict (``gt`` /
    ``lt``) and loose (``gte`` / ``lte``) bound (None: unbounded), and whether float64 holds
    it as it is."""
    sides = [(b, is_open) for b, is_open in ((strict, True), (loose, False)) if b is not None]
    if not sides:
        return (-math.inf if low else math.inf), False, True
    sign = 1 if low else -1
    b, is_open = max(sides, key=lambda s: (sign * s[0], s[1]))
    exact = not isinstance(b, int) or -FLOAT_EXACT <= b <= FLOAT_EXACT
    return float(b), is_open, exact


def _candidates(c: Any, cols: Columns) -> tuple[np.ndarray, bool] | None:
    """Rows that include every row ``c`` matches (unsorted, may repeat), found through the
    key columns' sorted views in O(log n + rows), mostly as views, and whether they are
    exactly those rows, each once; None where no condition narrows them down (a bool, a record
    field, an id prefix, a ``must_not``)."""
    if isinstance(c, Filter):
        options = [_candidates(sub, cols) for sub in c.must]
        if c.should:
            parts = [_candidates(sub, cols) for sub in c.should]
            if all(p is not None for p in parts):
                only = len(parts) == 1 and parts[0][1]
                options.append((np.concatenate([p[0] for p in parts]), only))
        options = [o for o in options if o is not None]
        if not options:
            return None
        rows, exact = min(options, key=lambda o: len(o[0]))
        alone = len(c.must) + bool(c.should) == 1 and not c.must_not
        return rows, exact and alone
    meta = metadata_key(c.key) if isinstance(c, FieldCondition) else None
    if meta is None:
        return None
    col = cols.key(meta)
    if c.range is not None:
        lo, lo_open, lo_exact = _range_side(c.range.gt, c.range.gte, low=True)
        hi, hi_open, hi_exact = _range_side(c.range.lt, c.range.lte, low=False)
        exact = lo_exact and hi_exact and not col._big_ints
        # open bounds only when exact: float64 rounding may put a match on an open bound
        return col.rows_in_range(lo, hi, lo_open and exact, hi_open and exact), exact
    values = [c.match.value] if isinstance(c.match, MatchValue) else list(c.match.any)
    if any(isinstance(v, bool) for v in values):
        return None
    strs = [v for v in values if isinstance(v, str)]
    parts = [col.rows_with_strings(strs)]
    parts += [col.rows_in_range(float(v), float(v)) for v in values if isinstance(v, int)]
    rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return rows, len(strs) == len(values) and col._one_each  # ints: a float row may equal


class _SubsetColumns:
    """``Columns`` restricted to some rows (sorted, unique) of another."""

    def __init__(self, cols: Columns, rows: np.ndarray) -> None:
        self._cols, self._rows, self.n = cols, rows, len(rows)

    def key(self, key: str) -> _KeySubset:
        return self._cols.key(key).take(self._rows)

    def record_field(self, field: str) -> tuple[np.ndarray, list[str]]:
        codes, names = self._cols.record_field(field)
        return codes[self._rows], names

    def ids(self) -> np.ndarray:
        return self._cols.ids()[self._rows]


def select(f: Filter, cols: Columns) -> np.ndarray:
    """The rows (int64, each once) that ``f`` matches: a filter of one condition that the key
    columns' sorted views answer exactly (a range, a string match) reads them off those views
    (in value order); otherwise, when its conditions narrow the rows down through the views
    (:func:`_candidates`) to under 1/32 of them, ``f`` is evaluated over those rows only
    (sorted), so a selective filter costs O(log n + matches log matches), not passes over every
    row (which stay cheaper for a broad filter, and give the rows sorted)."""
    found = _candidates(f, cols)
    if found is not None and found[1]:
        return found[0].astype(np.int64, copy=False)  # views are int32: copied once
    if found is None or len(found[0]) > cols.n // _SUBSET_FRACTION:
        return np.flatnonzero(evaluate(f, cols))
    rows = sorted_unique(found[0])
    return rows[evaluate(f, _SubsetColumns(cols, rows))]


def matches(f: Filter, item_id: str, record: dict[str, Any]) -> bool:
    """Whether one item (its string id and record dict) matches: the reference semantics,
    one row at a time (tests check the vectorised :func:`evaluate` against it)."""

    def cond(c: Any) -> bool:
        if isinstance(c, IdPrefix):
            return item_id.startswith(c.id_prefix)
        if isinstance(c, Filter):
            return matches(c, item_id, record)
        meta = metadata_key(c.key)
        v = record[c.key] if meta is None else record["metadata"].get(meta)
        if v is None:
            return False
        if c.range is not None:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return False
            r = c.range
            return (
                (r.gt is None or v > r.gt)
                and (r.gte is None or v >= r.gte)
                and (r.lt is None or v < r.lt)
                and (r.lte is None or v <= r.lte)
            )
        wanted = [c.match.value] if isinstance(c.match, MatchValue) else list(c.match.any)
        got = v if isinstance(v, list) else [v]
        return any(type(g) is type(w) and g == w for g in got for w in wanted)

    return (
        all(cond(c) for c in f.must)
        and (not f.should or any(cond(c) for c in f.should))
        and not any(cond(c) for c in f.must_not)
    )
