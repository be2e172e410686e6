"""Blank lines in CSV files: skipped and counted, never read as rows.

Polars reads an empty line as a row of NULLs (a trailing `\\n\\n` too), which invents rows.
CSV readers conventionally skip blank lines, so hygge does: a file that holds one gets a copy
without them, and the count is reported. A blank line inside a quoted field is data and stays:
quotes are tracked line by line (an odd count of quote characters opens or closes a field; an
escaped quote `""` counts twice, so it changes nothing).
"""

from __future__ import annotations

from pathlib import Path

#: an empty line, in either line ending
_BLANK = (b"\n", b"\r\n")
_SEARCH_BLOCK = 1 << 23


def might_have_blank_lines(path: Path) -> bool:
    """Whether the file may hold a blank line (a fast byte search, no parsing)."""
    # read in blocks, not mapped: a mapped file's pages count in the process's memory, so a
    # search of a 12 GB file would peak at 12 GB (issue 20)
    with path.open("rb") as handle:
        block = handle.read(_SEARCH_BLOCK)
        if block[:1] == b"\n" or block[:2] == b"\r\n":
            return True
        carry = b""
        while block:
            block = carry + block  # a blank line may straddle two blocks
            if block.find(b"\n\n") >= 0 or block.find(b"\n\r\n") >= 0:
                return True
            carry = block[-2:]
            block = handle.read(_SEARCH_BLOCK)
    return False


def copy_without_blank_lines(src: Path, dst: Path, quote_char: str | None) -> int:
    """Copy `src` to `dst` leaving out blank lines outside quoted fields; return how many."""
    quote = quote_char.encode("utf-8") if quote_char else None
    skipped = 0
    quoted = False
    with src.open("rb") as reader, dst.open("wb") as writer:
        for line in reader:
            if not quoted and line in _BLANK:
                skipped += 1
                continue
            writer.write(line)
            if quote is not None and line.count(quote) % 2:
                quoted = not quoted
    return skipped


def without_blank_lines(
    sources: list[Path], tmp: Path, quote_char: str | None
) -> tuple[list[Path], int]:
    """The sources with blank lines left out (copies in `tmp` where needed), and the count."""
    out: list[Path] = []
    skipped = 0
    for i, path in enumerate(sources):
        if not might_have_blank_lines(path):
            out.append(path)
            continue
        target = tmp / f"{i:05d}-lines.csv"
        found = copy_without_blank_lines(path, target, quote_char)
        if found:
            skipped += found
            out.append(target)
        else:
            target.unlink()
            out.append(path)  # the blank lines were all inside quoted fields
    return out, skipped
