"""Tests for tinyfaas_std.multipart: third-party corpus replay, hand-written edge cases, limits, properties."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fuzzing import fuzz

from tinyfaas_std.errors import BadRequest, PayloadTooLarge
from tinyfaas_std.multipart import (
    MAX_PART_HEADERS, MAX_PARTS, MultipartError, MultipartTooLarge, Part, parse,
)

CORPORA = Path(os.environ.get("TINYFAAS_CORPORA") or Path(__file__).resolve().parents[2] / "shared" / "corpora")
CT = "multipart/form-data; boundary=b0undary"


# --- helpers -------------------------------------------------------------------------------------------------------

def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode(parts: list[dict[str, Any]], boundary: str = "b0undary", newline: bytes = b"\r\n") -> bytes:
    """The test's own encoder: dicts with name, data and optional filename, content_type, headers."""
    out = []
    for part in parts:
        disposition = f"form-data; name={_quote(part['name'])}"
        if part.get("filename") is not None:
            disposition += f"; filename={_quote(part['filename'])}"
        lines = [f"Content-Disposition: {disposition}".encode()]
        if part.get("content_type") is not None:
            lines.append(f"Content-Type: {part['content_type']}".encode())
        lines += part.get("headers", [])
        out.append(b"--" + boundary.encode() + newline + newline.join(lines) + newline * 2 + part["data"] + newline)
    return b"".join(out) + b"--" + boundary.encode() + b"--" + newline


def field(name: str, data: bytes = b"value", **extra: Any) -> dict[str, Any]:
    return {"name": name, "data": data, **extra}


def _load(folder: str) -> list[Any]:
    manifest = CORPORA / folder / "manifest.json"
    if not manifest.is_file():
        reason = f"corpus not found: looked for {manifest} (set TINYFAAS_CORPORA to the corpora folder)"
        return [pytest.param(None, None, id=f"{folder}-missing", marks=pytest.mark.skip(reason=reason))]
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    return [pytest.param(folder, entry, id=key) for key, entry in entries.items()]


def _body(folder: str, entry: dict[str, Any]) -> bytes:
    if "body_b64" in entry:
        return base64.b64decode(entry["body_b64"])
    return (CORPORA / folder / entry["body"]).read_bytes()


PYTHON_MULTIPART = _load("python-multipart")
WERKZEUG = _load("werkzeug-multipart")


# --- corpus replay -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("folder", "entry"), PYTHON_MULTIPART)
def test_python_multipart_corpus(folder: str, entry: dict[str, Any]) -> None:
    body, content_type = _body(folder, entry), entry["content_type_header"]
    if not entry["valid"]:
        with pytest.raises(MultipartError) as caught:
            parse(body, content_type)
        assert caught.value.status == 400
        return
    # single_field_blocks: the manifest's content_type_header already uses boundary=boundary, as upstream parses it.
    parts = parse(body, content_type)
    assert [p.name for p in parts] == [e["name"] for e in entry["parts"]]
    for part, expected in zip(parts, entry["parts"]):
        # utf8_filename: the upstream body really holds the bytes "???.txt" (the Japanese name was lost upstream),
        # so equality is right here; strict UTF-8 filename decoding is covered by test_filename_decoding.
        assert part.filename == (expected.get("file_name") if expected["type"] == "file" else None)
        if "content_type" in expected and part.content_type is None:
            # single_field_single_file: upstream reports RFC 7578 section 4.4's default for a part that sent no
            # Content-Type; Part.content_type is the header as sent, so None here.
            assert expected["content_type"] == "text/plain" and "content-type" not in dict(part.headers)
        elif "content_type" in expected:
            assert part.content_type == expected["content_type"]
        assert part.data == base64.b64decode(expected["data_b64"])


