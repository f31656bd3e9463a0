"""Where each key of a TOML document is: key path -> line number.

tomllib gives values without positions, so configuration errors would name a key but not
its line. This scanner reads a document tomllib has already accepted and records the line
of every table header (`[a.b]`, `[[a]]`, arrays of tables counted from 0) and of every
`key = value` (dotted keys included). Values are skipped, however many lines they span
(multi-line strings and arrays); the keys inside inline tables and the items of arrays
are not recorded: `line_of` answers with the nearest enclosing key's line.
"""

from __future__ import annotations

from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[Path, int] = {}
        self.arrays: dict[Path, int] = {}  # array-of-tables path -> tables seen so far

    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces, tabs, comments and (if `newlines`) line ends."""
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def string(self) -> str:
        """One quoted string (all four kinds); returns its value, escapes decoded simply."""
        for quote in ('"""', "'''", '"', "'"):
            if self.text.startswith(quote, self.pos):
                break
        self.pos += len(quote)
        out = []
        while self.pos < len(self.text):
            if self.text.startswith(quote, self.pos):
                self.pos += len(quote)
                while len(quote) == 3 and self.peek() == quote[0]:  # up to two quotes end a multi-line string
                    out.append(quote[0])
                    self.pos += 1
                return "".join(out)
            c = self.text[self.pos]
            if c == "\\" and quote[0] == '"':
                nxt = self.text[self.pos + 1:self.pos + 2]
                if nxt in ("u", "U"):
                    width = 4 if nxt == "u" else 8
                    out.append(chr(int(self.text[self.pos + 2:self.pos + 2 + width], 16)))
                    self.pos += 2 + width
                    continue
                out.append(_ESCAPES.get(nxt, ""))
                self.pos += 2
                if nxt not in _ESCAPES:  # a line-ending backslash: skip the whitespace after it
                    self.skip_blank(newlines=True)
                continue
            out.append(c)
            self.pos += 1
        return "".join(out)

    def key(self) -> list[str]:
        """A dotted key: `a."b c".d`."""
        parts = []
        while True:
            self.skip_blank(newlines=False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE:
                    self.pos += 1
                parts.append(self.text[start:self.pos])
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return parts
            self.pos += 1

    def value(self) -> None:
        """Skip one value, whatever lines it spans."""
        depth = 0
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in "\"'":
                self.string()
                continue
            if c == "#" or (c in "\r\n" and depth == 0):
                if depth == 0:
                    return
                self.skip_blank(newlines=True)
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
            self.pos += 1

    def resolve(self, keys: Sequence[str], new_array: bool) -> Path:
        """A header's keys as a path: each array of tables on the way becomes its latest table."""
        path: Path = ()
        for i, k in enumerate(keys):
            path += (k,)
            last = i == len(keys) - 1
            if last and new_array:
                self.arrays[path] = self.arrays.get(path, 0) + 1
            if path in self.arrays:
                path += (self.arrays[path] - 1,)
        return path

    def scan(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return self.lines
            line = self.line()
            if self.peek() == "[":
                array = self.peek(2) == "[["
                self.pos += 2 if array else 1
                table = self.resolve(self.key(), array)
                self.pos += 2 if array else 1
                self.lines.setdefault(table, line)
                if array:
                    self.lines[table] = line
            else:
                path = table + tuple(self.key())
                for end in range(len(table) + 1, len(path) + 1):  # `a.b = 1` defines table `a` too
                    self.lines.setdefault(path[:end], line)
                self.pos += 1  # the '='
                self.skip_blank(newlines=False)
                self.value()


def key_lines(text: str) -> dict[Path, int]:
    """Every table's and key's line (1-based) in `text`, a document tomllib accepts."""
    return _Scanner(text).scan()


def line_of(lines: dict[Path, int], path: Sequence[str | int]) -> int | None:
    """The line of `path`, or of the nearest enclosing key or table that is in the file."""
    for end in range(len(path), 0, -1):
        found = lines.get(tuple(path[:end]))
        if found is not None:
            return found
    return None
