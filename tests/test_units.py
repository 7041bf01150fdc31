"""Pure parts, without a server: Basic Auth, the invocation body, the log store and the registry."""

from __future__ import annotations

import base64
import dataclasses
import json
import os

import pytest
from hypothesis import given, strategies as st

from fuzzing import fuzz

from tinyfaas_std.auth import Authenticator, parse_basic_auth
from tinyfaas_std.bodies import MAX_DEPTH, BadBody, parse_invocation
from tinyfaas_std.errors import FaasError, Unauthorized
from tinyfaas_std.logs import LogStore, encode_record
from tinyfaas_std.state import FunctionRecord, Registry, Version
from tinyfaas_std.venvs import parse_requirements


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


# -- Basic Auth (RFC 7617) -------------------------------------------------------------------------------------

def test_basic_auth_parses_user_and_password_with_colons_and_utf8() -> None:
    creds = parse_basic_auth(_basic("jürgen:pa:ss".encode()))
    assert (creds.username, creds.password) == ("jürgen", "pa:ss")
    assert parse_basic_auth("basic " + base64.b64encode(b"a:").decode()).password == ""


@pytest.mark.parametrize("value", [None, "", "Basic", "Basic ", "Digest abc", "Basic %%%", _basic(b"nocolon"),
                                   _basic(b"\xff:\xfe"), "Basic YQ", "Basic " + "A" * 3])
def test_malformed_basic_auth_is_unauthorized(value: str | None) -> None:
    with pytest.raises(Unauthorized):
        parse_basic_auth(value)


def test_authenticator_accepts_only_the_configured_pair() -> None:
    auth = Authenticator("admin", "1234")
    auth.check(_basic(b"admin:1234"))
    auth.check("basic  " + base64.b64encode(b"admin:1234").decode())  # scheme is case-insensitive
    for wrong in (_basic(b"admin:12345"), _basic(b"Admin:1234"), _basic(b"admin:123"), None):
        with pytest.raises(Unauthorized):
            auth.check(wrong)


@fuzz(300)
@given(st.one_of(st.none(), st.text(), st.binary().map(lambda b: "Basic " + base64.b64encode(b).decode())))
def test_fuzz_basic_auth_parser_raises_only_unauthorized(value: str | None) -> None:
    try:
        parse_basic_auth(value)
    except Unauthorized:
        pass


# -- invocation bodies -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, args, kwargs", [
    (b"", [], {}), (b"  \n", [], {}), (b"[1, 2]", [1, 2], {}), (b'{"args": [1]}', [1], {}),
    (b'{"kwargs": {"a": null}}', [], {"a": None}), (b"{}", [], {}), (b'["\\ud800"]', ["\ud800"], {}),
])
def test_invocation_shapes(body: bytes, args: list, kwargs: dict) -> None:
    call = parse_invocation(body)
    assert call.args == args and call.kwargs == kwargs
    fragment = call.fragment()
    assert json.loads(b"{" + fragment + b"}") == {"args": args, "kwargs": kwargs}
    assert fragment.isascii()  # lone surrogates stay escaped


@pytest.mark.parametrize("body", [b"[NaN]", b"[Infinity]", b"[-Infinity]", b"[1" + b"0" * 5000 + b"]",
                                  b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2), b"[" * 100000,
                                  b"\xc3\x28", b"null", b"1", b'{"args": {}}', b'{"kwargs": [1]}', b'{"x": 1}'])
def test_invocation_rejects_with_400(body: bytes) -> None:
    with pytest.raises(BadBody):
        parse_invocation(body)


@fuzz(500)
@given(st.binary(max_size=200))
def test_fuzz_invocation_parser_raises_only_bad_body(body: bytes) -> None:
    try:
        call = parse_invocation(body)
    except BadBody:
        return
    assert isinstance(call.args, list) and isinstance(call.kwargs, dict)


# -- requirements policy ---------------------------------------------------------------------------------------

def test_requirements_keep_plain_lines_and_drop_comments() -> None:
    text = "# top\ngreetlib==1.0  # pinned\nrequests[security] >=2.0, <3 ; python_version >= '3.8'\n\nnumpy\n"
    assert parse_requirements(text) == ["greetlib==1.0", "requests[security] >=2.0, <3 ; python_version >= '3.8'",
                                        "numpy"]


