"""docs/design.md, "Layers", checked as written there: every row of its table (what a layer may import, what it never
imports, which libraries only lazily, the backends' folders apart, no build module at run time) against the imports
read from the source with ``ast``, at module level and inside functions.

The table is the specification: change a row and this test checks the new row; a row or phrase it cannot read is a
failure, never a skip. Rows are by folder, so a module moved within a layer's folder needs no change here.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "diffship"
"""The installed package; the table's paths and names are inside it (``engines`` is ``diffship.engines``)."""
SECTION = "## Layers"
COLUMNS = ["layer", "what it holds", "may import", "never imports"]
CITE = 'docs/design.md, "Layers"'

# ----------------------------------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class Import:
    """One name a module imports, where, and how: ``lazy`` inside a function or for type checking only."""

    module: str
    path: str
    line: int
    target: str
    lazy: bool
    typing_only: bool


class _ImportReader(ast.NodeVisitor):
    """Every import of one module: statements, and ``require("x")`` / ``importlib.import_module("x")`` calls."""

    LOADERS = {"require", "import_module"}

    def __init__(self, module: str, path: str, is_package: bool, known: set[str]) -> None:
        self.module, self.path, self.known = module, path, known
        self.package = module if is_package else module.rpartition(".")[0]
        self.lazy = self.typing_only = False
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str) -> None:
        target = target.removeprefix(PACKAGE + ".")  # the table names the layers inside the package
        self.found.append(Import(self.module, self.path, getattr(node, "lineno", 0), target, self.lazy,
                                 self.typing_only))

    def _nested(self, node: ast.AST, lazy: bool, typing_only: bool = False) -> None:
        saved = self.lazy, self.typing_only
        self.lazy, self.typing_only = self.lazy or lazy, self.typing_only or typing_only
        self.generic_visit(node)
        self.lazy, self.typing_only = saved

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:  # noqa: N802 - ast's visitor names
        self._nested(node, lazy=True)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]  # noqa: N815
    visit_Lambda = visit_FunctionDef  # type: ignore[assignment]  # noqa: N815

    def visit_If(self, node: ast.If) -> None:  # noqa: N802
        if "TYPE_CHECKING" not in ast.unparse(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        for statement in node.body:
            self._nested(ast.Module(body=[statement], type_ignores=[]), lazy=True, typing_only=True)
        for statement in node.orelse:
            self.visit(statement)

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        if base == "__future__":
            return
        self._add(node, base)
        for alias in node.names:
            if f"{base}.{alias.name}" in self.known:
                self._add(node, f"{base}.{alias.name}")

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        first = node.args[0] if node.args else None
        if name in self.LOADERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
            self._add(node, first.value)
        self.generic_visit(node)


def module_name(relative: PurePosixPath) -> str:
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass
class Source:
    """The modules under ``root`` that the table's rows name, and what each imports."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)
    """module -> its path relative to the root (posix)."""
    imports: dict[str, list[Import]] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path, row_paths: Iterable[str]) -> Source:
        source = cls(root)
        files: list[PurePosixPath] = []
        for row_path in row_paths:
            where = root / row_path
            if row_path.endswith("/"):
                files += [PurePosixPath(p.relative_to(root).as_posix()) for p in sorted(where.rglob("*.py"))
                          if "__pycache__" not in p.parts]
            elif where.is_file():
                files.append(PurePosixPath(row_path))
        source.paths = {module_name(f): f.as_posix() for f in files}
        known = set(source.paths)
        for module, relative in source.paths.items():
            reader = _ImportReader(module, relative, relative.endswith("__init__.py"), known)
            reader.visit(ast.parse((root / relative).read_text(encoding="utf-8"), filename=relative))
            source.imports[module] = reader.found
        return source

    def project_target(self, target: str) -> str | None:
        """The project module an import loads (``from a.b import name``: ``a.b``), or None for a library."""
        while target and target not in self.paths:
            target = target.rpartition(".")[0]
        return target or None

    def loaded(self, module: str) -> Iterator[str]:
        """The project modules importing ``module`` loads besides itself (its parent packages)."""
        parts = module.split(".")
        for end in range(1, len(parts)):
            if ".".join(parts[:end]) in self.paths:
                yield ".".join(parts[:end])


def is_stdlib(target: str) -> bool:
    return target.split(".")[0] in sys.stdlib_module_names


def covers(name: str, target: str) -> bool:
    """``engines`` covers ``engines`` and ``engines.ort.engine``, not ``engines_extra``."""
    return target == name or target.startswith(name + ".")


# ------------------------------------------------------------------------------------------------------ the table


class TableError(AssertionError):
    """A part of the Layers section this test cannot read (so it cannot check it)."""


NAMES = re.compile(r"^(?P<names>`[^`]+`(?:(?:,\s*|\s+and\s+|\s+or\s+|\s*/\s*)`[^`]+`)*)\s*(?P<rule>.*)$")
TICKED = re.compile(r"`([^`]+)`")
RULES = {"": "anywhere", "lazily": "lazily", "only lazily": "lazily", "lazily, except in build modules":
         "lazily_except_build", "only in build modules": "build_only", "run-time modules only": "runtime_only"}
"""The phrases a "may import" item may end with, and what each asks; "only in `path`, ..." besides."""
BACKENDS = re.compile(r"^another backend \(every folder under `(?P<root>[^`]+/)` but the shared (?P<shared>.+) is a "
                      r"backend\)$")
BUILD = re.compile(r"\*\*Build modules\*\* are (?P<patterns>.+?), every `(?P<root>[^`]+/)` module that imports "
                   r"(?P<libraries>.+?), and every `(?P=root)` module that imports a build module;")


@dataclass(frozen=True)
class Allowance:
    """One item of a "may import" cell: names (none: everything) and where or how they may be imported."""

    names: tuple[str, ...]
    rule: str
    only_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    paths: tuple[str, ...]
    may: tuple[Allowance, ...]
    never: tuple[str, ...]
    never_other_layers: bool = False
    never_build: bool = False
    backends: tuple[str, tuple[str, ...]] | None = None
    """(the folder whose subfolders are backends, the shared subfolders) for "another backend"."""

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(path.rstrip("/").removesuffix(".py").replace("/", ".") for path in self.paths)

    @property
    def label(self) -> str:
        return ", ".join(self.paths)


@dataclass(frozen=True)
class BuildRule:
    patterns: tuple[str, ...]
    root: str
    libraries: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    rows: tuple[Row, ...]
    build: BuildRule


def ticked(text: str) -> tuple[str, ...]:
    return tuple(TICKED.findall(text))


def split_names(item: str, where: str) -> tuple[tuple[str, ...], str]:
    found = NAMES.match(item)
    if found is None:
        raise TableError(f"{where}: {item!r} does not start with names in backticks")
    return ticked(found["names"]), found["rule"].strip()


def read_may(cell: str, where: str) -> tuple[Allowance, ...]:
    allowances = []
    for item in (part.strip() for part in cell.split(";")):
        if item == "everything":
            allowances.append(Allowance((), "anywhere"))
            continue
        names, phrase = split_names(item, where)
        if phrase.startswith("only in `"):
            paths = ticked(phrase)
            if phrase != "only in " + ", ".join(f"`{p}`" for p in paths):
                raise TableError(f"{where}: cannot read {phrase!r} (write: only in `path`, `path`)")
            allowances.append(Allowance(names, "only_in", paths))
        elif phrase in RULES:
            allowances.append(Allowance(names, RULES[phrase]))
        else:
            raise TableError(f"{where}: {item!r} ends with {phrase!r}, which is none of {sorted(RULES)} or only in "
                             "`path`")
    return tuple(allowances)


def read_never(cell: str, where: str) -> dict[str, object]:
    never: list[str] = []
    found: dict[str, object] = {"never": ()}
    for item in (part.strip() for part in cell.split(";")):
        if item == "—":
            continue
        if item == "any other layer":
            found["never_other_layers"] = True
        elif item == "any build module":
            found["never_build"] = True
        elif (backends := BACKENDS.match(item)) is not None:
            found["backends"] = (backends["root"], ticked(backends["shared"]))
        else:
            names, phrase = split_names(item, where)
            if phrase:
                raise TableError(f"{where}: {item!r}: a never-imported name takes no condition ({phrase!r})")
            never += names
    found["never"] = tuple(never)
    return found


def read_table(text: str) -> Table:
    if SECTION + "\n" not in text:
        raise TableError(f"docs/design.md has no {SECTION!r} section")
    section = text.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    if len(lines) < 3:
        raise TableError(f"no table in {SECTION!r}")
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    if header != COLUMNS:
        raise TableError(f"the table's columns are {header}, this test reads {COLUMNS}")
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        paths = ticked(cells[0])
        if len(cells) != len(COLUMNS) or not paths or any(not (p.endswith("/") or p.endswith(".py")) for p in paths):
            raise TableError(f"cannot read the row {line!r}: a layer is `folder/` or `module.py`, four cells")
        rows.append(Row(paths, read_may(cells[2], paths[0]), **read_never(cells[3], paths[0])))  # type: ignore[arg-type]
    build = BUILD.search(" ".join(section.split()))
    if build is None:
        raise TableError("no sentence '**Build modules** are ..., every `engines/` module that imports ..., and every "
                         "`engines/` module that imports a build module;' under the table")
    return Table(tuple(rows), BuildRule(ticked(build["patterns"]), build["root"], ticked(build["libraries"])))


# ------------------------------------------------------------------------------------------------------ the checks


def path_matches(path: str, pattern: str) -> bool:
    """``engines/*/build.py`` matches ``engines/ort/build.py``, not ``engines/a/b/build.py``."""
    pure = PurePosixPath(path)
    return len(pure.parts) == len(PurePosixPath(pattern).parts) and pure.match(pattern)


def build_modules(source: Source, rule: BuildRule) -> set[str]:
    """The build modules, as the sentence under the table defines them (type-checking imports load nothing)."""
    inside = {m for m, p in source.paths.items() if p.startswith(rule.root)}
    found = {m for m in inside if any(path_matches(source.paths[m], pattern) for pattern in rule.patterns)}
    found |= {m for m in inside if any(covers(name, i.target) for i in source.imports[m] if not i.typing_only
                                       for name in rule.libraries)}
    while True:
        more = {m for m in inside - found if any(source.project_target(i.target) in found
                                                 for i in source.imports[m] if not i.typing_only)}
        if not more:
            return found
        found |= more


def row_of(table: Table, source: Source, module: str) -> Row | None:
    return next((row for row in table.rows if any(covers(p, module) for p in row.packages)), None)


def allowance_for(row: Row, target: str) -> Allowance | None:
    """The item naming ``target`` (the longest name wins), else "everything", else None."""
    named = [(len(n), a) for a in row.may for n in a.names if covers(n, target)]
    if named:
        return max(named, key=lambda pair: pair[0])[1]
    return next((a for a in row.may if not a.names), None)


def may_import_violations(table: Table, source: Source) -> list[str]:
    build = build_modules(source, table.build)
    problems = []
    for row in table.rows:
        for module in (m for m in source.paths if row_of(table, source, m) is row):
            for found in source.imports[module]:
                target = found.target
                if is_stdlib(target) or any(covers(p, target) for p in row.packages):
                    continue
                allowance = allowance_for(row, target)
                where = f"{found.path}:{found.line} imports {target}"
                project = source.project_target(target)
                if allowance is None:
                    problems.append(f"{where}: not under `{row.label}`'s \"may import\"")
                elif allowance.rule == "lazily" and not found.lazy:
                    problems.append(f"{where} at module level: `{row.label}` imports it only lazily")
                elif allowance.rule == "lazily_except_build" and not found.lazy and module not in build:
                    problems.append(f"{where} at module level in a run-time module: only lazily")
                elif allowance.rule == "build_only" and module not in build:
                    problems.append(f"{where}: only build modules may")
                elif allowance.rule == "runtime_only" and project in build:
                    problems.append(f"{where}, a build module: `{row.label}` imports run-time modules only")
                elif allowance.rule == "only_in" and found.path not in allowance.only_in:
                    problems.append(f"{where}: only {', '.join(allowance.only_in)} may")
    return problems


def reached_build_module(source: Source, build: set[str], start: str) -> list[str] | None:
    """The chain of imports from ``start`` (and its parent packages, which importing it runs) to a build module
    (type-checking imports load nothing), or None."""
    chains = {start: [start], **{parent: [start, parent] for parent in source.loaded(start)}}
    queue = list(chains)
    while queue:
        module = queue.pop(0)
        for found in source.imports.get(module, []):
            project = source.project_target(found.target)
            if found.typing_only or project is None:
                continue
            for loaded in (*source.loaded(project), project):
                if loaded not in chains:
                    chains[loaded] = [*chains[module], loaded]
                    if loaded in build:
                        return chains[loaded]
                    queue.append(loaded)
    return None


def never_import_violations(table: Table, source: Source) -> list[str]:
    build = build_modules(source, table.build)
    every_layer = {p for row in table.rows for p in row.packages}
    problems = []
    for row in table.rows:
        modules = [m for m in source.paths if row_of(table, source, m) is row]
        others = every_layer - set(row.packages) if row.never_other_layers else set()
        for module in modules:
            for found in source.imports[module]:
                named = [n for n in (*row.never, *others) if covers(n, found.target)]
                if named:
                    problems.append(f"{found.path}:{found.line} imports {found.target}: `{row.label}` never imports "
                                    f"{named[0]}")
                elif row.never_build and source.project_target(found.target) in build:
                    problems.append(f"{found.path}:{found.line} imports build module {found.target}")
            chain = reached_build_module(source, build, module) if row.never_build else None
            if chain is not None and len(chain) > 2:  # two: a direct import, reported above
                problems.append(f"{source.paths[module]} reaches build module {chain[-1]}: {' -> '.join(chain)}")
    return problems


def backend_of(path: str, root: str, shared: tuple[str, ...]) -> str | None:
    """The backend folder ``path`` lies in (a folder under ``root`` but the shared ones), or None."""
    if not path.startswith(root) or path.count("/") <= root.count("/"):
        return None
    folder = root + path[len(root):].split("/")[0] + "/"
    return None if folder in shared else folder


def backend_violations(table: Table, source: Source) -> list[str]:
    problems = []
    for row in table.rows:
        if row.backends is None:
            continue
        root, shared = row.backends
        for module, path in source.paths.items():
            mine = backend_of(path, root, shared)
            for found in source.imports[module] if mine else []:
                project = source.project_target(found.target)
                theirs = backend_of(source.paths[project], root, shared) if project else None
                if theirs not in (None, mine):
                    problems.append(f"{path}:{found.line} imports {found.target}: backend {mine} imports backend "
                                    f"{theirs} (shared code goes to {', '.join(shared)})")
    return problems


def table_problems(table: Table, source: Source, installed: Iterable[str]) -> list[str]:
    problems = []
    for row in table.rows:
        if not any(row_of(table, source, m) is row for m in source.paths):
            problems.append(f"the row `{row.label}` covers no module")
        allowed = {n for a in row.may for n in a.names}
        if both := allowed & set(row.never):
            problems.append(f"`{row.label}` both may and never import {sorted(both)}")
        for allowance in row.may:
            problems += [f"`{row.label}`: only in `{p}`, which is not a module" for p in allowance.only_in
                         if p not in source.paths.values()]
        if row.backends is not None:
            problems += [f"`{row.label}`: the shared backend folder `{s}` is not under `{row.backends[0]}`"
                         for s in row.backends[1] if not s.startswith(row.backends[0])]
    layers = {p for row in table.rows for p in row.packages}
    problems += [f"{name} is installed (pyproject.toml) but no row of the table covers it" for name in installed
                 if name not in layers]
    if not build_modules(source, table.build):
        problems.append("the build-module sentence names no module")
    return problems


def installed_packages(root: Path) -> list[str]:
    """What ``pyproject.toml`` installs inside the package: every subpackage and module of each package its
    ``include`` globs name (nothing else may be a top-level name: ``test_the_package_is_the_only_installed_name``)."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    listed = re.search(r"^include = \[(.*?)\]", text, re.MULTILINE)
    assert listed is not None, "pyproject.toml has no include list"
    names = []
    for package in (name.rstrip("*") for name in re.findall(r'"([^"]+)"', listed[1])):
        folder = root / package
        names += sorted(p.name for p in folder.iterdir() if (p / "__init__.py").is_file())
        names += sorted(p.stem for p in folder.glob("*.py") if p.name != "__init__.py")
    return names


# ------------------------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def checked() -> tuple[Table, Source]:
    table = read_table((ROOT / "docs" / "design.md").read_text(encoding="utf-8"))
    return table, Source.read(ROOT / PACKAGE, (path for row in table.rows for path in row.paths))


def test_the_layers_table_is_read_whole_and_covers_every_installed_package(checked: tuple[Table, Source]) -> None:
    table, source = checked
    assert [row.label for row in table.rows][:3] == ["core/", "engines/", "runtime/"]
    problems = table_problems(table, source, installed_packages(ROOT))
    assert not problems, f"{CITE}:\n" + "\n".join(problems)


def test_each_layer_imports_only_what_its_row_allows(checked: tuple[Table, Source]) -> None:
    problems = may_import_violations(*checked)
    assert not problems, f"{CITE}, \"may import\":\n" + "\n".join(problems)


def test_no_layer_imports_what_its_row_forbids(checked: tuple[Table, Source]) -> None:
    problems = never_import_violations(*checked)
    assert not problems, f"{CITE}, \"never imports\":\n" + "\n".join(problems)


def test_backends_never_import_each_other(checked: tuple[Table, Source]) -> None:
    problems = backend_violations(*checked)
    assert not problems, f"{CITE}, \"another backend\":\n" + "\n".join(problems)


def test_build_modules_are_the_builders_and_what_imports_onnx(checked: tuple[Table, Source]) -> None:
    table, source = checked
    build = build_modules(source, table.build)
    assert {"engines.build", "engines.ort.build", "engines.tensorrt.build", "engines.ort.quantize"} <= build
    # What a generation opens is run time (tests/runtime/test_pipeline_fakes.py asserts it at run time too).
    assert not build & {"engines.backend", "engines.base", "engines.ort", "engines.ort.engine", "engines.tensorrt",
                        "engines.tensorrt.engine"}


SYNTHETIC = {
    "core/__init__.py": "import engines\n",
    "engines/__init__.py": "",
    "engines/base.py": "def save():\n    import onnx\n",
    "engines/onnx/__init__.py": "",
    "engines/onnx/graphs.py": "from core.errors import require\n\ndef load():\n    return require('onnx', 'x')\n",
    "engines/onnx/shared.py": "",
    "engines/ort/__init__.py": "import onnxruntime\nfrom engines.onnx import shared\n",
    "engines/ort/session.py": "def run():\n    import onnxruntime\n",
    "engines/ort/build.py": "import onnxruntime\nfrom engines.onnx.graphs import load\n",
    "engines/tensorrt/__init__.py": "from ..ort import session\nfrom engines.onnx import shared\n",
    "runtime/__init__.py": "from engines import base\n",
    "runtime/text/__init__.py": "import torch\nimport requests\n",
    "runtime/lazy.py": "def f():\n    import engines.ort.build\n",
    "runtime/reach.py": "import serve.app\n",
    "serve/__init__.py": "",
    "serve/app.py": "import ray\nfrom .fields import take\n",
    "serve/fields.py": "from runtime import lazy\n",
    "serve/ray_app.py": "import ray\n",
    "exporter/__init__.py": "import torch\n",
    "bench/__init__.py": "import cli\n",
    "cli.py": "import click\nimport torch\n",
    "commands/__init__.py": "def run():\n    import bench\n",
}
"""A tree that breaks each kind of row once (and keeps it where the table allows it)."""


def test_the_checks_find_each_kind_of_violation_in_a_tree_that_has_them(tmp_path: Path) -> None:
    for relative, text in SYNTHETIC.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    table = read_table((ROOT / "docs" / "design.md").read_text(encoding="utf-8"))
    source = Source.read(tmp_path, (path for row in table.rows for path in row.paths))
    assert build_modules(source, table.build) == {"engines.base", "engines.onnx.graphs", "engines.ort.build"}
    may = may_import_violations(table, source)
    never = never_import_violations(table, source)
    assert may == [
        "core/__init__.py:1 imports engines: not under `core/`'s \"may import\"",
        "engines/ort/__init__.py:1 imports onnxruntime at module level in a run-time module: only lazily",
        "runtime/__init__.py:1 imports engines.base, a build module: `runtime/` imports run-time modules only",
        "runtime/lazy.py:2 imports engines.ort.build, a build module: `runtime/` imports run-time modules only",
        "runtime/reach.py:1 imports serve.app: not under `runtime/`'s \"may import\"",
        "runtime/text/__init__.py:1 imports torch: not under `runtime/`'s \"may import\"",
        "runtime/text/__init__.py:2 imports requests: not under `runtime/`'s \"may import\"",
        "serve/app.py:1 imports ray: only serve/ray_app.py may",
        "cli.py:2 imports torch at module level: `cli.py, __main__.py, commands/` imports it only lazily",
    ]
    assert never == [
        "core/__init__.py:1 imports engines: `core/` never imports engines",
        "runtime/__init__.py:1 imports build module engines.base",
        "runtime/lazy.py:2 imports build module engines.ort.build",
        "runtime/reach.py:1 imports serve.app: `runtime/` never imports serve",
        "runtime/reach.py reaches build module engines.base: runtime.reach -> runtime -> engines.base",
        "runtime/text/__init__.py:1 imports torch: `runtime/` never imports torch",
        "runtime/text/__init__.py reaches build module engines.base: runtime.text -> runtime -> engines.base",
        "serve/app.py reaches build module engines.base: serve.app -> serve.fields -> runtime -> engines.base",
        "serve/fields.py reaches build module engines.base: serve.fields -> runtime -> engines.base",
        "bench/__init__.py:1 imports cli: `bench/` never imports cli",
    ]
    assert backend_violations(table, source) == [
        "engines/tensorrt/__init__.py:1 imports engines.ort: backend engines/tensorrt/ imports backend engines/ort/ "
        "(shared code goes to engines/onnx/)",
        "engines/tensorrt/__init__.py:1 imports engines.ort.session: backend engines/tensorrt/ imports backend "
        "engines/ort/ (shared code goes to engines/onnx/)"]


@pytest.mark.parametrize("old,new", [
    ("lazily, except in build modules", "lazily where it fits"),
    ("| never imports |", "| never loads |"),
    ("**Build modules** are", "Build modules are"),
    ("but the shared `engines/onnx/` is a backend", "but `engines/onnx/`"),
])
def test_a_table_this_test_cannot_read_is_a_failure(old: str, new: str) -> None:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert old in text
    with pytest.raises(TableError):
        read_table(text.replace(old, new, 1))
