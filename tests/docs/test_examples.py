"""Every example in README.md and docs/*.md runs: each fenced ```python block, and each command of the
```bash / ```sh / ```console blocks (in console blocks only the lines starting with "$ ").

HTML comments on the lines directly above a block's opening fence control how it is run (the convention is
documented in docs/architecture.md, "Testing the examples in the docs"):

    <!-- test: skip REASON -->      not run (a reason is required)
    <!-- test: slow -->             run only in the slow suite
    <!-- test: sub OLD => NEW -->   replace OLD by NEW before running (repeatable)
    <!-- test: expect TEXT -->      the output (stdout + stderr) must contain TEXT (repeatable)
    <!-- test: exit N -->           the last command must exit with N (default 0)

Each block runs in a fresh temporary folder (so ``--out runs/...`` writes there) with experiments/ and bench/
linked into it, PYTHONPATH set to this checkout, and ``python`` and the frd-* console commands bound to this
checkout's interpreter and modules.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_LANGS = {"python", "bash", "sh", "console"}
LINKED = ("experiments", "bench")
TIMEOUT = 600


@dataclass
class Block:
    path: str  # relative to ROOT
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None
    slow: bool = False
    subs: list = field(default_factory=list)
    expect: list = field(default_factory=list)
    exit: int = 0

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


DIRECTIVE = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)```\s*([A-Za-z0-9_+-]*)\s*$")


def doc_files() -> list[str]:
    files = ["README.md"]
    docs = os.path.join(ROOT, "docs")
    for name in sorted(os.listdir(docs)):
        if name.endswith(".md"):
            files.append(os.path.join("docs", name))
    return files


def parse_directive(block: Block, text: str) -> None:
    word, _, rest = text.partition(" ")
    rest = rest.strip()
    if word == "skip":
        if not rest:
            raise ValueError(f"{block.id}: 'test: skip' needs a reason")
        block.skip = rest
    elif word == "slow":
        block.slow = True
    elif word == "sub":
        old, sep, new = rest.partition(" => ")
        if not sep or not old:
            raise ValueError(f"{block.id}: 'test: sub OLD => NEW' expected, got {text!r}")
        block.subs.append((old, new))
    elif word == "expect":
        if not rest:
            raise ValueError(f"{block.id}: 'test: expect TEXT' needs a text")
        block.expect.append(rest)
    elif word == "exit":
        block.exit = int(rest)
    else:
        raise ValueError(f"{block.id}: unknown directive {text!r}")


def parse_blocks(relpath: str) -> list[Block]:
    with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
        block = Block(relpath, i + 1, lang, "\n".join(body) + "\n")
        k = i - 1  # the directives: comment lines directly above the fence
        directives = []
        while k >= 0 and DIRECTIVE.match(lines[k].strip()):
            directives.append(DIRECTIVE.match(lines[k].strip()).group(1))
            k -= 1
        for text in reversed(directives):
            parse_directive(block, text)
        if lang in RUN_LANGS:
            blocks.append(block)
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for f in doc_files() for b in parse_blocks(f)]


def shell_script(block: Block) -> str:
    """The commands of a bash/sh/console block, continuation lines joined, comments kept (bash ignores them)."""
    lines = block.code.split("\n")
    if block.lang == "console":
        cmds, current = [], None
        for ln in lines:
            if ln.startswith("$ "):
                current = ln[2:]
                cmds.append(current)
            elif current is not None and cmds[-1].endswith("\\"):
                cmds[-1] = cmds[-1] + "\n" + ln
        lines = cmds
    text = "\n".join(lines)
    return text


def apply_subs(block: Block, code: str) -> str:
    for old, new in block.subs:
        if old not in code:
            raise AssertionError(f"{block.id}: 'sub' text {old!r} is not in the block")
        code = code.replace(old, new)
    return code


def _bin_dir(tmp_path) -> str:
    from common.cli import PROGRAMS

    bindir = tmp_path / "_bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python")
    for command, module in PROGRAMS.items():
        script = bindir / command
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m {module} "$@"\n')
        script.chmod(0o755)
    return str(bindir)


def run_block(block: Block, tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        os.symlink(os.path.join(ROOT, name), work / name)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PATH"] = _bin_dir(tmp_path) + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    env["TQDM_DISABLE"] = "1"
    if block.lang == "python":
        code = apply_subs(block, block.code)
        argv = [sys.executable, "-c", code]
    else:
        script = apply_subs(block, shell_script(block))
        # every command but the last must succeed; the last one's status is checked against 'exit'
        argv = ["bash", "-c", "set -e -o pipefail\n" + script]
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == block.exit, (
        f"{block.id}: exit status {proc.returncode}, expected {block.exit}\n--- output (tail)\n{out[-4000:]}")
    for text in block.expect:
        assert text in out, f"{block.id}: output lacks {text!r}\n--- output (tail)\n{out[-4000:]}"


def _param(block: Block):
    marks = [pytest.mark.slow] if block.slow else []
    if block.skip:
        marks.append(pytest.mark.skip(reason=f"{block.id}: {block.skip}"))
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in all_blocks()])
def test_doc_example(block, tmp_path):
    run_block(block, tmp_path)


# ----------------------------------------------------------------------------- the convention itself
def test_convention_parses_directives(tmp_path, monkeypatch):
    doc = tmp_path / "x.md"
    doc.write_text("text\n\n<!-- test: slow -->\n<!-- test: sub a => b -->\n<!-- test: expect ok -->\n"
                   "<!-- test: exit 2 -->\n```bash\necho a\n```\n\n```python\nprint(1)\n```\n"
                   "<!-- test: skip no machine -->\n```console\n$ echo hi\nhi\n```\n```bibtex\n@x{}\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    b1, b2, b3 = parse_blocks("x.md")
    assert (b1.lang, b1.slow, b1.subs, b1.expect, b1.exit, b1.skip) == ("bash", True, [("a", "b")], ["ok"], 2, None)
    assert (b2.lang, b2.slow, b2.subs, b2.exit) == ("python", False, [], 0)
    assert b3.skip == "no machine" and shell_script(b3) == "echo hi"


def test_every_block_is_covered():
    """The docs have examples of every runnable kind, and no block is silently ignored: each is run, slow or
    skipped with a reason."""
    blocks = all_blocks()
    assert {b.lang for b in blocks} >= {"python", "bash", "console"}
    assert all(b.skip is None or b.skip.strip() for b in blocks)
    # the fast suite runs a few (the README's among them); the rest run in the slow suite
    assert sum(b.skip is None and not b.slow for b in blocks) >= 3
    assert sum(b.skip is None for b in blocks) >= 15
