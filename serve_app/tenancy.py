"""Tenant isolation at the HTTP edge: what a tenant-scoped token's request becomes.

With ``auth.tenant_field`` set, a token that carries a tenant ``T`` sees and writes only
``T``'s items, whatever its request says:

- item ids are namespaced: the user's ``sku-1`` is stored as ``T`` + ``\\x1f`` + ``sku-1``
  (``\\x1f`` cannot appear in an id given over HTTP), so two tenants may use the same id and
  one can never read, overwrite or delete the other's item by naming its id;
- every item it writes gets ``metadata[tenant_field] = T`` (a value given is replaced);
- every search, count, scroll and delete-by-filter is ANDed with ``id_prefix: T\\x1f`` and
  ``tenant_field == T``, evaluated inside the shards like any filter, and ``id_prefix``
  clauses of its own filter are moved under its namespace;
- answers carry the user's ids (namespace removed) and never an item of another tenant.

A token without a tenant (an operator's) sees every item under its stored id.
"""

from collections.abc import Sequence
from typing import Any

from irene.index.filters import FieldCondition, Filter, IdPrefix, MatchValue

SEP = "\x1f"


class Scope:
    """The view of one request: ``tenant`` None is the unscoped view (ids as stored)."""

    def __init__(self, tenant: str | None, field: str | None) -> None:
        if tenant is not None and field is None:
            raise ValueError("a tenant-scoped token needs auth.tenant_field")
        self.tenant, self.field = tenant, field
        self._ns = "" if tenant is None else tenant + SEP

    def id(self, item_id: str) -> str:
        """The stored id of the user's ``item_id``."""
        return self._ns + item_id

    def ids(self, item_ids: Sequence[str]) -> list[str]:
        return [self._ns + i for i in item_ids]

    def user_id(self, stored: str) -> str | None:
        """The user's id of a stored id (None: not this tenant's)."""
        if not self._ns:
            return stored
        return stored[len(self._ns) :] if stored.startswith(self._ns) else None

    def metadata(self, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        """The metadata written for an item (the tenant field set to the tenant)."""
        if self.tenant is None:
            return meta
        return {**(meta or {}), self.field: self.tenant}

    def filter(self, f: Filter | None) -> Filter | None:
        """``f`` restricted to this tenant's items (its id prefixes moved into the
        namespace); None stays None for the unscoped view."""
        if self.tenant is None:
            return f
        mine = Filter(
            must=[
                IdPrefix(id_prefix=self._ns),
                FieldCondition(key=self.field, match=MatchValue(value=self.tenant)),
            ]
        )
        return mine if f is None else Filter(must=[mine, self._namespaced(f)])

    def _namespaced(self, f: Filter) -> Filter:
        def move(c: Any) -> Any:
            if isinstance(c, IdPrefix):
                return IdPrefix(id_prefix=self._ns + c.id_prefix)
            if isinstance(c, Filter):
                return self._namespaced(c)
            return c

        return Filter(
            must=[move(c) for c in f.must],
            should=[move(c) for c in f.should],
            must_not=[move(c) for c in f.must_not],
        )
