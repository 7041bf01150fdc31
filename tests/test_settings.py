"""Pure rules of a function's own settings (SPEC 10), without a server: `env`/`secrets` lines and objects, the
reserved names, the limits on entries and bytes, `timeout`/`memory_mb`/`max_workers` bounds, and the PATCH
document. The numbers (100 entries, 64 KiB, 3600 s, 64-65536 MiB, 1-64 workers) are the SPEC's, written out here
rather than imported, so a changed constant is caught."""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import pytest
from hypothesis import given, strategies as st

from fuzzing import fuzz

from tinyfaas_std.errors import BadRequest
from tinyfaas_std.settings import apply, from_form, from_patch, parse_env_lines

RESERVED = ["PATH", "HOME", "TMPDIR", "LANG"]
RESERVED_PREFIXED = ["TINYFAAS_", "TINYFAAS_FUNCTION", "TINYFAAS_VERSION", "TINYFAAS_PASSWORD", "PYTHON",
                     "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT", "LD_", "LD_PRELOAD",
                     "LD_LIBRARY_PATH", "LD_AUDIT"]
NEAR_MISSES = ["MY_PATH", "PATH_EXTRA", "PATHS", "HOMEDIR", "LANGUAGE", "XTINYFAAS_", "TINYFAAS", "PYTHO",
               "MY_PYTHONPATH", "LD", "OLD_LIB", "_", "_PATH", "a", "x1", "A_B_9"]
