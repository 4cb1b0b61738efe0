"""Reading xl.cfg files the way xl does (Xen's ``docs/man/xl.cfg.5.pod.in``).

Theory of operation
===================

``xl create guest.cfg 'memory=512; vcpus=2'`` goes through three layers, and
so does this module:

1. **Syntax** (libxlu's ``libxlu_cfg_l.l`` / ``libxlu_cfg_y.y``):
   :func:`parse_settings` turns text into :class:`Setting` records -- a key,
   a raw value (a string, or a possibly nested list of values) and the line
   the value starts on. Nothing is interpreted yet: ``memory = 512`` and
   ``memory = "512"`` are the same string ``"512"``, exactly as in libxlu.
2. **Device mini-languages**: each ``disk`` entry is a DISKSPEC
   (:func:`parse_disk_spec`, a re-statement of libxlu's ``libxlu_disk_l.l``
   flex scanner), each ``vif`` entry a VIFSPEC (:func:`parse_vif_spec`, xl's
   ``parse_nic_config``), each ``channel`` entry a CHANNEL_SPEC
   (:func:`parse_channel_spec`, xl's ``parse_config_data`` loop plus libxl's
   ``libxl__init_console_from_channel`` checks), ``rate=`` a RATE
   (:func:`parse_rate`, ``libxlu_vif.c``), ``cpus`` a CPULIST
   (:func:`parse_cpulist`, xl's ``parse_cpurange``).
3. **Meaning**: :func:`loads_config` maps settings onto
   :class:`~dom0.toolstack.config.GuestConfig` through one table of key
   handlers (:data:`_HANDLERS`); keys xl knows but xensim does not simulate
   produce an "ignored by xensim" warning, unknown keys an "unknown key"
   warning, and every bad value a :class:`ConfigError` naming the file, the
   line and what was expected.

Who controls the input: the user who wrote the file (and the command line).
It is not a peer's data, but it is still untrusted text: the parser never
raises anything but :class:`ConfigError`, whatever it is given.

The grammar
-----------

Tokens (first matching rule wins, longest match first)::

    IDENT    [a-z][._0-9a-z]*          keys are lower case
    NUMBER   [0-9][0-9a-fx]*           kept as a string; 0x.. hex and 0..
                                        octal are understood where an integer
                                        is wanted (C strtol base 0)
    STRING   "..." or '...'            no newline inside; escapes \\\\ \\" \\'
                                        \\a \\b \\f \\n \\r \\t \\v \\xHH \\ooo
    NEWLINE  \\n  or  #comment\\n
    '='  '+='  ','  '['  ']'  ';'
    blanks and tabs are skipped; anything else is a lexical error

Productions::

    file       := stmt* assignment?          (last line may lack a newline)
    stmt       := assignment endstmt | endstmt
    endstmt    := NEWLINE | ';'
    assignment := IDENT '=' value | IDENT '+=' value
    value      := STRING | NUMBER | '[' nl* valuelist ']'
    valuelist  := <empty> | values | values ',' nl*
    values     := value nl* ( ',' nl* value nl* )*
    nl         := NEWLINE

The last assignment of a key wins; ``key += value`` appends a string to the
previous string or a list to the previous list (and is a plain assignment
when there is no previous value). Command-line extra settings are parsed
after the file into the same table, so they override it (xl appends them to
the file text).

Worked example::

    name = "web"                 # Setting("name", "web", line 1)
    disk = [ 'format=raw, vdev=xvda, access=rw, target=/img/web,1.raw',
             '/img/cd.iso,,hdc,cdrom', ]
    vif  = [ 'bridge=xenbr0,mac=00:16:3E:00:00:01', '' ]

gives ``disks == [DiskSpec(vdev="xvda", target="/img/web,1.raw"),
DiskSpec(vdev="hdc", target="/img/cd.iso", devtype="cdrom", access="ro")]``
(``target=`` swallows the rest of the spec, commas included; a CD-ROM is
always read-only) and two vifs with devids 0 and 1, the first with MAC
``00:16:3e:00:00:01``.

Deviations from xl (all deliberate, all stricter or friendlier):

* xl only *warns* about a badly typed value (``memory = "lots"``, a list where
  a string is wanted, an unrecognised vif option) and carries on with the
  default; xensim refuses the file with a :class:`ConfigError`.
* A comment on the last line without a final newline is accepted (libxlu
  reports a lexical error).
* ``\\xHH`` and ``\\ooo`` escapes produce the character (libxlu's handling is
  broken: it rejects ``\\x`` and drops octal escapes).
* Lists may nest at most :data:`MAX_LIST_DEPTH` deep (libxlu: bison's stack).
* vif ``mac=`` takes 1-2 hex digits per octet separated by ``:`` or ``-``
  and is normalised to lower-case ``xx:xx:xx:xx:xx:xx``; xl accepts any
  separator and ignores trailing junk. ``devid=`` and ``mtu=`` must be plain
  decimal numbers.
* channel: an unknown parameter is an error (xl warns "unknown channel
  parameter ..., ignoring"); a missing ``name=`` is caught by the parser
  (libxl catches it at create time, with the same "channel N has no name");
  a value containing ``=`` or ``"``, or empty, is refused (xl.cfg(5) forbids
  them; xl splits at the first ``=``); ``path=`` with ``connection=pty`` is
  refused (xl drops it); the socket path must be absolute and fit a Unix
  socket address (QEMU would take a relative one, relative to its own cwd);
  ``backend=`` must name dom0, the only backend domain xensim has.
* CPULIST: xensim hosts have one NUMA node (node 0) holding every pCPU, so
  ``nodes:0`` means all CPUs and any other node number is an error; with a
  known CPU count, naming a CPU the host lacks is an error (xl drops it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dom0.toolstack.config import (
    Action,
    ChannelSpec,
    ConfigError,
    DiskSpec,
    GuestConfig,
    VifSpec,
)
from ring.blkif import vdev_encode

__all__ = [
    "MAX_LIST_DEPTH",
    "Setting",
    "dumps_config",
    "format_channel_spec",
    "format_disk_spec",
    "format_vif_spec",
    "load_config",
    "loads_config",
    "parse_channel_spec",
    "parse_cpulist",
    "parse_disk_spec",
    "parse_rate",
    "parse_settings",
    "parse_vif_spec",
    "vdev_number",
]

MAX_LIST_DEPTH = 32

Value = str | list[Any]  # a string, or a list of Values


@dataclass
class Setting:
    """One ``KEY = VALUE`` as libxlu stores it.

    Args:
        name: the key (``[a-z][._0-9a-z]*``).
        value: a string (quoted or a bare number, undistinguished) or a list
            of values (lists may nest).
        line: line on which the value starts (of the latest assignment).
        source: file name (or ``"command line"``) for messages.
        item_lines: for a list, the line of each top-level item.
        added: True when the latest assignment was ``+=``.
    """

    name: str
    value: Value
    line: int
    source: str
    item_lines: list[int] = field(default_factory=list)
    added: bool = False

    def where(self, index: int | None = None) -> str:
        """``"file:line"`` of the value, or of list item ``index``."""
        line = self.line
        if index is not None and index < len(self.item_lines):
            line = self.item_lines[index]
        return f"{self.source}:{line}"


# --------------------------------------------------------------------------
# Layer 1: lexer and parser (libxlu_cfg_l.l, libxlu_cfg_y.y)
# --------------------------------------------------------------------------

_IDENT_RE = re.compile(r"[a-z][._0-9a-z]*")
_NUMBER_RE = re.compile(r"[0-9][0-9a-fx]*")
_STRING_RE = {
    '"': re.compile(r'"(?:[^"\\\n]|\\.)*"'),
    "'": re.compile(r"'(?:[^'\\\n]|\\.)*'"),
}
_NEAR_RE = re.compile(r"[^ \t\n]*")
_SIMPLE_ESCAPES = {
    '"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
    "n": "\n", "r": "\r", "t": "\t", "v": "\v",
}
_HEX = "0123456789abcdefABCDEF"


@dataclass(frozen=True)
class _Token:
    kind: str  # IDENT NUMBER STRING NEWLINE EOF = += , [ ] ;
    text: str  # as written (for messages)
    value: str  # decoded (STRING) or as written
    line: int


def _describe(tok: _Token) -> str:
    if tok.kind == "NEWLINE":
        return "end of line"
    if tok.kind == "EOF":
        return "end of input"
    if tok.kind in ("IDENT", "NUMBER", "STRING"):
        return f"{tok.kind} `{tok.text}'"
    return f"'{tok.kind}'"


def _dequote(raw: str, source: str, line: int) -> str:
    """Undo the escapes of a quoted string (``raw`` includes the quotes)."""
    out: list[str] = []
    body = raw[1:-1]
    i = 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        nc = body[i]  # the lexer guarantees a character follows
        i += 1
        if nc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nc])
        elif nc == "x":
            digits = body[i:i + 2]
            if len(digits) != 2 or any(d not in _HEX for d in digits):
                raise ConfigError(
                    f"{source}:{line}: config parsing error near `{raw}': "
                    "\\x in a quoted string needs two hex digits")
            out.append(chr(int(digits, 16)))
            i += 2
        elif nc in "01234567":
            digits = nc
            while len(digits) < 3 and i < len(body) and body[i] in "01234567":
                digits += body[i]
                i += 1
            out.append(chr(int(digits, 8)))
        else:
            raise ConfigError(
                f"{source}:{line}: config parsing error near `{raw}': "
                f"invalid character {nc!r} after backslash in quoted string")
    return "".join(out)


def _lexical_error(text: str, pos: int, line: int, source: str) -> ConfigError:
    near_m = _NEAR_RE.match(text, pos + 1)
    near = text[pos] + (near_m.group(0) if near_m else "")
    c = text[pos]
    if c in "\"'":
        why = "unterminated string (a quoted string must end on the line it starts)"
    elif c in "+-.():":
        why = ("lexical error (this looks like Python, which xl.cfg is not: "
               "values are \"strings\", integers or [ lists ])")
    elif c == "\r":
        near = "\\r"
        why = "lexical error (carriage return: DOS line endings are not accepted)"
    elif c.isalpha():
        why = "lexical error (keys are lower-case letters, digits, '_' and '.')"
    else:
        why = "lexical error"
    return ConfigError(f"{source}:{line}: config parsing error near `{near}': {why}")


def _tokenize(text: str, source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos, line, n = 0, 1, len(text)
    while pos < n:
        c = text[pos]
        if c in " \t":
            pos += 1
            continue
        if c == "\n":
            tokens.append(_Token("NEWLINE", "\n", "\n", line))
            pos += 1
            line += 1
            continue
        if c == "#":
            end = text.find("\n", pos)
            # libxlu needs the newline; we also accept a comment at end of input
            tokens.append(_Token("NEWLINE", "#", "\n", line))
            if end < 0:
                break
            pos = end + 1
            line += 1
            continue
        if c in _STRING_RE:
            m = _STRING_RE[c].match(text, pos)
            if m is None:
                raise _lexical_error(text, pos, line, source)
            raw = m.group(0)
            tokens.append(_Token("STRING", raw, _dequote(raw, source, line), line))
            pos = m.end()
            continue
        m = _IDENT_RE.match(text, pos)
        if m:
            tokens.append(_Token("IDENT", m.group(0), m.group(0), line))
            pos = m.end()
            continue
        m = _NUMBER_RE.match(text, pos)
        if m:
            tokens.append(_Token("NUMBER", m.group(0), m.group(0), line))
            pos = m.end()
            continue
        if text.startswith("+=", pos):
            tokens.append(_Token("+=", "+=", "+=", line))
            pos += 2
            continue
        if c in "=,[];":
            tokens.append(_Token(c, c, c, line))
            pos += 1
            continue
        raise _lexical_error(text, pos, line, source)
    tokens.append(_Token("EOF", "", "", line))
    return tokens


class _Parser:
    """Recursive descent over the token list; see the grammar above."""

    def __init__(self, tokens: list[_Token], source: str) -> None:
        self.tokens = tokens
        self.i = 0
        self.source = source

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def error(self, tok: _Token, expecting: str) -> ConfigError:
        near = "<newline>" if tok.kind == "NEWLINE" else tok.text
        near_part = f" near `{near}'" if near else ""
        return ConfigError(
            f"{self.source}:{tok.line}: config parsing error{near_part}: "
            f"syntax error, unexpected {_describe(tok)}, expecting {expecting}")

    def skip_newlines(self) -> None:
        while self.peek().kind == "NEWLINE":
            self.take()

    def statements(self) -> list[tuple[_Token, str, Value, list[int], int]]:
        out: list[tuple[_Token, str, Value, list[int], int]] = []
        while True:
            tok = self.take()
            if tok.kind == "EOF":
                return out
            if tok.kind in ("NEWLINE", ";"):
                continue
            if tok.kind != "IDENT":
                raise self.error(tok, "a key (lower-case IDENT) or end of statement")
            op = self.take()
            if op.kind not in ("=", "+="):
                raise self.error(op, "'=' or '+='")
            line = self.peek().line
            value, item_lines = self.value(0)
            out.append((tok, op.kind, value, item_lines, line))
            end = self.peek()
            if end.kind in ("NEWLINE", ";", "EOF"):
                continue
            raise self.error(end, "end of line or ';' after the value")

    def value(self, depth: int) -> tuple[Value, list[int]]:
        tok = self.take()
        if tok.kind in ("STRING", "NUMBER"):
            return tok.value, []
        if tok.kind != "[":
            raise self.error(tok, "a value: \"string\", 'string', number or [ list ]")
        if depth >= MAX_LIST_DEPTH:
            raise ConfigError(f"{self.source}:{tok.line}: config parsing error near `[': "
                              f"lists nested more than {MAX_LIST_DEPTH} deep")
        items: list[Value] = []
        lines: list[int] = []
        self.skip_newlines()
        if self.peek().kind == "]":
            self.take()
            return items, lines
        while True:
            lines.append(self.peek().line)
            item, _ = self.value(depth + 1)
            items.append(item)
            self.skip_newlines()
            sep = self.take()
            if sep.kind == "]":
                return items, lines
            if sep.kind != ",":
                raise self.error(sep, "',' or ']'")
            self.skip_newlines()
            if self.peek().kind == "]":
                self.take()
                return items, lines


def parse_settings(
    text: str, filename: str = "<string>", settings: dict[str, Setting] | None = None,
) -> dict[str, Setting]:
    """Parse xl.cfg text into raw settings (libxlu's job).

    Args:
        text: the file contents or command-line extra settings (user input).
        filename: used in messages (``filename:line: ...``).
        settings: an earlier table to update (the file, when parsing extra
            settings); later assignments replace, ``+=`` appends.

    Returns:
        The table, key -> :class:`Setting`, in first-assignment order.

    Raises:
        ConfigError: lexical or syntax error, or ``+=`` mixing a string and
            a list; the message starts ``filename:line:``.
    """
    table: dict[str, Setting] = {} if settings is None else settings
    for key_tok, op, value, item_lines, line in _Parser(_tokenize(text, filename),
                                                          filename).statements():
        name = key_tok.value
        prev = table.get(name)
        if op == "+=" and prev is not None:
            if isinstance(prev.value, list) != isinstance(value, list):
                raise ConfigError(
                    f"{filename}:{line}: {name}: can't add [list] to \"string\" or vice versa")
            if isinstance(value, list):
                assert isinstance(prev.value, list)
                value = prev.value + value
                item_lines = prev.item_lines + item_lines
            else:
                assert isinstance(prev.value, str)
                value = prev.value + value
        table[name] = Setting(name, value, line, filename, item_lines, op == "+=")
    return table


# --------------------------------------------------------------------------
# C number conventions
# --------------------------------------------------------------------------

_C_LONG_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _c_long(s: str) -> int | None:
    """C ``strtol(s, &end, 0)`` that must consume all of ``s``; None if not."""
    m = _C_LONG_RE.fullmatch(s)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        v = int(digits[2:], 16)
    elif digits.startswith("0"):
        v = int(digits, 8)
    else:
        v = int(digits)
    v = -v if m.group(1) == "-" else v
    return v if _LONG_MIN <= v <= _LONG_MAX else None


def _c_strtoul0_prefix(s: str) -> tuple[int, str]:
    """``strtoull(s, &rest, 0)`` on a string that starts with a digit."""
    if s[:2] in ("0x", "0X") and len(s) > 2 and s[2] in _HEX:
        m = re.match(r"[0-9a-fA-F]+", s[2:])
        assert m is not None
        return int(m.group(0), 16), s[2 + m.end():]
    if s.startswith("0"):
        m = re.match(r"[0-7]+", s)
        assert m is not None
        return int(m.group(0), 8), s[m.end():]
    m = re.match(r"[0-9]+", s)
    assert m is not None
    return int(m.group(0)), s[m.end():]


# --------------------------------------------------------------------------
# Layer 2a: disk specification (libxlu_disk_l.l, libxlu_disk.c)
# --------------------------------------------------------------------------

# The flex rules, in order. "m" is what the rule consumes; the whole regex
# match (which includes flex trailing context) is what competes for longest.
_DISK_RULES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(rx)) for name, rx in [
        ("ws", r"(?P<m>[ \t\n]+)(?:[^ \t\n].*)?"),
        ("format", r"(?P<m>format=[^,]*,?)"),
        ("cdrom", r"(?P<m>cdrom,?)"),
        ("devtype_cdrom", r"(?P<m>devtype=cdrom,?)"),
        ("devtype_disk", r"(?P<m>devtype=disk,?)"),
        ("devtype_bad", r"(?P<m>devtype=[^,]*,?)"),
        ("access", r"(?P<m>access=[^,]*,?)"),
        ("backend", r"(?P<m>backend=[^,]*,?)"),
        ("backendtype", r"(?P<m>backendtype=[^,]*,?)"),
        ("specification", r"(?P<m>specification=[^,]*,?)"),
        ("vdev", r"(?P<m>vdev=[^,]*,?)"),
        ("script", r"(?P<m>script=[^,]*,?)"),
        ("direct_io_safe", r"(?P<m>direct-io-safe,?)"),
        ("discard", r"(?P<m>discard,?)"),
        ("no_discard", r"(?P<m>no-discard,?)"),
        ("colo", r"(?P<m>colo,?)"),
        ("colo", r"(?P<m>no-colo,?)"),
        ("colo", r"(?P<m>colo-host=[^,]*,?)"),
        ("colo", r"(?P<m>colo-port=[^,]*,?)"),
        ("colo", r"(?P<m>colo-export=[^,]*,?)"),
        ("colo", r"(?P<m>active-disk=[^,]*,?)"),
        ("colo", r"(?P<m>hidden-disk=[^,]*,?)"),
        ("trusted", r"(?P<m>trusted,?)"),
        ("untrusted", r"(?P<m>untrusted,?)"),
        ("grant_usage", r"(?P<m>grant_usage=[01],?)"),
        ("target", r"(?P<m>target=.*)"),
        ("unknown_param", r"(?P<m>[a-z][-a-z0-9]*=[^,],?)"),
        ("prefix_format", r"(?P<m>(?:raw|qcow2?|vhd):).*"),
        ("prefix_script", r"(?P<m>(?:iscsi|e?nbd|drbd):).*"),
        ("prefix_ignored", r"(?P<m>(?:tapdisk|tap2?|aio|ioemu|file|phy):).*"),
        ("prefix_unknown", r"(?P<m>[a-z][a-z0-9]*:)(?:[^a-z0-9].*)?"),
        ("positional", r"(?P<m>[^=,]*,|[^=,]+,?)"),
        ("bad", r"(?P<m>.)"),
    ]
]
_FORMATS = ("raw", "qcow", "qcow2", "vhd", "empty", "qed")
_BACKENDTYPES = ("phy", "tap", "qdisk", "standalone")


class _DiskParse:
    """The state libxlu keeps while scanning one DISKSPEC."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.target: str | None = None
        self.format: str | None = None
        self.vdev: str | None = None
        self.is_cdrom = False
        self.access_set = False
        self.readwrite = True
        self.had_depr_prefix = False
        self.strings: dict[str, str] = {}
        self.discard = True
        self.trusted = True
        self.direct_io_safe = False
        self.backendtype: str | None = None
        self.specification: str | None = None

    def err(self, message: str, near: str | None = None) -> ConfigError:
        near_part = f" near `{near}'" if near is not None else ""
        return ConfigError(f"disk specification `{self.spec}': {message}{near_part}")

    def save(self, what: str, value: str) -> None:
        """SAVESTRING: a non-empty value may not be given twice."""
        current = getattr(self, what) if what in ("target", "vdev") else self.strings.get(what)
        if current:
            raise self.err(f"{what} respecified", value)
        if what in ("target", "vdev"):
            setattr(self, what, value)
        else:
            self.strings[what] = value

    def set_format(self, value: str) -> None:
        fmt = value or "raw"
        if fmt not in _FORMATS:
            raise self.err("unknown value for format (expected raw, qcow, qcow2, vhd or qed)",
                           value)
        if self.format is not None and self.format != fmt:
            raise self.err("format respecified", value)
        self.format = fmt

    def set_access(self, value: str) -> None:
        if value in ("r", "ro"):
            self.readwrite = False
        elif value in ("rw", "w", ""):
            self.readwrite = True
        else:
            raise self.err("unknown value for access (expected r, ro, w or rw)", value)

    def set_enum(self, what: str, value: str, choices: Sequence[str]) -> None:
        if value not in choices:
            raise self.err(f"unknown value for {what} (expected {', '.join(choices)})", value)
        current = getattr(self, what)
        if current is not None and current != value:
            raise self.err(f"{what} respecified", value)
        setattr(self, what, value)

    def vdev_and_devtype(self, text: str) -> bool:
        """``<vdev>:<devtype>`` (deprecated); False if there is no colon."""
        vdev, colon, devtype = text.rpartition(":")
        if not colon:
            return False
        self.save("vdev", vdev)
        if devtype == "cdrom":
            self.is_cdrom = True
        elif devtype == "disk":
            self.is_cdrom = False
        else:
            raise self.err("unknown deprecated type (expected cdrom or disk)", devtype)
        return True

    def positional(self, text: str) -> None:
        if self.target is None:
            self.save("target", text)
        elif not self.had_depr_prefix and self.format is None:
            if not self.target and self.vdev_and_devtype(text):
                self.format = "empty"
            else:
                self.set_format(text)
        elif self.vdev is None:
            if not self.vdev_and_devtype(text):
                self.save("vdev", text)
        elif not self.access_set:
            self.access_set = True
            self.set_access(text)
        else:
            raise self.err("too many positional parameters "
                           "(target, format, vdev, access)", text)

    def step(self, rule: str, text: str) -> None:
        """Run one flex action; ``text`` is what the rule consumed."""
        stripped = text[:-1] if text.endswith(",") else text
        value = stripped.partition("=")[2]
        if rule == "ws" or rule == "colo" or rule == "grant_usage":
            return
        if rule == "format":
            self.set_format(value)
        elif rule in ("cdrom", "devtype_cdrom"):
            self.is_cdrom = True
        elif rule == "devtype_disk":
            self.is_cdrom = False
        elif rule == "devtype_bad":
            raise self.err("unknown value for devtype (expected cdrom or disk)", text)
        elif rule == "access":
            self.set_access(value)
        elif rule in ("backend", "script"):
            self.save(rule, value)
        elif rule == "backendtype":
            self.set_enum("backendtype", value, _BACKENDTYPES)
        elif rule == "specification":
            self.set_enum("specification", value, ("xen", "virtio"))
        elif rule == "vdev":
            self.save("vdev", value)
        elif rule == "direct_io_safe":
            self.direct_io_safe = True
        elif rule in ("discard", "no_discard"):
            self.discard = rule == "discard"
        elif rule in ("trusted", "untrusted"):
            self.trusted = rule == "trusted"
        elif rule == "target":
            self.save("target", value)
        elif rule == "unknown_param":
            raise self.err("unknown parameter", text)
        elif rule == "prefix_format":
            self.had_depr_prefix = True
            self.set_format(text[:-1])
        elif rule == "prefix_script":
            self.had_depr_prefix = True
            self.save("script", "block-" + text[:-1])
        elif rule == "prefix_ignored":
            self.had_depr_prefix = True
        elif rule == "prefix_unknown":
            raise self.err("unknown deprecated disk prefix", text)
        else:
            assert rule == "positional", rule
            self.positional(stripped)


def _disk_scan(spec: str) -> _DiskParse:
    state = _DiskParse(spec)
    pos = 0
    while pos < len(spec):
        best: tuple[int, str, int] | None = None  # (length, rule, consumed end)
        for rule, rx in _DISK_RULES:
            m = rx.match(spec, pos)
            if m is None or m.end() == pos:
                continue
            if best is None or m.end() - pos > best[0]:
                best = (m.end() - pos, rule, m.end("m"))
        assert best is not None  # the "bad" rule matches any character but \n
        _, rule, end = best
        if rule == "bad":
            line_end = spec.find("\n", pos)
            raise state.err("bad disk syntax", spec[pos:line_end if line_end >= 0 else None])
        state.step(rule, spec[pos:end])
        pos = end
    return state


_DNPM_RE = re.compile(r"d([0-9]+)(?:p([0-9]+))?")


def vdev_number(vdev: str) -> int:
    """The ``virtual-device`` number of a disk name (Xen's ``docs/misc/vbd-interface.txt``).

    Accepts everything :func:`ring.blkif.vdev_encode` does (``xvda``,
    ``xvdb3``, ``sda``, ``hdc``, a decimal number) plus libxl's ``dNpM``
    form (disk N, partition M, encoded as xvd).

    Args:
        vdev: from a domain config (user input).

    Returns:
        The number (``xvda`` -> 51712, ``d0p1`` -> 51713).

    Raises:
        ConfigError: not a disk name xl accepts.
    """
    m = _DNPM_RE.fullmatch(vdev)
    if m:
        disk, part = int(m.group(1)), int(m.group(2) or 0)
        if disk <= 15 and part <= 15:
            return (202 << 8) | (disk << 4) | part
        if disk < (1 << 20) and part <= 255:
            return (1 << 28) | (disk << 8) | part
    else:
        try:
            number = vdev_encode(vdev)
        except ValueError:
            pass
        else:
            if number < 2**31:
                return number
    raise ConfigError(f"vdev `{vdev}': expected xvdX[N], hdX[N], sdX[N], dNpM or a "
                      "decimal number (xen-vbd-interface)")


def parse_disk_spec(s: str) -> DiskSpec:
    """Parse one DISKSPEC as libxlu does (xl-disk-configuration(5)).

    Positional parameters fill target, format, vdev, access in order; named
    ones are ``key=value``; flags are ``cdrom``, ``discard``/``no-discard``,
    ``trusted``/``untrusted``, ``direct-io-safe``; ``target=`` must come last
    and swallows the rest (commas included). The deprecated
    ``[<prefix>:]<target>,<vdev>[:<devtype>],<access>`` form is accepted:
    ``raw:``/``qcow:``/``qcow2:``/``vhd:`` set the format, ``iscsi:``,
    ``nbd:``, ``enbd:``, ``drbd:`` the script (``block-<name>``), and
    ``tapdisk:``, ``tap:``, ``tap2:``, ``aio:``, ``ioemu:``, ``file:``,
    ``phy:`` are dropped. A target that is used as a path (no script) and
    does not start with ``/`` gets ``/dev/`` prepended.

    Args:
        s: the spec string (user input).

    Returns:
        The disk. A CD-ROM is read-only; an empty CD-ROM has format
        ``empty``. COLO and ``grant_usage`` parameters are accepted and
        dropped (not simulated).

    Raises:
        ConfigError: a message saying what was wrong, near which text, in
            which spec (xl's wording).
    """
    st = _disk_scan(s)
    fmt = st.format or "raw"
    if st.is_cdrom:
        st.readwrite = False
        if not st.target:
            fmt = "empty"
    if st.vdev is None or not st.vdev:
        raise st.err("no vdev specified")
    if st.target is None and not st.is_cdrom:
        raise st.err("no target specified (and device not removable)")
    _vdev_number_checked(st.vdev, s)
    target = st.target or ""
    script = st.strings.get("script") or None
    if target and script is None and not target.startswith("/"):
        target = "/dev/" + target
    return DiskSpec(
        vdev=st.vdev,
        target=target,
        format=fmt,
        access="rw" if st.readwrite else "ro",
        devtype="cdrom" if st.is_cdrom else "disk",
        backend=st.strings.get("backend") or "0",
        backendtype=st.backendtype or "phy",
        script=script or "block",
        discard=st.discard,
        direct_io_safe=st.direct_io_safe,
        trusted=st.trusted,
        specification=st.specification or "xen",
    )


def _vdev_number_checked(vdev: str, spec: str) -> int:
    """:func:`vdev_number`, with the spec named in the error."""
    try:
        return vdev_number(vdev)
    except ConfigError as e:
        raise ConfigError(f"disk specification `{spec}': {e}") from None


def format_disk_spec(d: DiskSpec) -> str:
    """Render a :class:`DiskSpec` in the named form (``target=`` last).

    Args:
        d: the disk (its string fields must not contain commas, except target).

    Returns:
        A DISKSPEC that :func:`parse_disk_spec` reads back as ``d``.
    """
    parts = [f"format={d.format}", f"vdev={d.vdev}", f"access={d.access}", f"devtype={d.devtype}"]
    if d.backend != "0":
        parts.append(f"backend={d.backend}")
    parts.append(f"backendtype={d.backendtype}")
    if d.script != "block":
        parts.append(f"script={d.script}")
    parts.append("discard" if d.discard else "no-discard")
    if d.direct_io_safe:
        parts.append("direct-io-safe")
    parts.append("trusted" if d.trusted else "untrusted")
    parts.append(f"specification={d.specification}")
    # libxlu strips one trailing comma from target=, so protect a real one
    parts.append(f"target={d.target}," if d.target.endswith(",") else f"target={d.target}")
    return ", ".join(parts)


# --------------------------------------------------------------------------
# Layer 2b: network specification and rate (xl_parse.c, libxlu_vif.c)
# --------------------------------------------------------------------------

_RATE_RE = re.compile(r"[0-9]+[GMK]?[Bb]/s")
_INTERVAL_RE = re.compile(r"[0-9]+[mu]?s?")
_U32_MAX = 2**32 - 1


def parse_rate(s: str) -> tuple[int, int]:
    """Parse a vif ``rate=`` value: ``RATE/s[@INTERVAL]`` (xl-network-configuration).

    RATE is a number with an optional ``K``/``M``/``G`` (powers of 1000) and
    ``B`` (bytes) or ``b`` (bits); INTERVAL is a number with ``s`` (the
    default), ``ms`` or ``us``; the default interval is 50 ms. Numbers follow
    C ``strtoull`` base 0, so a leading ``0`` means octal, as in xl.

    Args:
        s: the value after ``rate=`` (user input).

    Returns:
        ``(bytes_per_interval, interval_us)`` as written to xenstore's
        ``rate`` key ("1MB/s@20ms" -> ``(20000, 20000)``).

    Raises:
        ConfigError: malformed, zero or overflowing rate or interval.
    """
    rate, at, interval = s.partition("@")
    if not rate:
        raise ConfigError(f"vif rate `{s}': no rate specified (expected RATE/s[@INTERVAL])")
    if not _RATE_RE.fullmatch(rate):
        raise ConfigError(f"vif rate `{s}': invalid rate `{rate}' (expected a number, "
                          "optional K/M/G, then B/s for bytes or b/s for bits)")
    n, rest = _c_strtoul0_prefix(rate)
    if n == 0 or n > _U32_MAX:
        raise ConfigError(f"vif rate `{s}': rate overflow (expected 1..{_U32_MAX})")
    n *= {"G": 10**9, "M": 10**6, "K": 10**3}.get(rest[0], 1)
    if rest.startswith("b") or rest[1:2] == "b":
        n //= 8
    interval_us = 50_000
    if at:
        if not _INTERVAL_RE.fullmatch(interval):
            raise ConfigError(f"vif rate `{s}': invalid replenishment interval "
                              f"`{interval}' (expected a number with s, ms or us)")
        iv, unit = _c_strtoul0_prefix(interval)
        if iv == 0 or iv > _U32_MAX:
            raise ConfigError(f"vif rate `{s}': replenishment interval overflow")
        if unit in ("s", ""):
            iv *= 10**6
        elif unit.startswith("m"):
            iv *= 10**3
        if iv > _U32_MAX:
            raise ConfigError(f"vif rate `{s}': replenishment interval overflow")
        interval_us = iv
    return n * interval_us // 10**6, interval_us


_MAC_LENIENT_RE = re.compile(r"[0-9a-fA-F]{1,2}(?:[:-][0-9a-fA-F]{1,2}){5}")
_DECIMAL_RE = re.compile(r"[0-9]+")
_VIF_STRING_KEYS = {
    "bridge": "bridge", "gatewaydev": "gatewaydev", "netdev": "gatewaydev", "ip": "ip",
    "script": "script", "backend": "backend", "vifname": "vifname", "model": "model",
}
_VIF_DROPPED_KEYS = ("accel", "forwarddev", "vlan")


def parse_vif_spec(s: str, position: int = 0) -> VifSpec:
    """Parse one VIFSPEC (xl-network-configuration(5)).

    Comma-separated ``key=value`` pairs and the ``trusted``/``untrusted``
    flags, each optional (``''`` is a valid spec); empty items are skipped
    and leading blanks dropped, as xl's ``strtok`` loop does. Keys: ``mac``,
    ``bridge``, ``gatewaydev`` (old: ``netdev``), ``type``, ``model``,
    ``vifname``, ``script``, ``ip``, ``backend``, ``rate``, ``devid``,
    ``mtu``; ``accel``, ``vlan``, ``forwarddev`` and ``colo_*`` are accepted
    and dropped (not simulated).

    Args:
        s: the spec string (user input).
        position: index in the ``vif`` list: the devid unless ``devid=``.

    Returns:
        The interface, with ``devid`` always set and ``mac`` normalised to
        lower-case ``xx:xx:xx:xx:xx:xx`` (or None: random at create time).

    Raises:
        ConfigError: unknown key, malformed mac/rate/devid/mtu/type.
    """
    vif = VifSpec(devid=position)
    for item in s.split(","):
        token = item.lstrip(" ")
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not eq:
            if token in ("trusted", "untrusted"):
                vif.trusted = token == "trusted"
                continue
            raise ConfigError(f"vif `{s}': unrecognized argument `{token}' "
                              "(expected key=value, trusted or untrusted)")
        if key in _VIF_STRING_KEYS:
            setattr(vif, _VIF_STRING_KEYS[key], value)
        elif key == "mac":
            if not _MAC_LENIENT_RE.fullmatch(value):
                raise ConfigError(f"vif `{s}': invalid mac `{value}' "
                                  "(expected XX:XX:XX:XX:XX:XX, hex)")
            vif.mac = ":".join(f"{int(o, 16):02x}" for o in re.split("[:-]", value))
        elif key == "type":
            if value not in ("vif", "ioemu"):
                raise ConfigError(f"vif `{s}': invalid type `{value}' (expected vif or ioemu)")
            vif.type = value
        elif key == "rate":
            try:
                parse_rate(value)
            except ConfigError as e:
                raise ConfigError(f"vif `{s}': {e}") from None
            vif.rate = value
        elif key in ("devid", "mtu"):
            if not _DECIMAL_RE.fullmatch(value) or len(value) > 10:
                raise ConfigError(f"vif `{s}': invalid {key} `{value}' "
                                  "(expected a decimal number)")
            setattr(vif, key, int(value))
        elif key in _VIF_DROPPED_KEYS or key.startswith("colo_"):
            continue
        else:
            raise ConfigError(f"vif `{s}': unrecognized argument `{token}'")
    try:
        vif.validate()
    except ConfigError as e:
        raise ConfigError(f"vif `{s}': {e}") from None
    return vif


def format_vif_spec(v: VifSpec) -> str:
    """Render a :class:`VifSpec` as a VIFSPEC (``key=value,...``).

    Args:
        v: the interface (string fields must not contain commas).

    Returns:
        A spec that :func:`parse_vif_spec` reads back as ``v`` (at the
        same position, or anywhere when ``devid`` is set).
    """
    parts: list[str] = []
    for key, attr, default in (
        ("mac", "mac", None), ("bridge", "bridge", "xenbr0"), ("ip", "ip", None),
        ("vifname", "vifname", None), ("devid", "devid", None), ("mtu", "mtu", 1500),
        ("rate", "rate", None), ("script", "script", "vif-bridge"),
        ("backend", "backend", "0"), ("type", "type", "vif"), ("model", "model", None),
        ("gatewaydev", "gatewaydev", None),
    ):
        value = getattr(v, attr)
        if value != default:
            parts.append(f"{key}={value}")
    if not v.trusted:
        parts.append("untrusted")
    return ",".join(parts)


# --------------------------------------------------------------------------
# Layer 2c: channel specification (xl_parse.c, libxl_console.c)
# --------------------------------------------------------------------------

_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale


def parse_channel_spec(s: str, position: int = 0) -> ChannelSpec:
    """Parse one CHANNEL_SPEC (xl.cfg(5) ``channel=``) as xl and libxl do.

    Comma-separated ``KEY=VALUE`` pairs; empty items are skipped (xl splits
    with ``strtok``); whitespace around KEY and VALUE is dropped; a key
    given twice keeps its last value. Keys: ``backend`` (a domain),
    ``name`` (mandatory), ``connection`` (``pty`` or ``socket``, mandatory)
    and ``path`` (mandatory for ``socket``). Worked example::

        parse_channel_spec("name=org.qemu.guest_agent.0, connection=socket, "
                           "path=/run/xen/qga-web.sock", 0)
        -> ChannelSpec(name="org.qemu.guest_agent.0", connection="socket",
                       path="/run/xen/qga-web.sock")   # device/console/1

    Args:
        s: the spec string (user input).
        position: index in the ``channel`` list; the channel becomes console
            ``position + 1`` and is named so in messages, as libxl does.

    Returns:
        The channel, validated (:meth:`ChannelSpec.validate`).

    Raises:
        ConfigError: an item that is not ``KEY=VALUE``, an unknown key or
            connection, no connection, ``socket`` without ``path``, no name,
            or a value :meth:`ChannelSpec.validate` refuses. The message names
            the spec and uses xl's and libxl's wording where they have one.
    """
    fields: dict[str, str] = {}
    for item in (i for i in s.split(",") if i):
        key, eq, value = item.partition("=")
        key, value = key.strip(_C_SPACE), value.strip(_C_SPACE)
        if not eq or not key or not value:
            raise ConfigError(f"channel `{s}': failed to parse channel configuration: "
                              f"`{item}' (expected KEY=VALUE)")
        if "=" in value or '"' in key + value:
            raise ConfigError(f"channel `{s}': `{item}': neither KEY nor VALUE may contain "
                              "',', '=' or '\"'")
        if key not in ("backend", "name", "path", "connection"):
            raise ConfigError(f"channel `{s}': unknown channel parameter '{key}' (expected "
                              "backend, name, connection or path)")
        if key == "connection" and value not in ("pty", "socket"):
            raise ConfigError(f"channel `{s}': unknown channel connection '{value}' "
                              "(expected pty or socket)")
        fields[key] = value
    connection = fields.get("connection")
    if connection is None:
        raise ConfigError(f"channel `{s}': channel has unknown 'connection' (expected "
                          "connection=pty or connection=socket)")
    if connection == "socket" and "path" not in fields:
        raise ConfigError(f"channel `{s}': channel connection 'socket' requires path=..")
    if "name" not in fields:
        raise ConfigError(f"channel `{s}': channel {position + 1} has no name (name= is "
                          "mandatory)")
    channel = ChannelSpec(name=fields["name"], connection=connection, path=fields.get("path"),
                          backend=fields.get("backend", "0"))
    try:
        channel.validate()
    except ConfigError as e:
        raise ConfigError(f"channel `{s}': {e}") from None
    return channel


def format_channel_spec(c: ChannelSpec) -> str:
    """Render a :class:`ChannelSpec` as a CHANNEL_SPEC (``name=...,connection=...``).

    Args:
        c: a channel that passes :meth:`ChannelSpec.validate`.

    Returns:
        A spec that :func:`parse_channel_spec` reads back as ``c``.
    """
    parts = [f"name={c.name}", f"connection={c.connection}"]
    if c.path is not None:
        parts.append(f"path={c.path}")
    if c.backend != "0":
        parts.append(f"backend={c.backend}")
    return ",".join(parts)


# --------------------------------------------------------------------------
# Layer 2d: CPULIST (xl_parse.c parse_cpurange)
# --------------------------------------------------------------------------

_ULONG_MAX = 2**64 - 1
_STRTOUL_RE = re.compile(r"[ \t\n\v\f\r]*\+?([0-9]+)")


def _strtoul10(s: str) -> tuple[int, str] | None:
    m = _STRTOUL_RE.match(s)
    if m is None:
        return None
    return int(m.group(1)), s[m.end():]


def _parse_range(term: str, whole: str, shown: str) -> tuple[int, int]:
    first = _strtoul10(term)
    if first is not None:
        a, rest = first
        b = a
        if rest.startswith("-"):
            second = _strtoul10(rest[1:])
            if second is None:
                first = None
            else:
                b, rest = second
        if first is not None and not rest and b >= a and b < _ULONG_MAX:
            return a, b
    raise ConfigError(f"CPULIST `{whole}': invalid pcpu range `{shown}' "
                      "(expected N, N-M, all, nodes:..., each optionally with ^)")


def parse_cpulist(s: str, nr_cpus: int | None = None) -> set[int] | None:
    """Parse a CPULIST (xl.cfg(5) ``cpus``): ``"all"``, ``"0-3,5,^1"``, ``"nodes:0"``.

    Comma-separated terms, applied left to right: ``N`` or ``N-M`` adds
    CPUs, ``^`` removes them, ``all`` adds every CPU (``^all`` is refused),
    ``node:N``/``nodes:N-M`` add (or with ``^`` remove) every CPU of those
    NUMA nodes. A xensim host has a single NUMA node, node 0.

    Args:
        s: the CPULIST (user input).
        nr_cpus: the host's pCPU count, when known.

    Returns:
        The CPUs; or None when the list depends on the host's CPU count
        (uses ``all`` or a node) and ``nr_cpus`` is None.

    Raises:
        ConfigError: bad syntax, ``^all``, a node other than 0, or a CPU
            >= ``nr_cpus``.
    """
    everything = False  # "all" seen: the set is (all - removed) | added
    added: set[int] = set()
    removed: set[int] = set()
    for term in (t for t in s.split(",") if t):
        body = term
        negate = body.startswith("^")
        if negate:
            body = body[1:]
        is_nodes = False
        for prefix in ("node:", "nodes:"):
            if body.startswith(prefix):
                body = body[len(prefix):]
                is_nodes = True
                break
        if body == "all":
            if negate:
                raise ConfigError(f"CPULIST `{s}': can't combine \"^\" and \"all\"")
            everything, added, removed = True, set(), set()
            continue
        a, b = _parse_range(body, s, term)
        if is_nodes:
            if b > 0:
                raise ConfigError(f"CPULIST `{s}': NUMA node {b} does not exist (a xensim "
                                  "host has one node, node 0)")
            if negate:
                everything, added, removed = False, set(), set()
            else:
                everything, added, removed = True, set(), set()
            continue
        if nr_cpus is not None and b >= nr_cpus:
            raise ConfigError(f"CPULIST `{s}': cpu {b} does not exist "
                              f"(the host has {nr_cpus}: 0-{nr_cpus - 1})")
        if b - a > 1 << 16:
            raise ConfigError(f"CPULIST `{s}': range `{term}' is implausibly large")
        cpus = set(range(a, b + 1))
        if negate:
            added -= cpus
            removed |= cpus
        else:
            added |= cpus
            removed -= cpus
    if not everything:
        return added
    if nr_cpus is None:
        return None
    return (set(range(nr_cpus)) - removed) | added


# --------------------------------------------------------------------------
# Layer 3: settings -> GuestConfig
# --------------------------------------------------------------------------

# Keys xl knows (xl.cfg(5), Xen 4.17) that xensim does not simulate.
_IGNORED_KEYS_TEXT = """
    acpi acpi_firmware acpi_laptop_slate acpi_s3 acpi_s4 altp2m altp2mhvm apic arch_arm
    bios bios_path_override boot bootloader bootloader_args claim_mode
    cpuid cpus_soft device_model_args device_model_args_hvm device_model_args_pv
    device_model_override device_model_stubdomain_override
    device_model_stubdomain_seclabel device_model_user device_model_version
    device_tree dm_restrict driver_domain dtdev e820_host event_channels firmware
    gfx_passthru gic_version hap hdtype hpet init_seclabel iomem ioports irqs keymap
    localtime max_grant_version mca_caps mmio_hole ms_vm_genid nestedhvm nomigrate nx
    on_soft_reset oos opengl p9 pae passthrough pci pci_msitranslate pci_permissive
    pci_power_mgmt pci_seize pool pvcalls ramdisk rdm rdm_mem_boundary rtc_timeoffset
    sdl seclabel serial shadow_memory smbios_firmware soundhw spice spice_clipboard_sharing
    spice_disable_ticketing spice_host spice_image_compression spice_passwd spice_port
    spice_streaming_video spice_tls_port spice_usbredirection spice_vdagent stdvga
    stubdomain_kernel stubdomain_memory stubdomain_ramdisk sve tee timer_mode tsc_mode
    usb usbctrl usbdev usbdevice usbversion vdispl vendor_device vfb
    vga videoram viridian vkb vkb_device vmtrace_buf_kb vnc vncdisplay vnclisten
    vncpasswd vncunused vnuma vpmu vpt_align vsnd vtpm vuart xauthority xen_platform_pci
    xend_suspend_evtchn_compat display vif2 virtio
"""
_IGNORED_KEYS = frozenset(_IGNORED_KEYS_TEXT.split())

_KERNEL_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}")


