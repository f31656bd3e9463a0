"""`pop2gate config check`: the real command on real files; the line scanner; secret masking."""

from __future__ import annotations

import subprocess
import tomllib

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from fuzzing import fuzz
from helpers import BIN
from pop2gate.config import parse_config
from pop2gate.config_show import MASK, Unset, masked, toml_string
from pop2gate.tomllines import key_lines, line_of

POP2GATE = str(BIN / "pop2gate")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([POP2GATE, *args], capture_output=True, text=True, timeout=60)


BAD = """\
# every line below that is marked ! is wrong
[server]
listen = ["127.0.0.1:1109",
  "nope"]                       # ! (reported at its key, line 3)
hostname = "two words"          # ! line 5

[limits]
login_timeout = -1              # ! line 8
idle_timout = 5                 # ! line 9
retr_chunk_size = 65536

[[backend]]
name = "m"
type = "maildir"
path = "/srv/mail"
users_file = "/srv/users"

[[backend]]                     # ! line 18: plaintext to a remote host
name = "i"
type = "imap"
url = "imap://mail.example.org"
tls = "none"

[[backend]]
name = "j"
type = "imap"
url = "imaps://mail.example.org"
timeout = 0                     # ! line 28

[routing]
default = "other"               # ! line 31
users = { bob = "nobody" }      # ! line 32
"""

BAD_ERRORS = [
    ":3: server.listen: 'nope' is not HOST:PORT",
    ":5: server.hostname: must be one word",
    ":8: limits.login_timeout: Input should be greater than 0",
    ":9: limits.idle_timout: Extra inputs are not permitted",
    ":18: backend.1.imap: tls = \"none\" to non-loopback host 'mail.example.org' needs allow_plaintext = true",
    ":28: backend.2.imap.timeout: Input should be greater than 0",
    ":31: routing.default: names unknown backend 'other'",
    ":32: routing.users.bob: unknown backend 'nobody'",
]


def test_check_reports_every_error_with_its_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD)
    result = run("config", "check", "-c", str(cfg))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == len(BAD_ERRORS), result.stderr
    for line, expected in zip(lines, BAD_ERRORS, strict=True):
        assert line.startswith(f"pop2gate: config error: {cfg}{expected}"), line


def test_serve_refuses_the_same_errors_the_same_way(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD)
    checked = run("config", "check", "-c", str(cfg))
    served = run("serve", "-c", str(cfg))
    assert served.returncode == 2
    assert served.stderr == checked.stderr


def test_check_a_file_that_is_not_toml(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[server]\nhostname = 'h'\nlisten = = 1\n")
    result = run("config", "check", "-c", str(cfg))
    assert result.returncode == 2
    assert result.stderr.startswith(f"pop2gate: config error: {cfg}: ") and "line 3" in result.stderr


def test_check_a_missing_file(tmp_path):
    result = run("config", "check", "-c", str(tmp_path / "absent.toml"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_check_prints_the_effective_config_which_loads_back(env, tmp_path):
    cfg = env.write_config("127.0.0.1:1109")
    result = run("config", "check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "configuration valid" in result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["limits"]["idle_timeout"] == 1800  # a default the file does not set
    assert shown["limits"]["bad_login_delay"] == 0.05  # a value the file does set
    assert shown["backend"][0]["selectable"] is False
    assert shown["server"]["listen"] == ["127.0.0.1:1109"]
    assert "\n# tls_cert is unset\n" in result.stdout
    assert "\n# group is unset: the user's primary group\n" in result.stdout
    assert parse_config(shown) == parse_config(tomllib.loads(cfg.read_text()))
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    second = run("config", "check", "-c", str(again))
    assert second.returncode == 0 and second.stdout == result.stdout


class _Inner(BaseModel):
    client_secret: str = "inner-hidden"
    client_id: str = "shown-id"


class _WithSecrets(BaseModel):
    password: str | None = "plain-hidden"
    password_hash_workers: int = 2
    unset_token: str | None = None
    inner: list[_Inner] = [_Inner()]


def test_secrets_are_masked_by_name():
    shown = masked(_WithSecrets())
    assert shown == {"password": MASK, "password_hash_workers": 2, "unset_token": Unset(),
                     "inner": [{"client_secret": MASK, "client_id": "shown-id"}]}


SCAN = '''\
top = 1
[server]
listen = [
  "a", # a comment ] with a bracket
  "b",
]
text = """
[not.a.table]
fake = 1
"""
lit = \'\'\'x = 'y' \'\'\'
"quoted key".inner = 2
after = { a = 1, b = [1, 2] }

[[backend]]
name = "a"
[[backend]]
name = "b"
[backend.opts]
deep = true
[routing]
default = "a"
'''


def test_scanner_finds_keys_across_multiline_values():
    lines = key_lines(SCAN)
    assert lines[("top",)] == 1
    assert lines[("server",)] == 2
    assert lines[("server", "listen")] == 3
    assert lines[("server", "text")] == 7
    assert ("not", "a", "table") not in lines and ("server", "fake") not in lines
    assert lines[("server", "lit")] == 11
    assert lines[("server", "quoted key", "inner")] == 12
    assert lines[("server", "after")] == 13
    assert lines[("backend", 0)] == 15 and lines[("backend", 0, "name")] == 16
    assert lines[("backend", 1)] == 17 and lines[("backend", 1, "name")] == 18
    assert lines[("backend", 1, "opts", "deep")] == 20
    assert lines[("routing", "default")] == 22
    assert line_of(lines, ("server", "listen", 1)) == 3  # an item: its key's line
    assert line_of(lines, ("server", "absent")) == 2  # a missing key: its table's line
    assert line_of(lines, ("nowhere",)) is None


_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8)
_scalars = st.one_of(st.integers(), st.booleans(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))


def _toml_scalar(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else toml_string(v) if isinstance(v, str) else str(v)


@fuzz(100)
@given(st.dictionaries(_names, st.dictionaries(_names, st.tuples(st.lists(_scalars, max_size=3), st.integers(0, 3)),
                                               max_size=4), max_size=4))
def test_scanner_finds_every_key_of_any_document(tables):
    """Tables of keys whose values are scalars, arrays over several lines, or multi-line strings,
    with comments and blank lines between: the scanner finds each key's line."""
    lines: list[str] = []
    expected = {}
    for table, keys in tables.items():
        lines += ["", f"[{toml_string(table)}]  # a comment"]
        expected[(table,)] = len(lines)
        for key, (items, shape) in keys.items():
            expected[(table, key)] = len(lines) + 1
            if shape == 0:
                lines.append(f"{toml_string(key)} = {_toml_scalar(items[0]) if items else 0}")
            elif shape == 1:
                lines += [f"{toml_string(key)} = [  # items follow",
                          *(f"  {_toml_scalar(i)},  # ]" for i in items), "]"]
            elif shape == 2:
                lines += [f"{toml_string(key)} = \"\"\"", "[not.a.table]", "x = 1 \\\\", "\"\"\""]
            else:
                lines += [f"{toml_string(key)} = '''", "[[nor.this]]", "'''", "# between keys"]
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text).keys() == tables.keys()  # the document is what it should be
    found = key_lines(text)
    for path, line in expected.items():
        assert found[path] == line, (path, text)