BAD_NAMES = ["1ABC", "9", "A-B", "A.B", "A B", "Ä", "ÄBC", "名前", "A\tB", "$A", "A$", "-A"]
SPEC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _refused(code: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        fn(*args, **kwargs)
    assert info.value.status == 400 and info.value.code == code, info.value.body()
    return info.value


def _form(**fields: str) -> tuple[dict[str, str], dict[str, str]]:
    """The environment and secrets an upload of a new function with these form fields ends up with."""
    return apply({}, {}, from_form(fields))


def _patch(doc: Any, env: dict[str, str] | None = None,
           secrets: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    return apply(env or {}, secrets or {}, from_patch(doc))


def _is_reserved(name: str) -> bool:
    return name in RESERVED or name.startswith(("TINYFAAS_", "PYTHON", "LD_"))


# -- KEY=VALUE lines ---------------------------------------------------------------------------------------------

def test_env_lines_skip_comments_and_blank_lines_and_keep_the_value_after_the_first_equals_sign() -> None:
    text = ("# database\n\n   \n\t\nA=1\nURL=postgres://u:p@h/db?x=1&y=2\nSPACED= two words \n"
            "   # an indented comment\nEMPTY=\nHASH=#not a comment\nEQ===\n")
    assert parse_env_lines(text, "env") == {
        "A": "1", "URL": "postgres://u:p@h/db?x=1&y=2", "SPACED": " two words ", "EMPTY": "",
        "HASH": "#not a comment", "EQ": "=="}


def test_env_lines_accept_crlf_and_spaces_around_the_name() -> None:
    assert parse_env_lines("A=1\r\n  B =2\r\nC=3", "env") == {"A": "1", "B": "2", "C": "3"}
    # a line of a text field ends at "\n" (or "\r\n"): other Unicode separators are part of a value
    assert parse_env_lines("A=x\u2028y\x0bz\x85\nB=2\n", "env") == {"A": "x\u2028y\x0bz\x85", "B": "2"}
    assert parse_env_lines("", "env") == {} and parse_env_lines("# only a comment\n\n", "secrets") == {}


@pytest.mark.parametrize("text", ["A=1\nJUST_A_NAME\n", "no equals sign", "A=1\n:=x\n", "=value\n"])
def test_an_env_line_that_is_not_name_equals_value_is_bad_env(text: str) -> None:
    for field in ("env", "secrets"):
        _refused("bad_env", _form, **{field: text})


def test_a_name_set_twice_in_one_field_is_bad_env() -> None:
    for field in ("env", "secrets"):
        _refused("bad_env", _form, **{field: "A=1\nB=2\nA=3\n"})


@pytest.mark.parametrize("name", RESERVED + RESERVED_PREFIXED)
def test_every_reserved_name_and_prefix_is_bad_env_in_uploads_and_patches(name: str) -> None:
    for field in ("env", "secrets"):
        _refused("bad_env", _form, **{field: f"OK=1\n{name}=x\n"})
        _refused("bad_env", _patch, {field: {"OK": "1", name: "x"}})
        _refused("bad_env", _patch, {field: {name: None}})  # not even as a name to remove


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_names_that_only_resemble_reserved_ones_are_allowed(name: str) -> None:
    assert _form(env=f"{name}=v") == ({name: "v"}, {})
    assert _patch({"secrets": {name: "v"}}) == ({}, {name: "v"})


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_are_not_letters_digits_and_underscore_are_bad_env(name: str) -> None:
    for field in ("env", "secrets"):
        _refused("bad_env", _form, **{field: f"{name}=v"})
        _refused("bad_env", _patch, {field: {name: "v"}})


@pytest.mark.parametrize("name", ["", "A=B", "A\0", "A\n", "A\nB", " A", "A ", "A\u00a0"])
def test_patch_names_that_cannot_be_environment_names_are_bad_env(name: str) -> None:
    for field in ("env", "secrets"):
        _refused("bad_env", _patch, {field: {name: "v"}})


# -- entries and bytes -------------------------------------------------------------------------------------------

def _lines(count: int, prefix: str = "K", value: str = "v") -> str:
    return "".join(f"{prefix}{i}={value}\n" for i in range(count))


def test_at_most_100_entries_counting_env_and_secrets_together() -> None:
    env, secrets = _form(env=_lines(60, "E"), secrets=_lines(40, "S"))
    assert len(env) + len(secrets) == 100
    assert len(_form(env=_lines(100))[0]) == 100
    _refused("bad_env", _form, env=_lines(101))
    _refused("bad_env", _form, secrets=_lines(101))
    _refused("bad_env", _form, env=_lines(51, "E"), secrets=_lines(50, "S"))
    _refused("bad_env", _patch, {"env": {"NEW": "1"}}, {f"E{i}": "v" for i in range(60)},
             {f"S{i}": "v" for i in range(40)})
    # a PATCH that removes one and adds one stays at 100
    env, secrets = _patch({"env": {"E0": None, "NEW": "1"}}, {f"E{i}": "v" for i in range(60)},
                          {f"S{i}": "v" for i in range(40)})
    assert len(env) + len(secrets) == 100 and "NEW" in env and "E0" not in env


def test_at_most_64_kib_counting_env_and_secrets_together() -> None:
    assert _form(env="BIG=" + "x" * 60_000)[0]["BIG"] == "x" * 60_000
    assert len(_form(env=_lines(100, value="v" * 600))[0]) == 100           # ~60 KB in 100 entries
    _refused("bad_env", _form, env="BIG=" + "x" * 64 * 1024)
    _refused("bad_env", _form, secrets="BIG=" + "x" * 64 * 1024)
    _refused("bad_env", _form, env="A=" + "x" * 33_000, secrets="B=" + "y" * 33_000)
    _refused("bad_env", _form, env="WIDE=" + "é" * 33_000)                   # bytes, not characters
    _refused("bad_env", _patch, {"secrets": {"B": "y" * 40_000}}, {"A": "x" * 30_000})


# -- env and secrets together ------------------------------------------------------------------------------------

def test_a_name_both_in_env_and_in_secrets_is_bad_env() -> None:
    _refused("bad_env", _form, env="K=1\nA=2", secrets="K=s")
    _refused("bad_env", _patch, {"secrets": {"K": "s"}}, {"K": "1"})
    _refused("bad_env", _patch, {"env": {"K": "1"}}, None, {"K": "s"})
    _refused("bad_env", _patch, {"env": {"K": "1"}, "secrets": {"K": "s"}})
    # moving a name from env to secrets in one PATCH is fine
    assert _patch({"env": {"K": None}, "secrets": {"K": "s"}}, {"K": "1", "A": "2"}) == ({"A": "2"}, {"K": "s"})


def test_an_inherited_env_name_that_is_now_a_secret_gives_way_to_the_secret() -> None:
    """After a rollback to a version from before K became a secret, its env still has K: the next change must
    not be refused for it (the function would be stuck); the secret, which belongs to the function, wins."""
    assert _patch({"env": {"E": "2"}}, {"K": "plain", "E": "1"}, {"K": "s"}) == ({"E": "2"}, {"K": "s"})
    assert _patch({"timeout": 5}, {"K": "plain"}, {"K": "s"}) == ({}, {"K": "s"})
    _refused("bad_env", _patch, {"env": {"K": "again"}}, {"K": "plain"}, {"K": "s"})  # named in the change: refused


def test_patch_env_and_secrets_merge_and_null_removes_a_name() -> None:
    old_env, old_secrets = {"A": "1", "B": "2"}, {"S": "s", "T": "t"}
    changes = from_patch({"env": {"A": None, "C": "3", "NEVER_SET": None}, "secrets": {"T": None, "U": "u"}})
    assert apply(old_env, old_secrets, changes) == ({"B": "2", "C": "3"}, {"S": "s", "U": "u"})
    assert apply(old_env, old_secrets, from_patch({"timeout": 5})) == (old_env, old_secrets)
    assert old_env == {"A": "1", "B": "2"} and old_secrets == {"S": "s", "T": "t"}  # not changed in place


def test_upload_env_and_secrets_replace_the_whole_set_and_fields_not_sent_keep_the_old_ones() -> None:
    old_env, old_secrets = {"A": "1", "B": "2"}, {"S": "s"}
    assert apply(old_env, old_secrets, from_form({"env": "C=3"})) == ({"C": "3"}, {"S": "s"})
    assert apply(old_env, old_secrets, from_form({"secrets": "T=t"})) == (old_env, {"T": "t"})
    assert apply(old_env, old_secrets, from_form({"env": "", "secrets": "# none\n"})) == ({}, {})
    assert apply(old_env, old_secrets, from_form({})) == (old_env, old_secrets)
    assert from_form({}).settings == {}


def test_patch_values_must_be_strings_or_null() -> None:
    for field in ("env", "secrets"):
        values: list[Any] = [1, 1.5, True, [], {}, ["x"]]
        for value in values:
            _refused("bad_env", _patch, {field: {"A": value}})
        for doc in ([], "A=1", 1, True, [["A", "1"]]):
            _refused("bad_env", _patch, {field: doc})
        _refused("bad_env", _patch, {field: {"A": "x\0y"}})


def test_a_nul_in_an_uploaded_value_is_bad_env_as_in_a_patch() -> None:
    """No environment can hold a NUL: the upload form must refuse it as PATCH does, not start a worker that
    cannot be given it."""
    for field in ("env", "secrets"):
        _refused("bad_env", _form, **{field: "A=x\0y"})


# -- timeout, memory_mb, max_workers, calling --------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("1", 1.0), ("0.5", 0.5), ("3600", 3600.0), (" 2 ", 2.0),
                                         ("0.001", 0.001), ("3600.0", 3600.0)])
