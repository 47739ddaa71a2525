"""Tokens with names, scopes and tenants (serve_app.auth), stored hashed, from the environment
and from a file that is re-read when it changes; ``irene token``. No Ray, no Serve."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from irene.cli import app
from irene.tokens import AuthConfigError, hash_token, token_entry
from serve_app.auth import ANONYMOUS, AuthError, Principal, TokenAuth
from serve_app.schemas import AppArgs, AuthSettings

READER = "reader-token-Xq81"
WRITER = "writer-token-Zp42"
ACME = "acme-token-Kk07"
ADMIN = "admin-token-Rr55"


def entry(token: str, name: str, scopes: list[str], tenant: str | None = None) -> dict:
    return {
        "name": name,
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "scopes": scopes,
        "tenant": tenant,
    }


ENTRIES = [
    entry(READER, "reader", ["read"]),
    entry(WRITER, "writer", ["read", "write"]),
    entry(ACME, "acme-app", ["read", "write"], tenant="acme"),
    entry(ADMIN, "ops", ["admin"]),
]


def env_auth(entries=ENTRIES, **settings) -> TokenAuth:
    settings.setdefault("tenant_field", "tenant")
    settings.setdefault("protect_reads", settings["tenant_field"] is not None)
    return TokenAuth(AuthSettings(**settings), environ={"IRENE_API_TOKENS": json.dumps(entries)})


def status_of(fn, *args) -> int:
    with pytest.raises(AuthError) as e:
        fn(*args)
    return e.value.status


def strings_in(obj, seen=None) -> list[str]:
    """Every string reachable from ``obj``'s attributes (dicts, sequences, dataclasses,
    pydantic models, plain objects)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, bytes):
        return [obj.decode("latin-1")]
    if isinstance(obj, dict):
        return [s for kv in obj.items() for x in kv for s in strings_in(x, seen)]
    if isinstance(obj, list | tuple | set | frozenset):
        return [s for x in obj for s in strings_in(x, seen)]
    if isinstance(obj, BaseModel):
        return strings_in(obj.model_dump(), seen)
    if dataclasses.is_dataclass(obj):
        return strings_in(vars(obj), seen)
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("serve_app"):
        return strings_in(vars(obj), seen)
    return []


# --------------------------------------------------------------------------- principals
def test_entries_from_env_give_principals_with_scopes_and_tenant():
    auth = env_auth(protect_reads=True)
    assert auth.configured
    reader = auth.authenticate(READER)
    assert reader == Principal("reader", frozenset({"read"}), None)
    assert auth.require(reader, "read") is reader
    with pytest.raises(AuthError) as e:
        auth.require(reader, "write")
    assert e.value.status == 403 and e.value.message == "token 'reader' lacks the 'write' scope"

    acme = auth.check(f"  {ACME}\n", write=True)  # surrounding whitespace is not the token
    assert acme.name == "acme-app" and acme.tenant == "acme" and acme.has("write")

    # no scope implies another: admin alone cannot write or read
    ops = auth.authenticate(ADMIN)
    assert ops.scopes == {"admin"} and auth.require(ops, "admin") is ops
    assert status_of(auth.require, ops, "write") == 403
    assert status_of(auth.check, ADMIN, False) == 403

    assert status_of(auth.authenticate, "not-a-token") == 403
    assert status_of(auth.authenticate, None) == 401  # protect_reads: no anonymous
    assert status_of(auth.authenticate, "") == 401
    with pytest.raises(ValueError, match="unknown scope"):
        auth.require(reader, "delete")


def test_open_reads_anonymous_and_presented_tokens():
    # protect_reads: false (so no tenants: tenant_field needs protected reads)
    auth = env_auth([e for e in ENTRIES if not e.get("tenant")], tenant_field=None)
    assert auth.authenticate(None) is ANONYMOUS
    assert not ANONYMOUS.authenticated and ANONYMOUS.scopes == {"read"} and ANONYMOUS.tenant is None
    assert auth.check(None, write=False) is ANONYMOUS
    assert status_of(auth.check, None, True) == 401  # a write without a token
    # a presented token is still checked on an open read: a bad one is refused instead of
    # silently becoming anonymous
    assert auth.check(WRITER, write=False).name == "writer"
    assert status_of(auth.check, "stale-token", False) == 403
    # open reads: every principal may read, even one whose entry lists only admin
    assert auth.check(ADMIN, write=False).scopes == {"admin", "read"}


