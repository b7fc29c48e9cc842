"""Every shell and Python block of README.md and docs/*.md runs as written (docs/testing.md, "Examples in the docs").

Each page's blocks are checked in order, in a scratch copy of the repository root: the checkout's files are
linked in, and `results/demo` points at a small real run made once (600 Fashion-MNIST training
images, 3 trials, one subnet fine-tuned for a few batches). In a block:

- every `autoprune ...` line is parsed by the CLI's own parser, and the paths it reads must exist, or be
  written by a block before it; a search's new `--out` must not be taken yet;
- `NAME=$(...)` lines are run by bash, and the variable holds for the rest of the page;
- a block runs for real (autoprune in this process, Python with `exec`) unless the comment
  `<!-- example: parse-only (why) -->` stands on the line before it; a parse-only Python block is compiled,
  and its `autoprune.*` calls are checked against the functions' signatures; a parse-only block's other
  programs (make, pip, ray, ...) must exist, with their targets, extras and files.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import gzip
import importlib
import importlib.metadata
import inspect
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from quick import QUICK_FLAGS

import autoprune
from autoprune.cli import _parser, main

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
VENV_BIN = Path(sys.executable).parent

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*example:\s*(?P<mode>run|parse-only)\b[^>]*-->\s*$")
SHELL, PYTHON = {"bash", "sh", "shell"}, {"python"}
ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_]\w*)=")
FILE_BLOCK = re.compile(r"^# (?P<name>[\w.-]+\.py)$")  # a Python block that is a file to save
OPERATORS = re.compile(r"^[|&;<>()]+$")


@dataclasses.dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    run: bool  # False: parse-only
    text: str

    def where(self) -> str:
        return f"{self.page}:{self.line}"


class ExampleError(AssertionError):
    pass


def blocks(text: str, page: str) -> list[Block]:
    """The shell and Python blocks of a Markdown page, each with its mode from the marker line before it."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang, start = fence["indent"], fence["lang"].lower(), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i == len(lines):
            raise ExampleError(f"{page}:{start + 1}: the block is never closed")
        i += 1
        if lang not in SHELL | PYTHON:
            continue
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        if before.strip().startswith("<!--") and "example" in before and not marker:
            raise ExampleError(f"{page}:{start}: unknown example marker {before.strip()!r}")
        found.append(Block(page, start + 1, lang, not (marker and marker["mode"] == "parse-only"), "\n".join(body) + "\n"))
    return found


def logical_lines(text: str) -> list[str]:
    """Shell lines with continuations joined; blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


class Page:
    """The state of one page's examples: its working directory, shell variables and what earlier blocks wrote."""

    def __init__(self, work: Path):
        self.work = work
        self.vars: dict[str, str] = {}
        self.written: set[Path] = set()

    # paths ---------------------------------------------------------------------------------------------
    def path(self, p: str | Path) -> Path:
        return Path(os.path.normpath(self.work / Path(p).expanduser()))

    def exists(self, p: str | Path) -> bool:
        path = self.path(p)
        return path.exists() or path in self.written or any(w in path.parents for w in self.written)

    def need(self, p: str | Path, what: str) -> None:
        if not self.exists(p):
            raise ExampleError(f"{what} {p} does not exist, and no block before this one writes it")

    def wrote(self, p: str | Path) -> None:
        self.written.add(self.path(p))

    # shell ---------------------------------------------------------------------------------------------
    def bash(self, script: str) -> str:
        done = subprocess.run(["bash", "-c", script], check=False, cwd=self.work, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **self.vars})
        if done.returncode != 0:
            raise ExampleError(f"bash failed ({done.returncode}): {script!r}\n{done.stderr}")
        return done.stdout

    def words(self, line: str) -> list[str]:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        if any(OPERATORS.match(token) for token in lexer):
            raise ExampleError(f"shell operators (pipes, redirects, lists) are not checked here: {line!r}")
        return self.bash(f"printf '%s\\0' {line}").split("\0")[:-1]  # bash's own quoting and expansion

    def assign(self, line: str, name: str) -> None:
        value = self.bash(f'{line}\nprintf %s "${name}"')
        if not value:
            raise ExampleError(f"{line!r} leaves {name} empty")
        self.vars[name] = value


def _models_file(spec: str) -> str | None:
    head = spec.split(":", 1)[0]
    return head if ":" in spec and head.endswith(".py") else None


def _data_path(spec: str) -> str | None:
    kind, _, rest = spec.partition(":")
    if kind.endswith(".py"):
        return kind  # file.py:factory
    return (rest or None) if kind in ("npz", "fashion-mnist", "cifar10", "imagefolder") else None