class _Builder:
    """Collects GuestConfig fields and warnings while handlers run."""

    def __init__(self, settings: dict[str, Setting]) -> None:
        self.settings = settings
        self.fields: dict[str, Any] = {}
        self.warnings: list[str] = []

    def string(self, s: Setting, what: str = "a \"string\"") -> str:
        if isinstance(s.value, list):
            raise ConfigError(f"{s.where()}: {s.name}: expected {what}, got a [ list ]")
        return s.value

    def integer(self, s: Setting, what: str) -> int:
        value = self.string(s, what)
        if s.added:
            raise ConfigError(f"{s.where()}: {s.name}: can't use += with numbers")
        n = _c_long(value)
        if n is None:
            raise ConfigError(f"{s.where()}: {s.name}: expected {what}, got \"{value}\"")
        return n

    def strings(self, s: Setting, what: str) -> list[str]:
        if not isinstance(s.value, list):
            raise ConfigError(f"{s.where()}: {s.name}: expected a [ list ] of {what}, "
                              f"got a string (write {s.name} = [ '...' ])")
        out = []
        for i, item in enumerate(s.value):
            if isinstance(item, list):
                raise ConfigError(f"{s.where(i)}: {s.name}: expected {what}, got a nested list")
            out.append(item)
        return out


Handler = Callable[[_Builder, Setting], None]