@pytest.mark.parametrize(("folder", "entry"), WERKZEUG)
def test_werkzeug_corpus(folder: str, entry: dict[str, Any]) -> None:
    body, content_type = _body(folder, entry), entry["content_type_header"]
    if entry["valid"] is None:
        # Policy cases: bare CR line breaks are rejected; the RFC 2231 case is rejected for its folded header lines
        # (and would be again for filename*, see test_extended_filename_is_rejected).
        with pytest.raises(MultipartError, match="bare CR|folded"):
            parse(body, content_type)
        return
    if not entry["valid"]:
        with pytest.raises(MultipartError):
            parse(body, content_type)
        return
    parts = parse(body, content_type)
    files = entry.get("files", [])
    for expected in files:
        [part] = [p for p in parts if p.name == expected["field"]]
        assert part.filename == expected["filename"]
        if "content_type" in expected:
            assert part.content_type == expected["content_type"]
        if "content_file" in expected:
            assert part.data == (CORPORA / folder / expected["content_file"]).read_bytes()
        if "data" in expected:
            assert part.data == expected["data"].encode()
    if "fields" in entry:
        assert {p.name: p.text for p in parts if p.filename is None} == entry["fields"]
        assert len(parts) == len(files) + len(entry["fields"])
    if "parts" in entry:
        assert len(parts) == entry["parts"]


def test_ie7_bare_lf_capture_keeps_binary_data() -> None:
    entry = next((p.values[1] for p in WERKZEUG if p.id == "ie7_full_path_request"), None)
    if entry is None:
        pytest.skip(f"corpus not found under {CORPORA}")
    parts = parse(_body("werkzeug-multipart", entry), entry["content_type_header"])
    [upload] = [p for p in parts if p.filename is not None]
    assert upload.data.startswith(b"\xd0\xcf\x11\xe0")  # an OLE2 .doc, whose CR bytes stay data in LF mode
    assert b"\r" in upload.data and not upload.data.endswith(b"\n")
    assert [p.name for p in parts][:2] == ["file-form-submit-flag", "categoryId"] and parts[-1].text == "Submit"


SMALL_VALID = [p for p in PYTHON_MULTIPART + WERKZEUG
               if p.values[1] and p.values[1]["valid"] and len(_body(*p.values)) <= 2048]


@pytest.mark.parametrize(("folder", "entry"), SMALL_VALID or [pytest.param(None, None, marks=pytest.mark.skip(
    reason=f"corpus not found under {CORPORA}"))])
def test_truncated_corpus_bodies_raise(folder: str, entry: dict[str, Any]) -> None:
    body, content_type = _body(folder, entry), entry["content_type_header"]
    close = b"--" + re.search(r'boundary="?([^";]+)', content_type)[1].encode() + b"--"  # type: ignore[index]
    _assert_truncations(body, content_type, close)


# --- hand-written cases --------------------------------------------------------------------------------------------

def _assert_truncations(body: bytes, content_type: str, close: bytes) -> None:
    full = parse(body, content_type)
    for cut in range(len(body)):
        if close in body[:cut]:
            assert parse(body[:cut], content_type) == full  # only the epilogue or final line break was cut
        else:
            with pytest.raises(MultipartError):
                parse(body[:cut], content_type)


def test_truncating_own_body_at_every_offset_raises() -> None:
    body = encode([field("a", b"1\r\n2"), field("f", b"\x00\r\n--b0undar", filename="x.bin",
                                                content_type="application/octet-stream")])
    _assert_truncations(body, CT, b"--b0undary--")


LOOKALIKES = [b"\r\n--b0undary"[:n] for n in range(1, 12)] + [
    b"--b0undary", b"x--b0undary--", b"\r\n--b0undaryX", b"\r\n--b0undary-", b"\r\n--b0undary-X", b"\r\n--b0undary\r",
    b"\r\n--b0undary \tX\r\n", b"\n--b0undary\n", b"\n--b0undary--", b"\r\n--b0undar\r\n", b"\r\n--B0UNDARY\r\n",
]


@pytest.mark.parametrize("fragment", LOOKALIKES, ids=repr)
def test_delimiter_lookalikes_inside_data_stay_data(fragment: bytes) -> None:
    base = b"hello world"
    for offset in range(len(base) + 1):
        data = base[:offset] + fragment + base[offset:]
        [part] = parse(encode([field("f", data)]), CT)
        assert part.data == data