def test_form_timeouts_in_range_are_taken(text: str, value: float) -> None:
    assert from_form({"timeout": text}).settings == {"timeout": value}


@pytest.mark.parametrize("text", ["0", "0.0", "-1", "-0.5", "3600.5", "3601", "abc", "", "nan", "NaN", "inf",
                                  "Infinity", "-inf", "1,5", "true", "1 s"])
def test_form_timeouts_out_of_range_or_not_numbers_are_bad_setting(text: str) -> None:
    _refused("bad_setting", from_form, {"timeout": text})


@pytest.mark.parametrize("value", [1, 0.001, 3600, 3600.0, 30.5])
def test_patch_timeouts_in_range_are_taken(value: float) -> None:
    assert from_patch({"timeout": value}).settings == {"timeout": value}


@pytest.mark.parametrize("value", [0, 0.0, -1, 3600.5, 3601, 1e308, 10 ** 400, -10 ** 400, True, False, "abc",
                                   "nan", "inf", "-inf", float("nan"), float("inf"), -float("inf"), [], {}, [5]])
def test_patch_timeouts_out_of_range_or_of_the_wrong_type_are_bad_setting(value: Any) -> None:
    _refused("bad_setting", from_patch, {"timeout": value})


@pytest.mark.parametrize("name, low, high", [("memory_mb", 64, 65536), ("max_workers", 1, 64)])
def test_integer_settings_take_their_bounds_and_refuse_past_them(name: str, low: int, high: int) -> None:
    for value in (low, high, (low + high) // 2):
        assert from_form({name: str(value)}).settings == {name: value}
        assert from_patch({name: value}).settings == {name: value}
        assert type(from_patch({name: value}).settings[name]) is int
    for text in (str(low - 1), str(high + 1), "0", "-1", "abc", "", "1.5", "nan", "inf", "true", "1e3",
                 "9" * 30):
        _refused("bad_setting", from_form, {name: text})
    refused: list[Any] = [low - 1, high + 1, 0, -1, True, False, 1.5, "abc", "nan", float("nan"), float("inf"), [],
                          {}, 10 ** 30]
    for bad in refused:
        _refused("bad_setting", from_patch, {name: bad})


def test_null_settings_in_a_patch_mean_the_servers_flags() -> None:
    changes = from_patch({"timeout": None, "memory_mb": None, "max_workers": None})
    assert changes.settings == {"timeout": None, "memory_mb": None, "max_workers": None}
    assert changes.env is None and changes.secrets is None


@pytest.mark.parametrize("calling", ["args", "event", "http"])
def test_every_calling_convention_is_taken(calling: str) -> None:
    assert from_form({"calling": calling}).settings == {"calling": calling}
    assert from_patch({"calling": calling}).settings == {"calling": calling}


@pytest.mark.parametrize("calling", ["", "ARGS", "rpc", "args ", None, 1, True, ["args"]])
def test_other_calling_conventions_are_bad_setting(calling: Any) -> None:
    _refused("bad_setting", from_patch, {"calling": calling})
    if isinstance(calling, str) and calling.strip() != "args":
        _refused("bad_setting", from_form, {"calling": calling})


# -- the PATCH document ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [[], ["timeout"], "timeout=5", 5, True, None])
def test_a_patch_that_is_not_an_object_is_bad_setting(doc: Any) -> None:
    _refused("bad_setting", from_patch, doc)


@pytest.mark.parametrize("doc", [{"colour": "red"}, {"Timeout": 5}, {"timeout": 5, "memory": 128},
                                 {"env": {"A": "1"}, "secret": {"B": "2"}}, {"name": "other"}, {"code": "x"}])
def test_unknown_patch_keys_are_bad_setting_even_beside_good_ones(doc: dict[str, Any]) -> None:
    error = _refused("bad_setting", from_patch, doc)
    unknown = sorted(set(doc) - {"calling", "env", "secrets", "timeout", "memory_mb", "max_workers", "schedule"})
    assert all(key in error.message for key in unknown)


def test_a_patch_with_every_setting_is_read_whole() -> None:
    changes = from_patch({"calling": "event", "env": {"A": "1"}, "secrets": {"S": None}, "timeout": 2.5,
                          "memory_mb": 256, "max_workers": 3})
    assert changes.settings == {"calling": "event", "timeout": 2.5, "memory_mb": 256, "max_workers": 3}
    assert changes.env == {"A": "1"} and changes.secrets == {"S": None}


# -- properties --------------------------------------------------------------------------------------------------

_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True).filter(lambda n: not _is_reserved(n))
_values = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r\0"),
                  max_size=40)


