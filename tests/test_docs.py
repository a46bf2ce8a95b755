"""The documents stay true: every image and relative link in the README, BENCHMARKS, docs/ and
the model cards exists (a link to a heading, ``file.md#heading``, needs that heading), and every
``compdiff ...`` command the README shows parses with the CLI's own argument parser (a dry run:
the arguments are parsed, nothing is executed).

The checkers are plain functions, and the last tests feed them a broken link and a mistyped
command to show that they fail when they should.
"""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted(
    {README, ROOT / "BENCHMARKS.md", *ROOT.glob("docs/*.md"), *ROOT.glob("docs/experiments/*.md"),
     *ROOT.glob("src/compdiff/weights/*/README.md")}
)

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code (links there are examples, not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced and not line.startswith("    "):
            out.append(INLINE_CODE.sub("", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not fenced:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Every broken image or relative link of one Markdown file, as 'file: target (why)'."""
    problems = []
    for bang, _text, target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}: {target}"
        if root not in dest.parents and dest != root:
            problems.append(f"{where} (outside the repository)")
        elif not dest.exists():
            problems.append(f"{where} (no such file)")
        elif bang and (not dest.is_file() or dest.suffix.lower() not in IMAGE_SUFFIXES):
            problems.append(f"{where} (not an image file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            problems.append(f"{where} (no heading #{fragment} in {dest.name})")
    return problems


def readme_commands(text: str) -> list[str]:
    """The `compdiff ...` commands the text shows: lines of its shell code blocks (a trailing
    backslash continues a line; ``accelerate launch ... -m compdiff`` counts too) and inline code
    that starts with ``compdiff ``."""
    commands, fenced, lang, pending = [], False, "", ""
    for line in text.splitlines():
        m = FENCE.match(line.strip())
        if m:
            fenced, lang = not fenced, line.strip()[3:].strip().lower()
            continue
        if fenced and lang in ("", "bash", "sh", "shell", "console"):
            line = pending + line.strip().removeprefix("$ ")
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line.startswith("compdiff ") or " -m compdiff " in line:
                commands.append(line)
        elif not fenced:
            commands += [c for _, c in INLINE_CODE.findall(line) if c.startswith("compdiff ")]
    return commands


def _no_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its sub-parsers, made to refuse abbreviated options: the CLI takes
    `--component` for `--components`, but a document should spell options out."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)
    return parser


def parse_command(command: str) -> None:
    """Parse one command line with compdiff's parser (options spelt out in full); raise if it
    does not parse."""
    from compdiff.__main__ import build_parser  # every sub-command, serve included

    argv = shlex.split(command, comments=True)
    if "compdiff" in argv and argv[0] != "compdiff":  # accelerate launch ... -m compdiff ...
        argv = argv[argv.index("compdiff"):]
    assert argv[0] == "compdiff", command
    args = _no_abbreviations(build_parser()).parse_args(argv[1:])
    assert getattr(args, "func", None), f"no sub-command in {command!r}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_images_exist(path):
    assert link_problems(path) == []


def test_readme_shows_commands():
    assert len(readme_commands(README.read_text(encoding="utf-8"))) >= 10


@pytest.mark.parametrize("command", readme_commands(README.read_text(encoding="utf-8")))
def test_readme_command_parses(command):
    parse_command(command)


def test_readme_python_compiles():
    """The README's Python blocks are valid Python, and the names they import exist."""
    import importlib

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")
        for module, name in re.findall(r"^from (\S+) import (\w+)", block, re.M):
            assert hasattr(importlib.import_module(module), name), (module, name)


def test_no_reference_outside_the_repository():
    for path in DOCS:
        assert "../shared" not in path.read_text(encoding="utf-8"), path


def test_checkers_fail_on_a_broken_link_and_a_typo(tmp_path):
    """The checks above can fail: a missing image, a missing file, a missing heading, and
    commands with a mistyped sub-command, option or value are all caught."""
    root = tmp_path.resolve()
    (root / "real.png").write_bytes(b"\x89PNG")
    (root / "other.md").write_text("# A heading\n", encoding="utf-8")
    doc = root / "doc.md"
    doc.write_text("![ok](real.png) [ok](other.md#a-heading) `[not a link](nowhere.md)`\n"
                   "![gone](missing.png) [gone](missing.md) [bad anchor](other.md#no-such)\n",
                   encoding="utf-8")
    problems = link_problems(doc, root)
    assert [p.split(": ", 1)[1].split(" ")[0] for p in problems] == [
        "missing.png", "missing.md", "other.md#no-such"]
    for typo in ("compdiff sampel 'a AND b'",                     # sub-command
                 "compdiff sample 'a AND b' --guidnce-scale 3",   # option
                 "compdiff eval --task objects --component 1,2 --out r",  # option abbreviated
                 "compdiff sample 'a AND b' --sampler dpm",        # choice
                 "compdiff eval --task objects --n 0 --out r"):    # value out of range
        with pytest.raises(Exception):
            parse_command(typo)
    parse_command("compdiff sample 'a AND b' --guidance-scale 3")
    assert readme_commands("```bash\ncompdiff serve \\\n  --port 8000  # a comment\n```\n`compdiff explain x`\n") == [
        "compdiff serve  --port 8000  # a comment", "compdiff explain x"]