def test_part_fields_and_header_order() -> None:
    body = (b"--b0undary\r\nX-Extra:  one \t\r\nCONTENT-DISPOSITION: form-data; NAME=\"up\"; FileName=\"a.txt\"\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nabc\r\n--b0undary--\r\n")
    [part] = parse(body, CT)
    assert part == Part("up", "a.txt", "text/plain; charset=utf-8", (
        ("x-extra", "one"), ("content-disposition", 'form-data; NAME="up"; FileName="a.txt"'),
        ("content-type", "text/plain; charset=utf-8")), b"abc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.name = "other"  # type: ignore[misc]


def test_preamble_epilogue_padding_and_empty_parts() -> None:
    body = (b"preamble line\r\n--b0undary \t\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n"
            b"--b0undary\t\r\nContent-Disposition: form-data; name=b; filename=\"\"\r\n\r\n"
            b"--b0undary--  \r\nepilogue --b0undary\r\n")
    assert [(p.name, p.filename, p.data) for p in parse(body, CT)] == [("a", None, b""), ("b", "", b"")]


@pytest.mark.parametrize(("body", "parts"), [
    (b"--b0undary--", 0), (b"\r\n\r\n--b0undary--\r\n", 0), (b"--b0undary--\r\nepilogue", 0),
])
def test_empty_form(body: bytes, parts: int) -> None:
    assert len(parse(body, CT)) == parts


def test_line_break_policies() -> None:
    lf = encode([field("a", b"x\ry"), field("b", b"z")], newline=b"\n")
    assert [(p.name, p.data) for p in parse(lf, CT)] == [("a", b"x\ry"), ("b", b"z")]
    with pytest.raises(MultipartError, match="bare CR"):
        parse(encode([field("a")], newline=b"\r"), CT)
    # In a CRLF body an LF-only delimiter line is data, so this body never closes.
    crlf = encode([field("a", b"x\n--b0undary--\n")])
    assert parse(crlf, CT)[0].data == b"x\n--b0undary--\n"
    with pytest.raises(MultipartError, match="close delimiter"):
        parse(crlf.replace(b"\r\n--b0undary--", b"\n--b0undary--"), CT)


@pytest.mark.parametrize("content_type", [
    "multipart/form-data; boundary=b0undary", "Multipart/Form-Data;BOUNDARY=b0undary;", 'multipart/form-data; '
    'charset=utf-8; boundary="b0undary"', "multipart/form-data ; boundary = b0undary ; x=y",
])
def test_content_type_variants(content_type: str) -> None:
    assert parse(encode([field("a")]), content_type)[0].data == b"value"


def test_quoted_boundary_with_escapes_and_spaces() -> None:
    boundary = 'we"ird bound:ary'
    body = encode([field("a")], boundary=boundary)
    assert parse(body, f"multipart/form-data; boundary={_quote(boundary)}")[0].data == b"value"


@pytest.mark.parametrize("content_type", [
    "text/plain; boundary=b0undary", "multipart/mixed; boundary=b0undary", "multipart/form-data",
    'multipart/form-data; boundary=""', "multipart/form-data; boundary=", "multipart/form-data; boundary=\"a \"",
    "multipart/form-data; boundary=b\u00e9", "multipart/form-data; boundary=a; boundary=b",
    "multipart/form-data; boundary=a b", 'multipart/form-data; boundary="unterminated', "",
])
def test_bad_content_type(content_type: str) -> None:
    with pytest.raises(MultipartError) as caught:
        parse(b"--a\r\n", content_type)
    assert type(caught.value) is MultipartError and caught.value.status == 400


def test_boundary_length_limit() -> None:
    ok = "b" * 70
    assert parse(encode([field("a")], boundary=ok), f"multipart/form-data; boundary={ok}")[0].name == "a"
    with pytest.raises(MultipartError) as caught:
        parse(encode([field("a")], boundary=ok + "b"), f"multipart/form-data; boundary={ok}b")
    assert type(caught.value) is MultipartError and caught.value.status == 400


def test_part_count_limit() -> None:
    assert len(parse(encode([field(f"f{i}") for i in range(MAX_PARTS)]), CT)) == MAX_PARTS
    with pytest.raises(MultipartTooLarge) as caught:
        parse(encode([field(f"f{i}") for i in range(MAX_PARTS + 1)]), CT)
    assert caught.value.status == 413 and caught.value.code == "multipart_too_large"
    with pytest.raises(MultipartTooLarge):
        parse(encode([field("a"), field("b"), field("c")]), CT, max_parts=2)


def test_header_size_and_count_limits() -> None:
    prefix = b"Content-Disposition: form-data; name=a\r\nX: "

    def body(header_bytes: int) -> bytes:  # header_bytes counts the block up to, not including, the blank line
        head = prefix + b"y" * (header_bytes - len(prefix))
        return b"--b0undary\r\n" + head + b"\r\n\r\nx\r\n--b0undary--"
    assert parse(body(8192), CT)[0].headers[1] == ("x", "y" * (8192 - len(prefix)))
    with pytest.raises(MultipartTooLarge):
        parse(body(8193), CT)
    with pytest.raises(MultipartTooLarge):
        parse(body(200), CT, max_header_bytes=100)
    many = [f"X-{i}: v".encode() for i in range(MAX_PART_HEADERS - 1)]
    assert len(parse(encode([field("a", headers=many)]), CT)[0].headers) == MAX_PART_HEADERS
    with pytest.raises(MultipartTooLarge):
        parse(encode([field("a", headers=many + [b"X-last: v"])]), CT)


def test_error_classes_carry_their_status() -> None:
    assert issubclass(MultipartError, BadRequest) and issubclass(MultipartError, ValueError)
    assert (MultipartError.status, MultipartError.code) == (400, "bad_multipart")
    assert issubclass(MultipartTooLarge, PayloadTooLarge) and issubclass(MultipartTooLarge, MultipartError)
    assert (MultipartTooLarge.status, MultipartTooLarge.code) == (413, "multipart_too_large")
    assert MultipartTooLarge.close is False  # the body was read whole; keep-alive framing is intact


@pytest.mark.parametrize(("sent", "expected"), [
    (b'"../../etc/passwd"', "../../etc/passwd"), (b'"C:\\x\\y"', "C:\\x\\y"), (b'"a\\\\b"', "a\\b"),
    (b'"say \\"hi\\""', 'say "hi"'), (b'"\xe3\x81\x93\xe3\x82\x93.txt"', "\u3053\u3093.txt"),
    (b'"caf\xe9.txt"', "caf\u00e9.txt"), (b"plain.txt", "plain.txt"), (b'"tab\there\x01"', "tab\there\x01"),
])
def test_filename_decoding(sent: bytes, expected: str) -> None:
    body = b"--b0undary\r\nContent-Disposition: form-data; name=f; filename=" + sent + b"\r\n\r\nx\r\n--b0undary--"
    assert parse(body, CT)[0].filename == expected


@pytest.mark.parametrize("headers", [
    b'Content-Disposition: form-data; name="a\x00b"', b'Content-Disposition: form-data; name="a\rb"',
    b"Content-Disposition : form-data; name=a", b"Content-Disposition: form-data; name=a\r\n continued",
    b"Content-Disposition: form-data", b"Content-Disposition: attachment; name=a", b"Content-Type: text/plain",
    b"Content-Disposition: form-data; name=a; name=b", b"Content-Disposition: form-data; name=a b",
    b'Content-Disposition: form-data; name="a',
    b"Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b",
    b"Content-Disposition: form-data; name=a\r\nContent-Type: a/b\r\nContent-Type: c/d",
    b"Content-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: gzip",
    b"Content-Disposition: form-data; name=a\r\nNo-Colon", b"Content-Disposition: form-data; name=a\r\n: empty",
])
def test_malformed_part_headers(headers: bytes) -> None:
    with pytest.raises(MultipartError) as caught:
        parse(b"--b0undary\r\n" + headers + b"\r\n\r\nx\r\n--b0undary--\r\n", CT)
    assert caught.value.status == 400


def test_extended_filename_is_rejected() -> None:
    for params in (b"filename*=UTF-8''a%20b.txt", b'filename="a"; filename*=UTF-8\'\'b', b"filename*0=a"):
        with pytest.raises(MultipartError, match=r"filename\*"):
            parse(encode([field("f", headers=[])]).replace(b'name="f"', b'name="f"; ' + params), CT)


def test_headers_without_body_share_the_delimiter_line_break() -> None:
    body = b"--b0undary\r\nContent-Disposition: form-data; name=a\r\n\r\n--b0undary--"
    assert parse(body, CT)[0].data == b""  # RFC 2046: body-part := MIME-part-headers [CRLF *OCTET]
    with pytest.raises(MultipartError, match="blank line"):  # the last header line lost its own line break
        parse(body.replace(b"\r\n\r\n", b"\r\n"), CT)


@pytest.mark.parametrize(("encoding", "sent", "data"), [
    ("base64", b"aGVs\r\nbG8g d29y\tbGQ=", b"hello world"), ("BASE64", b"", b""),
    ("quoted-printable", b"a=3Db=\r\nc=e9 ", b"a=bc\xe9 "), ("8bit", b"=ZZ", b"=ZZ"), ("Binary", b"\x00", b"\x00"),
])
def test_transfer_encodings(encoding: str, sent: bytes, data: bytes) -> None:
    headers = [f"Content-Transfer-Encoding: {encoding}".encode()]
    assert parse(encode([field("a", sent, headers=headers)]), CT)[0].data == data


@pytest.mark.parametrize(("encoding", "sent"), [
    ("base64", b"aGVsbG8"), ("base64", b"aGV*sbG8="), ("quoted-printable", b"a=ZZ"), ("quoted-printable", b"a=4"),
    ("x-unknown", b"abc"),
])
def test_bad_transfer_encodings(encoding: str, sent: bytes) -> None:
    headers = [f"Content-Transfer-Encoding: {encoding}".encode()]
    with pytest.raises(MultipartError):
        parse(encode([field("a", sent, headers=headers)]), CT)


def test_text_is_strict_utf8() -> None:
    good, bad = parse(encode([field("g", "\u00fc".encode()), field("b", b"\xff")]), CT)
    assert good.text == "\u00fc"
    with pytest.raises(MultipartError):
        bad.text


# --- properties ----------------------------------------------------------------------------------------------------

_PIECES = [b"--b0undary", b"--", b"\r\n", b"\n", b"\r", b" ", b":", b";", b"=", b'"', b"\\", b"\x00",
           b"Content-Disposition: form-data; name=\"x\"", b"; filename=\"f\"", b"filename*=x",
           b"Content-Transfer-Encoding: ", b"base64", b"quoted-printable", b"=3D", b"\r\n\r\n"]
_CONTENT_TYPES = st.one_of(
    st.just(CT), st.text(max_size=60),
    st.text(max_size=80).map(lambda b: f"multipart/form-data; boundary={b}"),
)
_BODIES = st.one_of(st.binary(max_size=300),
                    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=6)), max_size=40).map(b"".join))


