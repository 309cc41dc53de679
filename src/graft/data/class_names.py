"""Class names that become folder names: what a label sent from a phone may be before it names a directory.

A `folder:` data set's classes are its sub-folder names, so a class name taken from a client is a path
component. `check_class_name` accepts a name only when it is one harmless component on every common file
system: no separators, no `.`/`..` or hidden names, no control or invisible format characters, no characters
Windows refuses, not a Windows device name, and short enough (in characters and UTF-8 bytes) for any file
system. Unicode letters are welcome (`Käse`, `猫`, emoji): the name is NFC-normalised first, so the same word
typed on two keyboards is one class. Surrounding white space is dropped (phone keyboards add a trailing space).
"""

from __future__ import annotations

import unicodedata

from graft.errors import GraftError

MAX_CLASS_CHARS = 64
MAX_CLASS_BYTES = 200  # UTF-8; file systems allow 255 per name, and a class name is also a folder name elsewhere
_WINDOWS_FORBIDDEN = set('<>:"/\\|?*')
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
# Format characters (Cf) are invisible: 'cat' and 'c\u200bat' would look alike. Only the zero-width joiner
# that emoji sequences need is allowed.
_ALLOWED_FORMAT = {"\u200d"}


class InvalidClassName(GraftError):
    """A class name that cannot safely be a folder name (the message says why)."""


def check_class_name(raw: object) -> str:
    """The class name `raw` stands for (NFC, without surrounding white space), or InvalidClassName saying why not."""
    if not isinstance(raw, str):
        raise InvalidClassName(f"a class name is text, got {type(raw).__name__}")
    name = unicodedata.normalize("NFC", raw).strip()
    shown = _shown(name)
    if not name:
        raise InvalidClassName("the class name is empty")
    if len(name) > MAX_CLASS_CHARS or len(name.encode("utf-8")) > MAX_CLASS_BYTES:
        raise InvalidClassName(
            f"class name {shown} is too long (at most {MAX_CLASS_CHARS} characters and {MAX_CLASS_BYTES} bytes)"
        )
    for char in name:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp") or (category == "Cf" and char not in _ALLOWED_FORMAT):
            raise InvalidClassName(f"class name {shown} holds a control or invisible character (U+{ord(char):04X})")
        if char in _WINDOWS_FORBIDDEN:
            raise InvalidClassName(f"class name {shown} holds {char!r}: a class name is one folder name, no paths")
    if name.startswith("."):
        raise InvalidClassName(f"class name {shown} starts with '.' (a hidden folder, or . and ..)")
    if ".." in name:
        raise InvalidClassName(f"class name {shown} holds '..'")
    if name.endswith("."):
        raise InvalidClassName(f"class name {shown} ends with '.' (Windows drops it)")
    if name.split(".")[0].casefold() in _WINDOWS_DEVICES:
        raise InvalidClassName(f"class name {shown} is a Windows device name")
    return name


def _shown(name: str) -> str:
    """The name for an error message: repr (control characters escaped), cut short."""
    return repr(name if len(name) <= 40 else name[:40] + "…")