def test_plaintext_is_never_stored(tmp_path: Path):
    legacy = "legacy-plaintext-Qw93"
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps(ENTRIES[:2]))
    auth = TokenAuth(
        AuthSettings(token=legacy, tokens_file=str(f), tenant_field="tenant", protect_reads=True),
        environ={"IRENE_API_TOKENS": json.dumps(ENTRIES[2:])},
    )
    for tok in (legacy, READER, WRITER, ACME, ADMIN):
        auth.authenticate(tok)  # all four entries and the legacy token work
        assert tok not in repr(auth) and tok not in str(vars(auth))
        assert not any(tok in s for s in strings_in(auth)), tok
        assert hash_token(tok) in strings_in(auth)  # ... their digests are what is kept
    assert legacy not in repr(AuthSettings(token=legacy))  # the settings' repr hides it too
    assert legacy not in repr(auth.authenticate(legacy))


def test_legacy_single_token_has_all_scopes_and_no_tenant():
    auth = TokenAuth(AuthSettings(token="cfg"), environ={"IRENE_API_TOKEN": "from-env"})
    p = auth.check("from-env", write=True)
    assert p.scopes == {"read", "write", "admin"} and p.tenant is None and p.name == "legacy"
    assert auth.require(p, "admin") is p
    assert status_of(auth.authenticate, "cfg") == 403  # the environment wins
    # the legacy token works next to hashed entries
    both = TokenAuth(
        AuthSettings(token="cfg", tenant_field="t", protect_reads=True),
        environ={"IRENE_API_TOKENS": json.dumps(ENTRIES)},
    )
    assert both.authenticate("cfg").name == "legacy" and both.authenticate(READER).name == "reader"


def test_no_token_configured(tmp_path: Path):
    auth = TokenAuth(AuthSettings(protect_reads=True), environ={})
    assert not auth.configured
    assert auth.check("anything", write=False) is ANONYMOUS  # nothing to check it against
    with pytest.raises(AuthError) as e:
        auth.check(None, write=True)
    assert e.value.status == 403 and "no API token is configured" in e.value.message
    assert "IRENE_API_TOKENS" in e.value.message
    open_writes = TokenAuth(AuthSettings(allow_unauthenticated_writes=True), environ={})
    assert open_writes.check(None, write=True).scopes == {"read", "write"}
    assert status_of(open_writes.require, open_writes.authenticate(None), "admin") == 403
    # an (empty) tokens_file counts as configured: fail closed, nothing becomes open
    f = tmp_path / "tokens.json"
    f.write_text("[]")
    empty = TokenAuth(
        AuthSettings(tokens_file=str(f), allow_unauthenticated_writes=True), environ={}
    )
    assert empty.configured and status_of(empty.check, None, True) == 401


# --------------------------------------------------------------------------- the file
def write(path: Path, entries, mtime: int) -> None:
    path.write_text(yaml.safe_dump(entries) if path.suffix != ".json" else json.dumps(entries))
    os.utime(path, (mtime, mtime))  # a different mtime, whatever the clock's resolution


def test_file_rotation_without_a_restart(tmp_path: Path, caplog):
    f = tmp_path / "tokens.yaml"  # YAML, like a mounted Secret
    write(f, [entry("old-token-1", "svc", ["read", "write"])], 1_000_000)
    auth = TokenAuth(AuthSettings(tokens_file=str(f), reload_s=0), environ={})
    assert auth.check("old-token-1", write=True).name == "svc"

    write(f, [entry("new-token-2", "svc-v2", ["read", "write"])], 1_000_100)
    assert status_of(auth.authenticate, "old-token-1") == 403  # revoked at the next request
    assert auth.check("new-token-2", write=True).name == "svc-v2"

    # a broken file keeps the previous set and names the file and the problem, once
    caplog.set_level(logging.INFO, logger="serve_app.auth")
    f.write_text("- name: svc-v3\n  sha256: [unclosed\n")
    os.utime(f, (1_000_200, 1_000_200))
    for _ in range(3):
        assert auth.authenticate("new-token-2").name == "svc-v2"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(f) in errors[0] and "not valid YAML" in errors[0]
    assert "keeping the previous 1 token" in errors[0]

    # an invalid entry too, named by position and field
    caplog.clear()
    write(f, [entry("x-token", "a", ["read"]), entry("y-token", "b", ["wirte"])], 1_000_300)
    assert auth.authenticate("new-token-2").name == "svc-v2"
    assert status_of(auth.authenticate, "x-token") == 403
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"tokens_file {f} entry 2: scopes: 'wirte' is not one of read, write, admin" in error

    # a file that disappears keeps the set as well (a Secret's symlink swap can look like that)
    f.unlink()
    assert auth.authenticate("new-token-2").name == "svc-v2"
    # and a good version is picked up again
    write(f, [entry("z-token", "svc-v4", ["read"])], 1_000_400)
    assert auth.authenticate("z-token").name == "svc-v4"
    assert status_of(auth.authenticate, "new-token-2") == 403


