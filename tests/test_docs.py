"""
README.md and docs/: every shell command names what exists (scripts, modules, make targets,
config files) and passes the flags its script's parser accepts; every Python and YAML block
parses; relative links lead to files; README's usage snippet runs on the synthetic config.

Commands are not run: each script is executed in this process only up to its ``argparse`` call
(which is intercepted), then the documented arguments are parsed with the parser it built.
"""

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
README_MAX_LINES = 200

_FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^ *```", re.M | re.S)
_SHELL = {"bash", "shell", "sh", "console"}
_PYTHONS = {"python", "python3", ".venv/bin/python", ".venv-d2main/bin/python"}
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Commands a document may show that name nothing of this repository to check.
_UNCHECKED = {"export", "source", "cd", "unzip", "mkdir", "cp", "ls", "git", "tensorboard"}
_REPO_DIRS = ("configs/", "tools/", "benchmarks/", "demo/", "tests/", "docs/")


class Block(NamedTuple):
    doc: Path
    line: int
    lang: str
    text: str


class Command(NamedTuple):
    doc: Path
    line: int
    argv: List[str]

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}: {shlex.join(self.argv)}"


def _blocks(doc: Path) -> List[Block]:
    text = doc.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        indent = len(match.group(1))
        body = "\n".join(line[indent:] for line in match.group(3).splitlines())
        line = text.count("\n", 0, match.start()) + 2  # first line inside the fence
        blocks.append(Block(doc, line, match.group(2).lower(), body))
    return blocks


def _commands(block: Block) -> List[Command]:
    commands, pending, start = [], "", block.line
    for offset, raw in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        tokens = shlex.split(pending + raw, comments=True)
        pending = ""
        argv: List[str] = []
        for token in tokens + [";"]:
            if token in ("&&", "||", ";", "|"):
                if argv:
                    commands.append(Command(block.doc, start, argv))
                argv = []
            else:
                argv.append(token)
    return commands


ALL_BLOCKS = [block for doc in DOC_FILES for block in _blocks(doc)]
ALL_COMMANDS = [
    command for block in ALL_BLOCKS if block.lang in _SHELL for command in _commands(block)
]


def _make_targets() -> set:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def _console_scripts() -> Dict[str, str]:
    """setup.py's console_scripts: name -> "module:function"."""
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+)\s*=\s*([\w.]+:\w+)"', text))


def _extras() -> set:
    text = (ROOT / "setup.py").read_text()
    body = re.search(r"extras_require=\{(.*?)\n    \}", text, re.S)
    return set(re.findall(r'"([\w-]+)":', body.group(1))) if body else set()


class _ParserBuilt(BaseException):
    """Raised instead of parsing: carries the parser a script built (a BaseException, so that a
    script's ``except Exception`` does not swallow it)."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


_PARSERS: Dict[str, Optional[argparse.ArgumentParser]] = {}


def _capture_parser(key: str, run) -> Optional[argparse.ArgumentParser]:
    """Run ``run()`` until it parses its command line; the parser it built (cached by key), or
    None if it returned without parsing one."""
    if key in _PARSERS:
        return _PARSERS[key]

    def intercept(self, args=None, namespace=None):
        raise _ParserBuilt(self)

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    original = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = intercept
    parser = None
    try:
        run()
    except _ParserBuilt as built:
        parser = built.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
        sys.argv[:], sys.path[:] = saved_argv, saved_path
    _PARSERS[key] = parser
    return parser


def _script_parser(script: str) -> Optional[argparse.ArgumentParser]:
    path = ROOT / script

    def run():
        sys.argv[:] = [str(path)]
        sys.path[:0] = [str(path.parent), str(ROOT)]
        runpy.run_path(str(path), run_name="__main__")

    return _capture_parser(script, run)


def _module_parser(module: str) -> Optional[argparse.ArgumentParser]:
    def run():
        sys.argv[:] = [module]
        runpy.run_module(module, run_name="__main__", alter_sys=False)

    return _capture_parser(module, run)


def _function_parser(target: str) -> Optional[argparse.ArgumentParser]:
    module, function = target.split(":")

    def run():
        sys.argv[:] = [function]
        getattr(importlib.import_module(module), function)()

    return _capture_parser(target, run)


def _has_placeholder(args: List[str]) -> bool:
    return any(re.search(r"[<>\[\]]|\.\.\.", token) for token in args)


def _check_args(command: Command, parser: Optional[argparse.ArgumentParser], args: List[str]):
    where = str(command)
    assert parser is not None, f"{where}: the script parsed no command line with argparse"
    options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", parser.format_help()))
    for token in args:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in options, f"{where}: {flag} is not an option of {parser.prog}"
    if _has_placeholder(args):
        return  # flags checked; a template line cannot be parsed as a whole
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parsed = parser.parse_args(args)
    except SystemExit as exit_:
        assert (
            exit_.code == 0
        ), f"{where}: rejected by its parser: {stderr.getvalue().strip().splitlines()[-1:]}"
        return
    # An option written after a REMAINDER positional (KEY VALUE overrides) is silently taken as
    # an override.
    for dest, value in vars(parsed).items():
        if isinstance(value, list):
            swallowed = [v for v in value if isinstance(v, str) and v in options]
            assert not swallowed, (
                f"{where}: {swallowed} come after the '{dest}' overrides and would be read as "
                "overrides: put options first"
            )


def _check_paths(command: Command, args: List[str]):
    for token in args:
        value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        if re.search(r"[$<>*\[\]]", value) or not value.startswith(_REPO_DIRS):
            continue
        if value.startswith(("configs/", "tools/", "benchmarks/", "demo/")) or "." in value:
            assert (ROOT / value).exists(), f"{command}: {value} does not exist"


def _check_python(command: Command, args: List[str]):
    if args[:1] == ["-m"]:
        module, rest = args[1], args[2:]
        assert importlib.util.find_spec(module) is not None, f"{command}: no module {module}"
        if module == "pytest":
            for token in rest:
                if not token.startswith("-") and "/" in token:
                    assert (ROOT / token.split("::")[0]).exists(), f"{command}: no {token}"
            return
        if module.split(".")[0] != "panoptic_ext" or not rest:
            return  # another package's command, or no arguments: its presence is all we check
        _check_args(command, _module_parser(module), rest)
        return
    script, rest = args[0], args[1:]
    assert (ROOT / script).is_file(), f"{command}: {script} does not exist"
    if rest:
        _check_args(command, _script_parser(script), rest)


def _check_command(command: Command):
    argv = list(command.argv)
    while argv and _ENV_ASSIGNMENT.match(argv[0]):
        argv.pop(0)
    assert argv, f"{command}: nothing but variable assignments"
    name, args = argv[0], argv[1:]
    _check_paths(command, args)
    if name in _PYTHONS:
        _check_python(command, args)
    elif name == "make":
        targets = _make_targets()
        for token in args:
            if token.startswith("-") or _ENV_ASSIGNMENT.match(token):
                continue
            assert token in targets, f"{command}: no make target {token!r} in the Makefile"
    elif name in ("bash", "sh"):
        assert (ROOT / args[0]).is_file(), f"{command}: {args[0]} does not exist"
    elif name in _console_scripts():
        _check_args(command, _function_parser(_console_scripts()[name]), args)
    elif name == "pip":
        assert args[:1] == ["install"], f"{command}: only pip install is documented"
        for token in args[1:]:
            extras = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", token)
            if extras and extras.group(1):
                unknown = set(extras.group(1).split(",")) - _extras()
                assert not unknown, f"{command}: setup.py has no extras {sorted(unknown)}"
    else:
        assert name in _UNCHECKED, f"{command}: no check for {name!r}: add one to test_docs.py"


def test_docs_have_shell_commands():
    docs = {command.doc.name for command in ALL_COMMANDS}
    assert "README.md" in docs and len(ALL_COMMANDS) >= 30, len(ALL_COMMANDS)


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_shell_command_names_what_exists(command):
    _check_command(command)


def test_python_and_yaml_blocks_parse():
    for block in ALL_BLOCKS:
        where = f"{block.doc.relative_to(ROOT)}:{block.line}"
        if block.lang == "python":
            compile(block.text, where, "exec")
        elif block.lang in ("yaml", "yml"):
            yaml.safe_load(block.text)


def test_relative_links_lead_to_files():
    for doc in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:|#", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)}: link to missing {target}"


def test_readme_is_a_short_hub():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    first_snippet = next(b for b in ALL_BLOCKS if b.doc.name == "README.md" and b.lang == "python")
    assert first_snippet.line < 60, "the usage snippet should be on README's first screen"


def test_readme_usage_snippet_runs(monkeypatch):
    """README's first Python block, with random weights and a random image instead of the
    trained checkpoint and input.jpg."""
    snippet = next(b for b in ALL_BLOCKS if b.doc.name == "README.md" and b.lang == "python").text
    weights = 'cfg.MODEL.WEIGHTS = "output/main_job/model_final.pth"'
    image = 'cv2.imread("input.jpg")'
    assert weights in snippet and image in snippet
    snippet = snippet.replace(weights, 'cfg.MODEL.WEIGHTS = ""').replace(image, "test_image")
    rng = np.random.default_rng(0)
    namespace = {"test_image": rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)}
    monkeypatch.chdir(ROOT)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(snippet, "README.md", "exec"), namespace)
    assert tuple(namespace["panoptic_seg"].shape) == (96, 128)
    ids = set(np.unique(namespace["panoptic_seg"].numpy()).tolist()) - {0}
    assert ids == {segment["id"] for segment in namespace["segments_info"]}