def _int_field(field_name: str, what: str) -> Handler:
    def handle(b: _Builder, s: Setting) -> None:
        b.fields[field_name] = b.integer(s, what)
    return handle


def _str_field(field_name: str) -> Handler:
    def handle(b: _Builder, s: Setting) -> None:
        b.fields[field_name] = b.string(s)
    return handle


def _action_field(b: _Builder, s: Setting) -> None:
    value = b.string(s)
    try:
        b.fields[s.name] = Action(value)
    except ValueError:
        choices = ", ".join(a.value for a in Action)
        raise ConfigError(f"{s.where()}: {s.name}: unknown action \"{value}\" "
                          f"(expected one of {choices})") from None


def _type_check(b: _Builder, s: Setting) -> None:
    value = b.string(s)
    if s.name == "builder":
        if "type" in b.settings:
            return
        b.warnings.append(f"{s.where()}: warning: builder is deprecated, use type = \"pv\"")
        value = {"generic": "pv"}.get(value, value)
    if value in ("pv", "pvh"):
        return
    if value == "hvm":
        raise ConfigError(f"{s.where()}: {s.name}: \"hvm\" guests are not supported: xensim "
                          "simulates PV guests only (use type = \"pv\" or \"pvh\")")
    expected = "generic or hvm" if s.name == "builder" else "pv, pvh or hvm"
    raise ConfigError(f"{s.where()}: {s.name}: expected {expected}, got \"{value}\"")