def _io(ns: argparse.Namespace, page: Page) -> tuple[list[tuple[str, str | Path]], list[str | Path]]:
    """What a parsed command reads (what, path) and writes."""
    get = lambda name: getattr(ns, name, None)  # dests that only some commands have
    reads, writes = [], []
    if ns.command in ("show", "report", "export"):
        reads.append(("run directory", ns.run_dir))
    if ns.command == "runs":
        reads.append(("directory", ns.results))
    if ns.command == "export":
        if page.path(ns.run_dir).exists():  # a run that only a parse-only block made has no subnets to look at
            reads.append(("subnet", Path(ns.run_dir) / "subnets" / ns.subnet))
        writes.append(get("out") or Path(ns.run_dir) / "subnets" / ns.subnet)
    if get("screenshot"):
        writes.append(ns.screenshot)
    for name, what in (("weights", "--weights"), ("init", "--init"), ("sensitivity_from", "--sensitivity-from")):
        if get(name):
            reads.append((what, get(name)))
    if get("model") and _models_file(ns.model):
        reads.append(("--model file", _models_file(ns.model)))
    if get("data") and _data_path(ns.data):
        reads.append(("--data", _data_path(ns.data)))
    space = get("space")
    shipped = Path(autoprune.__file__).parent / "search_spaces"
    if space and (space.endswith((".yaml", ".yml")) or "/" in space):
        reads.append(("--space", space))
    elif space and not (page.exists(space) or (shipped / f"{space}.yaml").exists()):
        raise ExampleError(f"--space {space}: no such file here and no shipped space of that name")
    if get("rewind") == "lottery" and get("weights"):
        point = f".epoch{ns.rewind_epoch}.pt" if get("rewind_epoch") else ".init.pt"
        reads.append(("lottery rewind point", Path(ns.weights).with_suffix(point)))
    if ns.command in ("search", "sensitivity") and get("out"):
        if get("resume"):
            reads.append(("--resume run", ns.out))
        elif page.exists(ns.out):
            raise ExampleError(f"--out {ns.out} is taken: a search needs a new directory (or --resume)")
        writes.append(ns.out)
    if ns.command == "train":
        out = Path(ns.out)
        writes += [out, out.with_suffix(".json")] + ([out.with_suffix(".init.pt")] if get("save_init") else [])
        writes += [out.with_suffix(f".epoch{ns.save_init_epoch}.pt")] if get("save_init_epoch") else []
    if ns.command == "bench":
        writes.append(get("out") or f"results/bench/{ns.study}")
    if ns.command in ("report", "export"):
        writes += [path for _, path in reads]  # report.html, exports.json
    return reads, writes


def check_autoprune(argv: list[str], page: Page, run: bool) -> None:
    """Parse with the CLI's parser, check what the command reads and writes, and run it if ``run``."""
    command, err = f"autoprune {shlex.join(argv)}", io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = _parser().parse_args(argv)
    except SystemExit:
        raise ExampleError(f"{command}: the parser refuses it: {err.getvalue().strip()}") from None
    reads, writes = _io(ns, page)
    for what, path in reads:
        page.need(path, what)
    if run:
        inside = [p for p in writes if page.path(p).resolve().is_relative_to(REPO)]
        if inside:
            raise ExampleError(f"{command} would write into the repository ({inside[0]}): mark it parse-only")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = main(argv)
        except Exception:  # noqa: BLE001  (any failure of the example, with its traceback)
            raise ExampleError(f"{command} raised:\n{traceback.format_exc(limit=-4)}") from None
        if code != 0:
            raise ExampleError(f"{command} exited {code}:\n{out.getvalue()[-3000:]}")
    for path in writes:
        page.wrote(path)


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))


def _extras() -> set[str]:
    return set(importlib.metadata.metadata("autoprune").get_all("Provides-Extra") or [])