@fuzz(200)
@given(env=st.dictionaries(_names, _values, max_size=12),
       comments=st.lists(st.sampled_from(["", "   ", "# c", "  #x=1", "#PATH=/evil"]), max_size=6),
       data=st.data())
def test_env_lines_round_trip_with_comments_and_blank_lines_anywhere(env: dict[str, str], comments: list[str],
                                                                    data: st.DataObject) -> None:
    lines = [f"{name}={value}" for name, value in env.items()]
    for comment in comments:
        lines.insert(data.draw(st.integers(0, len(lines))), comment)
    newline = data.draw(st.sampled_from(["\n", "\r\n"]))
    assert parse_env_lines(newline.join(lines), "env") == env


@fuzz(300)
@given(name=st.one_of(st.text(max_size=12), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
                      st.sampled_from(RESERVED + RESERVED_PREFIXED + NEAR_MISSES + BAD_NAMES)))
def test_a_name_is_taken_exactly_when_it_is_a_spec_name_and_not_reserved(name: str) -> None:
    ok = bool(SPEC_NAME.fullmatch(name)) and not _is_reserved(name)
    try:
        from_patch({"env": {name: "v"}})
    except BadRequest as exc:
        assert exc.code == "bad_env" and not ok, name
    else:
        assert ok, name