def _kernel(b: _Builder, s: Setting) -> None:
    value = b.string(s)
    if not _KERNEL_RE.fullmatch(value):
        raise ConfigError(f"{s.where()}: kernel: xensim runs a Python guest program: expected "
                          f"\"module:function\", got \"{value}\"")
    b.fields["kernel"] = value


def _uuid(b: _Builder, s: Setting) -> None:
    value = b.string(s)
    if not _UUID_RE.fullmatch(value):
        raise ConfigError(f"{s.where()}: uuid: expected XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX "
                          f"(hex), got \"{value}\"")
    b.fields["uuid"] = value


def _cpus(b: _Builder, s: Setting) -> None:
    if isinstance(s.value, list):
        lists = b.strings(s, "CPULIST strings (one per vCPU)")
        for i, cpulist in enumerate(lists):
            try:
                parse_cpulist(cpulist)
            except ConfigError as e:
                raise ConfigError(f"{s.where(i)}: cpus: {e}") from None
        b.fields["cpus"] = lists
        return
    try:
        parse_cpulist(s.value)
    except ConfigError as e:
        raise ConfigError(f"{s.where()}: cpus: {e}") from None
    b.fields["cpus"] = s.value


def _disks(b: _Builder, s: Setting) -> None:
    disks = []
    for i, spec in enumerate(b.strings(s, "DISKSPEC strings")):
        try:
            d = parse_disk_spec(spec)
        except ConfigError as e:
            raise ConfigError(f"{s.where(i)}: disk: {e}") from None
        if d.format not in ("raw", "empty"):
            b.warnings.append(f"{s.where(i)}: warning: disk {d.vdev}: format {d.format} "
                              "is not served by xensim's blkback (raw only)")
        if d.specification != "xen":
            b.warnings.append(f"{s.where(i)}: warning: disk {d.vdev}: specification "
                              f"{d.specification} is not simulated (xen only)")
        disks.append(d)
    b.fields["disks"] = disks