@pytest.mark.parametrize("line", ["-r other.txt", "--extra-index-url x", "-e git+https://x/y", "./pkg", "/abs",
                                  "file:///etc", "pkg @ https://x/y.whl", "https://x/y.whl", "C:\\pkg",
                                  "six; python_version>'0' --global-option=--foo",
                                  "six ; python_version>'0' --config-settings=x=y"])
def test_requirements_reject_options_paths_and_urls(line: str) -> None:
    with pytest.raises(FaasError) as info:
        parse_requirements(line)
    assert info.value.status == 422


def test_requirements_are_bounded_in_size_and_lines() -> None:
    with pytest.raises(FaasError) as info:
        parse_requirements("x" * (64 * 1024 + 1))
    assert info.value.status == 413
    with pytest.raises(FaasError) as info:
        parse_requirements("\n".join(f"pkg{i}" for i in range(201)))
    assert info.value.status == 422
    assert len(parse_requirements("\n".join(f"pkg{i}" for i in range(200)))) == 200


@pytest.mark.parametrize("name", ["..", "../x", "a/../../b", "/abs"])
def test_log_folders_stay_inside_the_log_root(tmp_path, name: str) -> None:
    with pytest.raises(ValueError):
        LogStore(tmp_path / "logs", retention=0).open(name)


# -- the log store ---------------------------------------------------------------------------------------------

def _record(i: int, status: str = "ok") -> bytes:
    outcome = b'"result":%d' % i if status == "ok" else b'"error":{}'
    return encode_record(id=f"00000000-0000-4000-8000-{i:012d}", status=status, function="f", trigger="http",
                         start=1.0, end=2.0, rest=b'"args":[%d],"kwargs":{},"stdout":"","stderr":"",' % i + outcome)


def test_log_store_appends_reads_newest_and_counts(tmp_path) -> None:
    log = LogStore(tmp_path, retention=0).open("f")
    for i in range(25):
        log.append(_record(i, "ok" if i % 5 else "error"), is_error=not i % 5)
    assert [json.loads(x)["args"] for x in log.read(limit=3)] == [[22], [23], [24]]
    assert len(list(log.read())) == 25
    assert log.counts() == (25, 5)
    log.close()
    assert LogStore(tmp_path, retention=0).open("f").counts() == (25, 5)  # recounted from the files


def test_error_counts_are_not_fooled_by_arguments_that_look_like_a_status(tmp_path) -> None:
    log = LogStore(tmp_path, retention=0).open("f")
    line = encode_record(id="00000000-0000-4000-8000-000000000000", status="error", function="f", trigger="http",
                         start=1.0, end=2.0, rest=b'"args":[{"status":"ok"}],"kwargs":{},"error":{}')
    log.append(line, is_error=True)
    log.close()
    assert LogStore(tmp_path, retention=0).open("f").counts() == (1, 1)


def test_log_retention_drops_whole_old_segments_and_reads_exactly_the_newest(tmp_path) -> None:
    log = LogStore(tmp_path, retention=10).open("f")
    for i in range(103):
        log.append(_record(i), is_error=False)
    assert [json.loads(x)["args"][0] for x in log.read()] == list(range(93, 103))
    assert len(list((tmp_path / "f").glob("*.jsonl"))) <= 6  # old segments deleted, not rewritten


def test_a_torn_last_line_is_cut_and_appends_continue_cleanly(tmp_path) -> None:
    log = LogStore(tmp_path, retention=0).open("f")
    for i in range(3):
        log.append(_record(i), is_error=False)
    log.close()
    segment = next((tmp_path / "f").glob("*.jsonl"))
    with open(segment, "ab") as f:
        f.write(_record(3)[:40])  # the server died in the middle of a write
    log = LogStore(tmp_path, retention=0).open("f")
    assert [json.loads(x)["args"][0] for x in log.read()] == [0, 1, 2]
    log.append(_record(4), is_error=False)
    assert [json.loads(x)["args"][0] for x in log.read()] == [0, 1, 2, 4]