def test_file_is_checked_at_most_every_reload_s(tmp_path: Path):
    now = [100.0]
    f = tmp_path / "tokens.json"
    write(f, [entry("first", "a", ["read"])], 1_000_000)
    auth = TokenAuth(
        AuthSettings(tokens_file=str(f), reload_s=5, protect_reads=True),
        environ={},
        clock=lambda: now[0],
    )
    write(f, [entry("second", "b", ["read"])], 1_000_100)
    now[0] += 4.9
    assert auth.authenticate("first").name == "a"  # not checked yet
    now[0] += 0.2
    assert auth.authenticate("second").name == "b"
    assert status_of(auth.authenticate, "first") == 403
    # reload() re-reads at once
    write(f, [entry("third", "c", ["read"])], 1_000_200)
    assert auth.reload() and auth.authenticate("third").name == "c"


def test_bad_sources_fail_at_startup_naming_the_field(tmp_path: Path):
    def error(entries, **settings) -> str:
        with pytest.raises(AuthConfigError) as e:
            env_auth(entries, **settings)
        return str(e.value)

    good = entry("t1", "a", ["read"])
    assert error([good, entry("t2", "b", ["wirte"])]) == (
        "IRENE_API_TOKENS entry 2: scopes: 'wirte' is not one of read, write, admin"
    )
    assert error([{**good, "scopes": []}]).endswith(
        "entry 1: scopes: must list at least one of read, write, admin"
    )
    assert error([{**good, "scopes": "read"}]).endswith(
        "entry 1: scopes: must be a list, e.g. [read, write]"
    )
    assert error([{**good, "sha256": "abc"}]).endswith(
        "entry 1: sha256: must be the 64 hex characters of the token's SHA-256 (got 3 characters)"
    )
    assert error([{"name": "a", "scopes": ["read"]}]).endswith("entry 1: sha256: missing")
    assert "entry 1: name: must be 1-64" in error([{**good, "name": ""}])
    assert "entry 1: tenant: must be a non-empty string" in error([{**good, "tenant": " "}])
    assert "IRENE_API_TOKENS: must be a list" in error({"name": "a"})
    dup = error([good, entry("t1", "b", ["write"])])
    assert "entry 2 ('b'): sha256: duplicate of IRENE_API_TOKENS entry 1 ('a')" in dup
    tenant = error([entry("t3", "acme-app", ["read"], tenant="acme")], tenant_field=None)
    assert "entry 1 ('acme-app'): tenant: set, but auth.tenant_field" in tenant
    # a plaintext token where the digest belongs is refused, without echoing it
    msg = error([{**good, "token": "plain-Secret-9"}])
    assert "unknown field 'token'" in msg and "sha256" in msg and "plain-Secret-9" not in msg
    msg = error([{**good, "plain-Secret-9-long-token-like-key": 1}])
    assert "unknown field a string" in msg and "plain-Secret-9" not in msg

    with pytest.raises(AuthConfigError, match="IRENE_API_TOKENS: not valid JSON"):
        TokenAuth(AuthSettings(), environ={"IRENE_API_TOKENS": "[{oops"})
    with pytest.raises(AuthConfigError, match=r"tokens_file .*missing\.json: cannot read it"):
        TokenAuth(AuthSettings(tokens_file=str(tmp_path / "missing.json")), environ={})
    f = tmp_path / "t.json"
    f.write_text('[{"name": "a",}]')
    with pytest.raises(AuthConfigError, match=rf"tokens_file {f}: not valid JSON \(.* line 1"):
        TokenAuth(AuthSettings(tokens_file=str(f)), environ={})
    # the legacy token and an entry for the same token: a duplicate as well
    with pytest.raises(AuthConfigError, match="duplicate of"):
        TokenAuth(
            AuthSettings(),
            environ={"IRENE_API_TOKEN": "t1", "IRENE_API_TOKENS": json.dumps([good])},
        )