@fuzz(300)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 6, 10 ** 6)))
def test_a_timeout_is_taken_exactly_when_finite_and_in_0_to_3600(value: float) -> None:
    ok = math.isfinite(value) and 0 < value <= 3600
    try:
        changes = from_patch({"timeout": value})
    except BadRequest as exc:
        assert exc.code == "bad_setting" and not ok, value
    else:
        assert ok and changes.settings["timeout"] == value, value


@fuzz(200)
@given(value=st.integers(-10 ** 6, 10 ** 6))
def test_integer_settings_are_taken_exactly_in_their_ranges(value: int) -> None:
    for name, (low, high) in (("memory_mb", (64, 65536)), ("max_workers", (1, 64))):
        for source, doc in (("patch", {name: value}), ("form", {name: str(value)})):
            try:
                changes = from_patch(doc) if source == "patch" else from_form(doc)  # type: ignore[arg-type]
            except BadRequest as exc:
                assert exc.code == "bad_setting" and not low <= value <= high, (name, value, source)
            else:
                assert low <= value <= high and changes.settings[name] == value, (name, value, source)


@fuzz(200)
@given(secret=st.text("0123456789abcdef", min_size=12, max_size=40).map(lambda s: "SECRETVALUE" + s),
       bad=st.sampled_from(BAD_NAMES + RESERVED + RESERVED_PREFIXED), how=st.integers(0, 5))
def test_a_refused_secret_never_shows_its_value(secret: str, bad: str, how: int) -> None:
    """Whatever is wrong next to a secret, the 400 names the problem, never the value."""
    attempts: list[Callable[[], Any]] = [
        lambda: _form(secrets=f"{bad}={secret}"),
        lambda: _form(secrets=f"OK={secret}\n{bad}=x"),
        lambda: _form(env="K=1", secrets=f"K={secret}"),
        lambda: _form(secrets=secret),                       # a value pasted without its name
        lambda: _patch({"secrets": {bad: secret}}),
        lambda: _patch({"secrets": {"K": secret}}, {"K": "1"}),
    ]
    error = _refused("bad_env", attempts[how])
    assert secret not in str(error.body()) and secret not in str(error)