def _vifs(b: _Builder, s: Setting) -> None:
    vifs = []
    for i, spec in enumerate(b.strings(s, "VIFSPEC strings")):
        try:
            vifs.append(parse_vif_spec(spec, i))
        except ConfigError as e:
            raise ConfigError(f"{s.where(i)}: vif: {e}") from None
    b.fields["vifs"] = vifs


def _channels(b: _Builder, s: Setting) -> None:
    channels = []
    for i, spec in enumerate(b.strings(s, "CHANNEL_SPEC strings")):
        try:
            channels.append(parse_channel_spec(spec, i))
        except ConfigError as e:
            raise ConfigError(f"{s.where(i)}: channel: {e}") from None
    b.fields["channels"] = channels


_MIB = "an integer number of MiB"
_HANDLERS: dict[str, Handler] = {
    "name": _str_field("name"),
    "type": _type_check,
    "builder": _type_check,
    "memory": _int_field("memory", _MIB),
    "maxmem": _int_field("maxmem", _MIB),
    "vcpus": _int_field("vcpus", "an integer number of vCPUs"),
    "maxvcpus": _int_field("maxvcpus", "an integer number of vCPUs"),
    "cpus": _cpus,
    "cpu_weight": _int_field("cpu_weight", "an integer weight 1..65535"),
    "cap": _int_field("cap", "an integer percentage of one pCPU (0 = uncapped)"),
    "on_poweroff": _action_field,
    "on_reboot": _action_field,
    "on_crash": _action_field,
    "on_watchdog": _action_field,
    "kernel": _kernel,
    "extra": _str_field("extra"),
    "cmdline": _str_field("cmdline"),
    "root": lambda b, s: None,  # folded into cmdline below
    "uuid": _uuid,
    "disk": _disks,
    "vif": _vifs,
    "channel": _channels,
    "max_event_channels": _int_field("max_event_channels", "an integer number of channels"),
    "max_grant_frames": _int_field("max_grant_frames", "an integer number of frames"),
    "max_maptrack_frames": _int_field("max_maptrack_frames", "an integer number of frames"),
}


