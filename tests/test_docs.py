"""Every code block in docs/ runs, and the reference documents every public name.

Blocks are fenced code in docs/*.md. A ``python`` block with a ``def test_`` is a test file: it
runs under ``pytest --mlx-compile-matrix`` with the plugin on. Other ``python`` blocks are a
page's script: they run in order, in one namespace, in a fresh interpreter per page. ``ini`` and
``toml`` blocks are configuration: pytest runs a marked test with them. ``json`` blocks parse.
Blocks in other languages (``text``, ``console``) are output and commands, not code to run; the
README commands they repeat are checked against .ci/run, which runs them.

An HTML comment right above a block (invisible in the rendered page) states what it must do:
``<!-- docs-test: raises NAME -->`` (the script raises NAME, or the test file's run fails and
prints it), ``<!-- docs-test: expect passed=1 failed=2 -->`` (the test file's outcomes),
``<!-- docs-test: args --mlx-timings -->`` (more pytest arguments), ``<!-- docs-test: setup CODE -->``
(hidden code run before a script block, for fragments), ``<!-- docs-test: skip WHY -->``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pytest_mlxcompile

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^`\n]*)$")
DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(?P<key>\w+)\s*(?P<value>.*?)\s*-->$")
SCRIPT_RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__docs__"}
for block in json.load(sys.stdin):
    where = f"{block['path']}:{block['line']}"
    if block["setup"]:
        exec(block["setup"], namespace)
    code = compile("\\n" * (block["line"]) + block["source"], block["path"], "exec")
    try:
        exec(code, namespace)
    except BaseException as exc:
        names = [cls.__name__ for cls in type(exc).__mro__]
        if block["raises"] and block["raises"] in names:
            print(f"docs-test: {where}: raised {block['raises']}")
            continue
        traceback.print_exc()
        sys.exit(f"{where}: the block raised {type(exc).__name__}: {exc}")
    if block["raises"]:
        sys.exit(f"{where}: the block should raise {block['raises']} and did not")
    print(f"docs-test: {where}: ran")
"""


@dataclass
class Block:
    path: str
    line: int  # the line of the opening fence; the code starts on the next one
    lang: str
    source: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def is_test_file(self) -> bool:
        return re.search(r"^def test_", self.source, flags=re.MULTILINE) is not None


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        directives: dict[str, str] = {}
        above = index - 1
        while above >= 0 and (directive := DIRECTIVE.match(lines[above].strip())):
            directives[directive["key"]] = directive["value"]
            above -= 1
        # ```{directive} args (MyST) is markup, not code, unless it is a code-block
        lang = info.removeprefix("{code-block}").strip().split(" ")[0] if info else ""
        if not info.startswith("{") or info.startswith("{code-block}"):
            source = "\n".join(lines[index + 1 : end]) + "\n"
            name = str(path.relative_to(ROOT))
            found.append(Block(name, index + 1, lang, source, directives))
        index = end + 1
    return found


PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = [block for page in PAGES for block in blocks_of(page)]
PYTHON = ("python", "py", "python3")
SCRIPT_PAGES = sorted({b.path for b in BLOCKS if b.lang in PYTHON and not b.is_test_file})
TEST_FILES = [b for b in BLOCKS if b.lang in PYTHON and b.is_test_file]
CONFIGS = [b for b in BLOCKS if b.lang in ("ini", "toml")]
JSONS = [b for b in BLOCKS if b.lang == "json"]


def skip_if_asked(block: Block) -> None:
    if "skip" in block.directives:
        pytest.skip(f"{block.id}: {block.directives['skip'] or 'marked docs-test: skip'}")


@pytest.mark.parametrize("page", SCRIPT_PAGES)
def test_the_python_blocks_of_each_page_run_in_order(page: str) -> None:
    blocks = [
        {
            "path": b.path,
            "line": b.line,
            "source": b.source,
            "raises": b.directives.get("raises", ""),
            "setup": b.directives.get("setup", ""),
        }
        for b in BLOCKS
        if b.path == page and b.lang in PYTHON and not b.is_test_file and "skip" not in b.directives
    ]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT_RUNNER],
        input=json.dumps(blocks),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    status = [line for line in done.stdout.splitlines() if line.startswith("docs-test: ")]
    assert status == [
        f"docs-test: {b['path']}:{b['line']}: "
        + (f"raised {b['raises']}" if b["raises"] else "ran")
        for b in blocks
    ]


@pytest.mark.parametrize("block", TEST_FILES, ids=[b.id for b in TEST_FILES])
def test_each_test_file_in_the_docs_behaves_as_documented(
    block: Block, pytester: pytest.Pytester, run
) -> None:
    skip_if_asked(block)
    source = block.directives.get("setup", "") + "\n" + block.source
    pytester.makepyfile(**{f"test_{Path(block.path).stem}_{block.line}": source})
    result = run("--mlx-compile-matrix", *block.directives.get("args", "").split())
    if "expect" in block.directives:
        outcomes = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", block.directives["expect"])}
        result.assert_outcomes(**outcomes)
    if "raises" in block.directives:
        assert result.ret == 1, result.stdout.str()
        result.stdout.fnmatch_lines([f"E *{block.directives['raises']}: *"])
    else:
        assert result.ret == 0, result.stdout.str()


CONFIG_TEST = """
import mlx.core as mx
import pytest


@mx.compile
def double(x):
    return 2 * x


@pytest.mark.compiled
def test_double():
    assert double(mx.ones((2,))).tolist() == [2.0, 2.0]
"""


@pytest.mark.parametrize("block", CONFIGS, ids=[b.id for b in CONFIGS])
def test_each_configuration_block_is_accepted_by_pytest(
    block: Block, pytester: pytest.Pytester, run
) -> None:
    skip_if_asked(block)
    name = "pytest.ini" if block.lang == "ini" else "pyproject.toml"
    (pytester.path / name).write_text(block.source)
    pytester.makepyfile(test_double=CONFIG_TEST)
    result = run("-v")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"configfile: {name}", "*test_double[[]compiled[]] PASSED*"])


@pytest.mark.parametrize("block", JSONS, ids=[b.id for b in JSONS])
def test_each_json_block_parses(block: Block) -> None:
    skip_if_asked(block)
    json.loads(block.source)


def test_every_name_in_all_is_documented_in_the_reference() -> None:
    reference = (DOCS / "reference.md").read_text()
    documented = set(
        re.findall(
            r"\.\. auto(?:class|function|exception|data)::\s+pytest_mlxcompile\.(\w+)", reference
        )
    )
    missing = sorted(set(pytest_mlxcompile.__all__) - documented)
    assert not missing, f"add these to docs/reference.md (an autodoc directive each): {missing}"


def test_the_readme_commands_are_the_quickstarts_and_ci_runs_them() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^```\n(python3 -m venv .*)\n```$", readme, flags=re.MULTILINE)
    assert len(commands) == 2, "the README gives two commands: the main job and the tests"
    quickstart = (DOCS / "quickstart.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in commands:
        assert command in quickstart
        assert command in ci