def check_program(words: list[str], page: Page) -> None:
    """A command a parse-only block names but the test does not run: it exists, and so do its targets and files."""
    program, args = words[0], words[1:]
    if "/" in program:
        page.need(program, "program")
    elif not shutil.which(program, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"):
        raise ExampleError(f"{program}: no such program")
    name = Path(program).name
    if name == "make":
        unknown = [a for a in args if "=" not in a and not a.startswith("-") and a not in _makefile_targets()]
        if unknown:
            raise ExampleError(f"make: no target {unknown} in the Makefile")
    if name == "pip" or args[:2] == ["-m", "pip"]:
        for arg in args:
            if arg.startswith("autoprune["):
                missing = set(arg[len("autoprune["):-1].split(",")) - _extras()
                if missing:
                    raise ExampleError(f"pip: autoprune has no extra {sorted(missing)}")
    if name.startswith("python") and args and not args[0].startswith("-"):
        page.need(args[0], "script")
    if name.startswith("python") and args[:2] == ["-m", "pytest"]:
        for arg in args[2:]:
            if "/" in arg or arg.endswith(".py"):
                page.need(arg.split("::")[0], "test path")
    for arg in args:
        if arg.startswith("sqlite:///"):
            page.need(arg.removeprefix("sqlite:///"), "database")


def check_shell(block: Block, page: Page) -> None:
    for line in logical_lines(block.text):
        assignment = ASSIGNMENT.match(line)
        if assignment:
            page.assign(line, assignment["name"])
            continue
        words = page.words(line)
        if words[0] == "autoprune":
            check_autoprune(words[1:], page, block.run)
        elif block.run:
            raise ExampleError(f"{words[0]}: only autoprune commands and assignments run here; mark the block parse-only")
        else:
            check_program(words, page)


def _resolve(node: ast.expr) -> object | None:
    """The object an ``autoprune.a.b`` expression names, or None for anything else."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not (isinstance(node, ast.Name) and node.id == "autoprune"):
        return None
    obj, path = autoprune, "autoprune"
    for name in reversed(names):
        if not hasattr(obj, name):
            try:
                obj = importlib.import_module(f"{path}.{name}")
            except ImportError:
                raise ExampleError(f"{path} has no {name}") from None
        else:
            obj = getattr(obj, name)
        path = f"{path}.{name}"
    return obj


def _search_options() -> set[str]:
    search = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["search"]
    return {a.dest for a in search._actions if a.option_strings}


def check_python_calls(tree: ast.AST) -> None:
    """Each ``autoprune.*(...)`` call binds to the function's signature; ``autoprune.search``'s options are the
    search command's options (the API takes the same options as keyword arguments)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        obj = _resolve(node.func)
        if obj is None or not callable(obj):
            continue
        keywords = [k.arg for k in node.keywords if k.arg]
        try:
            inspect.signature(obj).bind(*[None] * len(node.args), **dict.fromkeys(keywords))
        except TypeError as exc:
            raise ExampleError(f"{ast.unparse(node.func)}(...): {exc}") from None
        if obj is autoprune.search:
            unknown = set(keywords) - _search_options() - set(inspect.signature(obj).parameters)
            if unknown:
                raise ExampleError(f"autoprune.search has no option {sorted(unknown)}")


def check_python(block: Block, page: Page) -> None:
    tree = compile(block.text, block.where(), "exec", ast.PyCF_ONLY_AST)
    check_python_calls(tree)
    first = block.text.splitlines()[0].strip()
    if FILE_BLOCK.match(first):
        name = FILE_BLOCK.match(first)["name"]
        (page.work / name).write_text(block.text)
        page.wrote(name)
    if block.run:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(tree, block.where(), "exec"), {"__name__": "__main__"})  # noqa: S102
        except Exception:  # noqa: BLE001  (any failure of the example, with its traceback)
            raise ExampleError(traceback.format_exc(limit=-4)) from None


def check_page(page_path: Path, work: Path) -> int:
    """Check every block of one page in ``work``; the number of blocks checked."""
    page, found = Page(work), blocks(page_path.read_text(), page_path.relative_to(REPO).as_posix())
    for block in found:
        try:
            (check_shell if block.lang in SHELL else check_python)(block, page)
        except ExampleError as exc:
            raise ExampleError(f"{block.where()} ({'run' if block.run else 'parse-only'}): {exc}") from None
    return len(found)


# the demo run --------------------------------------------------------------------------------------------

def _idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(FMNIST / name) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _one_pass(fn, device, **_) -> float:
    """One timed forward pass instead of warm-ups and repeats: the examples' latencies are not under test."""
    tic = time.perf_counter()
    fn()
    return (time.perf_counter() - tic) * 1000.0