def _settings_to_config(settings: dict[str, Setting], filename: str
                        ) -> tuple[GuestConfig, list[str]]:
    b = _Builder(settings)
    for name, s in settings.items():
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(b, s)
        elif name in _IGNORED_KEYS:
            b.warnings.append(f"{s.where()}: warning: {name}: ignored by xensim")
        else:
            b.warnings.append(f"{s.where()}: warning: unknown key \"{name}\" (ignored)")
    root = settings.get("root")
    root_value = b.string(root) if root is not None else None
    if "cmdline" in b.fields:
        if root is not None or "extra" in b.fields:
            where = (root or settings["extra"]).where()
            b.warnings.append(f"{where}: warning: ignoring root= and extra= in favour of "
                              "cmdline=")
    elif root_value is not None:
        extra = b.fields.get("extra")
        b.fields["cmdline"] = f"root={root_value} {extra}" if extra else f"root={root_value}"
    if "name" not in b.fields:
        raise ConfigError(f"{filename}: name: mandatory, but not given "
                          "(Domain name must be specified)")
    config = GuestConfig(**b.fields)
    try:
        config.validate()
    except ConfigError as e:
        key = re.split(r"[ :]", str(e), maxsplit=1)[0]
        s = settings.get(key)
        where = s.where() if s is not None else filename
        raise ConfigError(f"{where}: {e}") from None
    return config, b.warnings