def test_settings_fields():
    s = AuthSettings()
    assert (s.tokens_env, s.tokens_file, s.reload_s, s.tenant_field) == (
        "IRENE_API_TOKENS",
        None,
        2.0,
        None,
    )
    with pytest.raises(ValidationError):
        AuthSettings(reload_s=-1)
    with pytest.raises(ValidationError):
        AuthSettings(tenant_field="")
    with pytest.raises(ValidationError):
        AuthSettings(tokens_fiel="x")
    with pytest.raises(ValidationError, match="protect_reads is false"):
        AuthSettings(tenant_field="customer")  # anonymous reads would see every tenant
    args = AppArgs(
        auth={
            "tokens_file": "/etc/irene/tokens.yaml",
            "tenant_field": "customer",
            "protect_reads": True,
        }
    )
    assert args.auth.tokens_file == "/etc/irene/tokens.yaml"
    assert "description" in AuthSettings.model_json_schema()["properties"]["tenant_field"]


def test_secrets_stay_out_of_logs_and_errors(tmp_path: Path, caplog):
    secret = "SeCrEt-presented-ToKeN-31337"
    caplog.set_level(logging.DEBUG)
    auth = env_auth(protect_reads=True)
    messages = []
    for tok in (secret, f"  {secret}  ", secret + "x"):
        with pytest.raises(AuthError) as e:
            auth.check(tok, write=True)
        assert e.value.status == 403
        messages += [e.value.message, str(e.value), repr(e.value)]
    with pytest.raises(AuthError) as e:  # a valid token lacking the scope: named, not echoed
        auth.check(READER, write=True)
    messages += [e.value.message, str(e.value)]
    assert READER not in " ".join(messages) and "'reader'" in e.value.message

    # a tokens file that holds the plaintext by mistake, then breaks: the logged error has
    # the problem and its position, not the offending line
    f = tmp_path / "tokens.yaml"
    write(f, [entry(secret, "svc", ["read"])], 1_000_000)
    file_auth = TokenAuth(AuthSettings(tokens_file=str(f), reload_s=0), environ={})
    f.write_text(f'- name: svc\n  token: "{secret}\n')  # YAML's own message quotes this line
    os.utime(f, (1_000_100, 1_000_100))
    assert file_auth.authenticate(secret).name == "svc"  # kept the previous set
    f.write_text(f"- name: svc\n  token: {secret}\n  scopes: [read]\n")
    os.utime(f, (1_000_200, 1_000_200))
    assert file_auth.authenticate(secret).name == "svc"

    logged = [r.getMessage() for r in caplog.records]
    assert any("not valid YAML" in m for m in logged)
    assert any("unknown field 'token'" in m for m in logged)
    assert any("refused an unknown bearer token" in m for m in logged)
    assert secret not in caplog.text and secret not in " ".join(logged + messages)


# --------------------------------------------------------------------------- irene token
def test_irene_token_new_and_hash():
    res = CliRunner().invoke(
        app, ["token", "new", "--name", "svc-a", "--scopes", "write,read", "--tenant", "acme"]
    )
    assert res.exit_code == 0, res.output
    token, line, *rest = res.stdout.splitlines()
    assert not rest and len(token) >= 43
    got = json.loads(line)
    assert got == {
        "name": "svc-a",
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "scopes": ["read", "write"],
        "tenant": "acme",
    }
    assert token not in line
    # the entry works as printed, and two runs give two tokens
    auth = TokenAuth(
        AuthSettings(tenant_field="tenant", protect_reads=True),
        environ={"IRENE_API_TOKENS": json.dumps([got])},
    )
    p = auth.check(token, write=True)
    assert (p.name, p.tenant) == ("svc-a", "acme")
    again = CliRunner().invoke(app, ["token", "new", "--name", "b", "--scopes", "read"])
    assert again.exit_code == 0 and again.stdout.splitlines()[0] != token
    assert json.loads(again.stdout.splitlines()[1])["tenant"] is None

    res = CliRunner().invoke(app, ["token", "new", "--name", "x", "--scopes", "read,wirte"])
    assert res.exit_code == 2
    assert "scopes: 'wirte' is not one of read, write, admin" in res.output

    res = CliRunner().invoke(
        app, ["token", "hash", "--name", "old", "--scopes", "read,write,admin"], input="legacy\n"
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == token_entry("legacy", "old", ["admin", "write", "read"])
    assert json.loads(res.stdout)["sha256"] == hashlib.sha256(b"legacy").hexdigest()