@fuzz(300)
@given(body=_BODIES, content_type=_CONTENT_TYPES)
def test_random_input_only_raises_multipart_error(body: bytes, content_type: str) -> None:
    try:
        parts = parse(body, content_type)
    except MultipartError as exc:
        assert exc.status in (400, 413) and exc.message
    else:
        assert all(isinstance(p, Part) and isinstance(p.name, str) and isinstance(p.data, bytes) for p in parts)
        assert len(parts) <= MAX_PARTS


_SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=12)
_BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "


@fuzz(300)
@given(
    parts=st.lists(st.fixed_dictionaries({"name": _SAFE_TEXT, "data": st.binary(max_size=200)}, optional={
        "filename": _SAFE_TEXT, "content_type": st.sampled_from(["text/plain", "image/png; x=\"1\""])}), max_size=8),
    boundary=st.text(_BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" ")),
    newline=st.sampled_from([b"\r\n", b"\n"]),
)
def test_roundtrip(parts: list[dict[str, Any]], boundary: str, newline: bytes) -> None:
    # RFC 2046: the delimiter must not occur in data (the blank line before the data counts as its line break).
    assume(all(newline + b"--" + boundary.encode() not in newline + p["data"] for p in parts))
    parsed = parse(encode(parts, boundary, newline), f"multipart/form-data; boundary={_quote(boundary)}")
    assert [(p.name, p.filename, p.content_type, p.data) for p in parsed] == [
        (p["name"], p.get("filename"), p.get("content_type"), p["data"]) for p in parts]