def test_a_closed_log_drops_late_appends_instead_of_coming_back(tmp_path) -> None:
    store = LogStore(tmp_path, retention=0)
    log = store.open("f")
    log.append(_record(1), is_error=False)
    log.close()
    store.remove("f")
    log.append(_record(2), is_error=False)  # a call that finished after its function was deleted
    assert not (tmp_path / "f").exists()


def test_registry_round_trips_and_writes_atomically(tmp_path) -> None:
    path = tmp_path / "functions.json"
    reg = Registry(path)
    version = Version(version="1", created=2.0, code="v-1", requirements=["x"], venv="k", env={"A": "1"})
    reg.put(FunctionRecord(name="b", created=1.0, updated=2.0, uid=1000, live="1", versions=(version,)))
    reg.put(FunctionRecord(name="a", created=1.0, updated=1.0, uid=1001, live="1", versions=(version,)))
    assert Registry(path).names() == ["a", "b"] and Registry(path).get("b") == reg.get("b")
    assert Registry(path).get("b").current.requirements == ["x"]
    reg.remove("a")
    assert Registry(path).names() == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["functions.json"]  # no temporary file left behind
    assert os.stat(path).st_size > 0


def test_a_reopened_log_counts_old_segments_lazily_and_still_prunes(tmp_path) -> None:
    log = LogStore(tmp_path, retention=10).open("f")
    for i in range(15):
        log.append(_record(i, "error" if i % 3 == 0 else "ok"), is_error=i % 3 == 0)
    log.close()
    log = LogStore(tmp_path, retention=10).open("f")
    log.append(_record(15), is_error=False)  # opens only the newest segment
    on_disk = [json.loads(line) for f in sorted((tmp_path / "f").glob("*.jsonl")) for line in f.read_bytes().splitlines()]
    assert log.counts() == (10, sum(r["status"] == "error" for r in on_disk))  # errors of every kept segment
    for i in range(16, 30):
        log.append(_record(i), is_error=False)
    assert [json.loads(x)["args"][0] for x in log.read()] == list(range(20, 30))


def test_owner_uid_reads_the_kernels_socket_tables() -> None:
    from tinyfaas_std.peers import owner_uid

    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
           "   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 200003        0 2\n")
    assert owner_uid(tcp, "127.0.0.1", 0xD431) == 200003
    assert owner_uid(tcp, "127.0.0.1", 0x1F90) == 0
    assert owner_uid(tcp, "127.0.0.2", 0xD431) is None
    tcp6 = ("  sl  local_address                         remote_address                        st tx_queue rx_queue "
            "tr tm->when retrnsmt   uid  timeout inode\n"
            "   0: 00000000000000000000000001000000:A000 00000000000000000000000001000000:1F90 01 00000000:00000000 "
            "00:00000000 00000000  1234        0 3\n"
            "   1: 0000000000000000FFFF00000100007F:A001 0000000000000000FFFF00000100007F:1F90 01 00000000:00000000 "
            "00:00000000 00000000  4321        0 4\n")
    assert owner_uid(tcp6, "::1", 0xA000) == 1234
    assert owner_uid(tcp6, "::ffff:127.0.0.1", 0xA001) == 4321


def test_a_registry_write_that_fails_changes_nothing(tmp_path, monkeypatch) -> None:
    from tinyfaas_std import state

    reg = Registry(tmp_path / "functions.json")
    version = Version(version="1", created=1.0, code="v-1")
    reg.put(FunctionRecord(name="a", created=1.0, updated=1.0, uid=1000, live="1", versions=(version,)))

    def full_disk(path, data, mode=0o644):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state, "atomic_write", full_disk)
    newer = FunctionRecord(name="a", created=1.0, updated=2.0, uid=1000, live="2",
                           versions=(version, Version(version="2", created=2.0, code="v-2")))
    for change in (lambda: reg.put(newer), lambda: reg.remove("a"),
                   lambda: reg.put(dataclasses.replace(newer, name="b"))):
        with pytest.raises(OSError):
            change()
        assert reg.names() == ["a"] and reg.get("a").live == "1"
    monkeypatch.undo()
    assert Registry(tmp_path / "functions.json").get("a").live == "1"