def loads_config(
    text: str, filename: str = "<string>", extra_settings: str | None = None,
) -> tuple[GuestConfig, list[str]]:
    """Parse xl.cfg text into a validated :class:`GuestConfig`.

    Args:
        text: the configuration (user input).
        filename: for messages (``filename:line: ...``).
        extra_settings: ``xl create``'s trailing argument
            (``'memory=512; vcpus=2'``), parsed after the file so it wins;
            its messages name ``command line``.

    Returns:
        ``(config, warnings)``; each warning is one line
        ``file:line: warning: ...`` (ignored keys, unknown keys, ...).

    Raises:
        ConfigError: any syntax error or bad value; the message names the
            file, the line and what was expected.
    """
    settings = parse_settings(text, filename)
    if extra_settings:
        parse_settings(extra_settings, "command line", settings)
    return _settings_to_config(settings, filename)


def load_config(path: str | os.PathLike[str], extra_settings: str | None = None
                ) -> tuple[GuestConfig, list[str]]:
    """Read an xl.cfg file (``xl create PATH [EXTRA]``).

    Args:
        path: the file; messages name it as given.
        extra_settings: command-line settings that override the file.

    Returns:
        ``(config, warnings)`` as :func:`loads_config`.

    Raises:
        ConfigError: unreadable file, syntax error or bad value.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{filename}: unable to open configuration file: "
                          f"{e.strerror}") from None
    text = data.decode("utf-8", errors="surrogateescape")
    return loads_config(text, filename, extra_settings)


# --------------------------------------------------------------------------
# Rendering (the inverse, for round trips and `xl`-style dumps)
# --------------------------------------------------------------------------

_RENDER_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r",
                   "\a": "\\a", "\b": "\\b", "\f": "\\f", "\v": "\\v"}


def _quote(s: str) -> str:
    out = []
    for c in s:
        if c in _RENDER_ESCAPES:
            out.append(_RENDER_ESCAPES[c])
        elif ord(c) < 0x20 or c == "\x7f":
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def dumps_config(config: GuestConfig) -> str:
    """Render a :class:`GuestConfig` as xl.cfg text.

    Args:
        config: the guest; ``kernel`` must be a ``"module:function"`` string.

    Returns:
        Text that :func:`loads_config` reads back as an equal config.

    Raises:
        ConfigError: ``kernel`` is a callable (it has no xl.cfg spelling).
    """
    if not isinstance(config.kernel, str):
        raise ConfigError("kernel: a callable cannot be written to xl.cfg")
    lines = [f"name = {_quote(config.name)}", f"kernel = {_quote(config.kernel)}",
             f"memory = {config.memory}"]
    if config.maxmem is not None:
        lines.append(f"maxmem = {config.maxmem}")
    lines.append(f"vcpus = {config.vcpus}")
    if config.maxvcpus is not None:
        lines.append(f"maxvcpus = {config.maxvcpus}")
    if isinstance(config.cpus, str):
        lines.append(f"cpus = {_quote(config.cpus)}")
    elif config.cpus is not None:
        lines.append("cpus = [ " + ", ".join(_quote(c) for c in config.cpus) + " ]")
    lines += [f"cpu_weight = {config.cpu_weight}", f"cap = {config.cap}"]
    if config.extra:
        lines.append(f"extra = {_quote(config.extra)}")
    if config.cmdline is not None:
        lines.append(f"cmdline = {_quote(config.cmdline)}")
    for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog"):
        lines.append(f"{key} = {_quote(Action(getattr(config, key)).value)}")
    if config.uuid is not None:
        lines.append(f"uuid = {_quote(config.uuid)}")
    for key in ("max_event_channels", "max_grant_frames", "max_maptrack_frames"):
        lines.append(f"{key} = {getattr(config, key)}")
    lines.append("disk = [")
    lines += [f"    {_quote(format_disk_spec(d))}," for d in config.disks]
    lines.append("]")
    lines.append("vif = [")
    lines += [f"    {_quote(format_vif_spec(v))}," for v in config.vifs]
    lines.append("]")
    lines.append("channel = [")
    lines += [f"    {_quote(format_channel_spec(c))}," for c in config.channels]
    lines.append("]")
    return "\n".join(lines) + "\n"