@contextlib.contextmanager
def _quick_timing():
    """Every autoprune module's ``time_forward``, the one clock of latencies, times a single pass."""
    import autoprune.export  # noqa: F401  (it holds a time_forward of its own)

    with pytest.MonkeyPatch.context() as mp:
        for module in [m for n, m in list(sys.modules.items()) if n.startswith("autoprune") and m is not None]:
            if getattr(module, "time_forward", None) is not None:
                mp.setattr(module, "time_forward", _one_pass)
        yield


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, one_thread) -> Path:
    """A real `autoprune search` run, as `make demo` makes, on 600 training images with 3 trials."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():  # `make test` installs it; CI must have it
        missing = "Fashion-MNIST is not installed (sudo apt-get install -y dataset-fashion-mnist)"
        pytest.fail(missing) if os.environ.get("CI") else pytest.skip(missing)
    with _quick_timing():
        rng = np.random.default_rng(0)
        x, y = _idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), _idx("train-labels-idx1-ubyte.gz", 8)
        xt, yt = _idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), _idx("t10k-labels-idx1-ubyte.gz", 8)
        train, test = rng.choice(len(x), 600, replace=False), rng.choice(len(xt), 100, replace=False)
        root = tmp_path_factory.mktemp("demo")
        np.savez(root / "fmnist.npz", x_train=x[train], y_train=y[train], x_test=xt[test], y_test=yt[test])
        weights = Path(autoprune.__file__).parent / "checkpoints" / "resnet20_fashion-mnist.pt"
        run = root / "demo-fixture"
        code = main(["search", "--data", f"npz:{root / 'fmnist.npz'}", "--weights", str(weights), "--budget", "50%flops",
                     "--strategy", "random", "--trials", "3", "--holdout", "100", "--score-images", "100",
                     "--batch-size", "64", "--calib-batches", "1", "--finetune-top", "1", "--finetune-epochs", "0.05",
                     *QUICK_FLAGS, "--out", str(run), "--quiet"])
    assert code == 0 and list(run.glob("subnets/*/spec.json"))
    return run


@pytest.fixture
def work(tmp_path, demo_run, monkeypatch) -> Path:
    """A scratch repository root: the checkout's files linked in, results/demo the demo run; the cwd."""
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in (".git", "results"):
            (work / entry.name).symlink_to(entry)
    for entry in (REPO / "results").iterdir():
        if not entry.name.startswith("demo"):
            (work / "results" / entry.name).symlink_to(entry)
    (work / "results" / "demo").symlink_to(demo_run)
    monkeypatch.chdir(work)
    with _quick_timing():
        yield work


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_examples_run_as_written(page, work):
    check_page(page, work)


def test_spec_json_fields_are_documented(demo_run):
    specs = (REPO / "docs" / "specs.md").read_text()
    fields = list(json.loads(next(demo_run.glob("subnets/*/spec.json")).read_text()))
    assert fields and [f for f in fields if f"`{f}`" not in specs] == []


def test_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 16 * 1024
    assert [p.name for p in PAGES[1:] if f"(docs/{p.name}" not in readme] == []


# the checker catches what it should -----------------------------------------------------------------------

def _check(markdown: str, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(markdown)
    found = Page(tmp_path)
    for block in blocks(markdown, "page.md"):
        (check_shell if block.lang in SHELL else check_python)(block, found)


PARSE = "<!-- example: parse-only (a test) -->\n"


@pytest.mark.parametrize(("markdown", "says"), [
    (PARSE + "```sh\nautoprune search --budget 50%flops --no-such-option\n```\n", "unrecognized arguments"),
    (PARSE + "```sh\nautoprune search --strategy annealing\n```\n", "invalid choice"),
    (PARSE + "```sh\nautoprune show results/missing\n```\n", "results/missing does not exist"),
    (PARSE + "```sh\nautoprune search --weights missing.pt\n```\n", "missing.pt does not exist"),
    (PARSE + "```sh\nautoprune search --model nonet.py:build\n```\n", "nonet.py does not exist"),
    (PARSE + "```sh\nautoprune search --out r1\nautoprune search --out r1\n```\n", "--out r1 is taken"),
    (PARSE + "```sh\nautoprune search --out r2 --resume\n```\n", "r2 does not exist"),
    (PARSE + "```sh\nautoprune search --space no-such-space\n```\n", "no shipped space"),
    (PARSE + "```sh\nautoprune train --out w.pt\nautoprune search --weights w.pt --rewind lottery\n```\n", "w.init.pt does not exist"),
    (PARSE + "```sh\nmake no-such-target\n```\n", "no target"),
    (PARSE + "```sh\npip install 'autoprune[no-such-extra]'\n```\n", "no extra"),
    (PARSE + "```sh\nno-such-program --help\n```\n", "no such program"),
    ("```sh\nmake demo\n```\n", "mark the block parse-only"),
    ("```sh\nautoprune runs | grep complete\n```\n", "shell operators"),
    (PARSE + "```python\nimport autoprune\nautoprune.search('resnet20', budgett='50%flops')\n```\n", "no option ['budgett']"),
    (PARSE + "```python\nimport autoprune\nautoprune.load_subnet('a', 'b', 'c')\n```\n", "too many positional"),
    ("```python\nraise RuntimeError('the example broke')\n```\n", "the example broke"),
    ("<!-- example: maybe -->\n```sh\nautoprune runs\n```\n", "unknown example marker"),
])
def test_the_checker_catches(markdown, says, tmp_path):
    with pytest.raises(ExampleError, match=re.escape(says)):
        _check(markdown, tmp_path)


def test_the_checker_accepts_what_earlier_blocks_write(tmp_path):
    _check(PARSE + "```sh\nautoprune train --out w.pt --save-init\nautoprune search --weights w.pt --rewind lottery "
           "--out r1\nautoprune search --out r1 --resume\n```\n"
           "```python\n# net.py\ndef build():\n    pass\n```\n" + PARSE + "```sh\nautoprune search --model net.py:build\n```\n",
           tmp_path)
    assert (tmp_path / "net.py").exists()
