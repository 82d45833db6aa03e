"""The import contract of the layered layout (README "Layout"), checked on the source with ``ast``.

- no cycle between packages (``r2m.<package>``), none between modules at import time;
- no upward import: a module imports r2m modules of its own layer or of a lower one (``LAYERS``);
- no file over 600 lines, no function over 60 (``GRANDFATHERED``: the sizes still to be cut, which may shrink only);
- every function-local import of an r2m module, or of a heavy optional dependency, is marked ``# heavy: lazy``;
- one name, one home: no compatibility or re-export-only module in r2m (a body of imports, ``__all__`` and a
  docstring; a package ``__init__`` that is a docstring only is fine), no star import, no ``# noqa: F401``
  re-export, and no PEP 562 ``__getattr__`` table except r2m/__init__.py's lazy exports (:func:`reexports`);
- the benchmark package ``r2m_bench`` is the top layer: the same rules hold in it, and nothing in r2m imports it.

Each rule is also run on a planted violation (a tmp tree), so that the failure mode is tested too.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module's layer is that of the longest prefix of its name listed here.
LAYERS = [
    ("base", ["r2m.errors", "r2m.utils", "r2m.fileio"]),
    ("config", ["r2m.config"]),
    ("runtime", ["r2m.runtime"]),
    ("core", ["r2m.core"]),
    ("data", ["r2m.data", "r2m.world"]),
    ("models", ["r2m.models"]),
    ("experience", ["r2m.experience"]),
    ("eval", ["r2m.eval"]),
    ("updates", ["r2m.updates"]),
    ("ser", ["r2m.ser"]),
    ("reports", ["r2m.reports"]),
    ("integrations", ["r2m.integrations"]),
    ("recipes", ["r2m.recipes"]),
    ("api", ["r2m.api"]),
    ("cli", ["r2m.cli", "r2m.__main__", "r2m"]),
    ("bench", ["r2m_bench"]),
]
TOP = ("r2m", "r2m_bench")
"""The packages checked (folders under the root)."""
LAZY_EXPORTS = "r2m"
"""The one module allowed a PEP 562 ``__getattr__`` export table (``import r2m`` stays light)."""
HEAVY = {"vllm", "deepspeed", "wandb", "matplotlib", "trl", "peft"}
"""Optional or slow-to-import dependencies, imported inside the functions that need them (peft: ~2 s)."""
MARK = "# heavy: lazy"
MAX_FILE, MAX_FUNCTION = 600, 60
GRANDFATHERED: dict[str, int] = {}
"""Sizes still over the limits, as ceilings (file path, or path:function -> lines): they may only shrink."""


class Import(NamedTuple):
    module: str  # the importing module
    target: str  # the imported r2m module (or the heavy dependency)
    line: int
    local: bool  # inside a function
    typing_only: bool  # under ``if TYPE_CHECKING:``
    marked: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, layer = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    return layer


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _resolve(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path, known: set[str]) -> list[Import]:
    """The r2m (and heavy) imports of one file; ``from pkg import mod`` names the submodule when it is one."""
    src = path.read_text()
    lines, tree, module = src.splitlines(), ast.parse(src), module_name(path, root)
    local, typing = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(node))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing.update(id(n) for b in node.body for n in ast.walk(b))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, path.name == "__init__.py")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] in HEAVY | set(TOP):
                out.append(Import(module, t, node.lineno, id(node) in local, id(node) in typing,
                                  MARK in lines[node.end_lineno - 1]))
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _is_all(node: ast.stmt) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and \
        all(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)


def reexports(rel: str, module: str, text: str) -> list[str]:
    """A name with a second import path in the library: a re-export-only (compatibility) module, a star import, an
    import kept only to be re-exported (``# noqa: F401``), a PEP 562 ``__getattr__`` table outside r2m/__init__.py."""
    if module.split(".")[0] != "r2m":
        return []
    tree, lines, found = ast.parse(text), text.splitlines(), []
    body = [n for n in tree.body if not _is_docstring(n)
            and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body) and \
            all(isinstance(n, (ast.Import, ast.ImportFrom)) or _is_all(n) for n in body):
        found.append(f"{rel}: a re-export-only module (imports, __all__ and a docstring): import the names from "
                     "their homes and delete it")
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if any(a.name == "*" for a in node.names):
            found.append(f"{rel}:{node.lineno}: star import from {node.module}: import each name from its home")
        if re.search(r"#\s*noqa\b[^#]*F401", "\n".join(lines[node.lineno - 1: node.end_lineno])):
            found.append(f"{rel}:{node.lineno}: an import kept for re-export (# noqa: F401): a name has one home")
    if module != LAZY_EXPORTS and any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
        found.append(f"{rel}: a PEP 562 __getattr__ export table (only r2m/__init__.py has one)")
    imported = {a.asname or a.name.split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    for node in (n for n in tree.body if _is_all(n) and module != LAZY_EXPORTS):
        listed = {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        for name in sorted(listed & imported):
            found.append(f"{rel}:{node.lineno}: __all__ lists {name}, imported from elsewhere (a re-export)")
    return found


def violations(root: Path, grandfathered: dict[str, int] = GRANDFATHERED) -> list[str]:
    """Every breach of the contract in the package trees under ``root`` (the folder holding ``r2m/``)."""
    files = sorted(f for top in TOP for f in (root / top).rglob("*.py"))
    known = {module_name(f, root) for f in files}
    found: list[str] = []
    pkg_graph: dict[str, set[str]] = {}
    mod_graph: dict[str, set[str]] = {}
    for f in files:
        rel = f.relative_to(root).as_posix()
        text = f.read_text()
        n_lines = len(text.splitlines())
        if n_lines > max(MAX_FILE, grandfathered.get(rel, 0)):
            found.append(f"{rel}: {n_lines} lines (at most {MAX_FILE})")
        for fn in ast.walk(ast.parse(text)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = fn.end_lineno - fn.lineno + 1
                if n > max(MAX_FUNCTION, grandfathered.get(f"{rel}:{fn.name}", 0)):
                    found.append(f"{rel}:{fn.lineno}: function {fn.name} is {n} lines (at most {MAX_FUNCTION})")
        found += reexports(rel, module_name(f, root), text)
        for imp in imports_of(f, root, known):
            where = f"{rel}:{imp.line}"
            heavy = imp.target.split(".")[0] in HEAVY
            if imp.local and not imp.marked:
                found.append(f"{where}: function-local import of {imp.target} without '{MARK}'"
                             + ("" if heavy else " (r2m imports go at the top of the module)"))
            if heavy:
                if not imp.local and not imp.typing_only:
                    found.append(f"{where}: {imp.target} is a heavy dependency: import it inside the function ({MARK})")
                continue
            lo, hi = layer_of(imp.module), layer_of(imp.target)
            if hi > lo:
                found.append(f"{where}: upward import of {imp.target} ({LAYERS[hi][0]}) "
                             f"from {imp.module} ({LAYERS[lo][0]})")
            if package_of(imp.module) != package_of(imp.target):
                pkg_graph.setdefault(package_of(imp.module), set()).add(package_of(imp.target))
            if not imp.local and not imp.typing_only and imp.target != imp.module and imp.target in known:
                mod_graph.setdefault(imp.module, set()).add(imp.target)
    found += [f"package cycle: {' <-> '.join(c)}" for c in _cycles(pkg_graph)]
    # A package's __init__ naming its submodules is not a cycle between them.
    mod_graph = {m: {t for t in ts if not m.startswith(t + ".") and not t.startswith(m + ".")}
                 for m, ts in mod_graph.items()}
    found += [f"module cycle at import time: {' <-> '.join(c)}" for c in _cycles(mod_graph)]
    return found


def test_r2m_keeps_the_contract() -> None:
    assert violations(ROOT) == []


def test_grandfathered_sizes_are_still_needed() -> None:
    """A ceiling that is no longer reached goes from GRANDFATHERED (it may only shrink)."""
    assert not [v for v in violations(ROOT, {}) if not any(k.split(":")[0] in v for k in GRANDFATHERED)]
    for key, ceiling in GRANDFATHERED.items():
        path, _, fn = key.partition(":")
        text = (ROOT / path).read_text()
        if not fn:
            assert len(text.splitlines()) == ceiling, f"{key}: now {len(text.splitlines())} lines; lower the ceiling"
        else:
            node = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == fn)
            assert node.end_lineno - node.lineno + 1 == ceiling, f"{key}: lower the ceiling"


# ---------------------------------------------------------------------------------------------
# Planted violations: the checker fails on each
# ---------------------------------------------------------------------------------------------


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"r2m/__init__.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_clean_tree_passes(tmp_path) -> None:
    root = plant(tmp_path, {"r2m/__init__.py": "def __getattr__(name):\n    raise AttributeError(name)\n",
                            "r2m/core/__init__.py": '"""A package: its docstring only."""\n',
                            "r2m/core/a.py": "from r2m.config import X\n\nY = X\n",
                            "r2m/config.py": "X = 1\n",
                            "r2m/recipes/__init__.py": "", "r2m/recipes/b.py": "def f():\n    import matplotlib  # heavy: lazy\n"})
    assert violations(root, {}) == []


@pytest.mark.parametrize("files, expected", [
    ({"r2m/config.py": "from r2m.core.a import X\n", "r2m/core/__init__.py": "", "r2m/core/a.py": "X = 1\n"},
     r"upward import of r2m\.core\.a \(core\) from r2m\.config \(config\)"),
    ({"r2m/core/__init__.py": "", "r2m/core/a.py": "from r2m.runtime.b import Y\nX = 1\n",
      "r2m/runtime/__init__.py": "", "r2m/runtime/b.py": "from r2m.core.a import X\nY = 1\n"},
     r"package cycle: r2m\.core <-> r2m\.runtime"),
    ({"r2m/core/__init__.py": "", "r2m/core/a.py": "from r2m.core.b import Y\nX = 1\n",
      "r2m/core/b.py": "from r2m.core.a import X\nY = 1\n"}, r"module cycle at import time: r2m\.core\.a <-> r2m\.core\.b"),
    ({"r2m/core/__init__.py": "", "r2m/core/a.py": "def f():\n    from r2m.config import X\n", "r2m/config.py": ""},
     r"function-local import of r2m\.config without '# heavy: lazy'"),
    ({"r2m/reports/__init__.py": "", "r2m/reports/p.py": "import matplotlib\n"}, r"matplotlib is a heavy dependency"),
    ({"r2m/reports/__init__.py": "", "r2m/reports/p.py": "def f():\n    import matplotlib.pyplot as plt\n"},
     r"function-local import of matplotlib\.pyplot without"),
    ({"r2m/core/__init__.py": "", "r2m/core/a.py": "X = 1\n",
      "r2m/core/old.py": '"""Compatibility module."""\n\nfrom r2m.core.a import *  # noqa: F401,F403\n'},
     r"r2m/core/old\.py: a re-export-only module"),
    ({"r2m/core/__init__.py": "", "r2m/core/a.py": "X = 1\n",
      "r2m/core/hub.py": '"""A hub."""\nfrom __future__ import annotations\n\nfrom r2m.core.a import X\n\n__all__ = ["X"]\n'},
     r"r2m/core/hub\.py: a re-export-only module"),
    ({"r2m/core/__init__.py": '"""Docs."""\nfrom r2m.core.a import X\n', "r2m/core/a.py": "X = 1\n"},
     r"r2m/core/__init__\.py: a re-export-only module"),
    ({"r2m/core/__init__.py": "", "r2m/core/a.py": "X = 1\n", "r2m/core/b.py": "from r2m.core.a import *\nY = 2\n"},
     r"r2m/core/b\.py:1: star import from r2m\.core\.a"),
    ({"r2m/core/__init__.py": "", "r2m/core/a.py": "X = 1\n",
      "r2m/core/b.py": "from r2m.core.a import (  # noqa: F401  (re-exported)\n    X,\n)\n\nY = 2\n"},
     r"r2m/core/b\.py:1: an import kept for re-export"),
    ({"r2m/models/__init__.py": "def __getattr__(name):\n    raise AttributeError(name)\n"},
     r"r2m/models/__init__\.py: a PEP 562 __getattr__ export table"),
    ({"r2m/core/__init__.py": "", "r2m/core/a.py": "X = 1\n",
      "r2m/core/b.py": 'from r2m.core.a import X\n\nY = X\n__all__ = ["X", "Y"]\n'},
     r"r2m/core/b\.py:4: __all__ lists X, imported from elsewhere"),
    ({"r2m/core/__init__.py": "", "r2m/core/big.py": "x = 1\n" * 601}, r"r2m/core/big\.py: 601 lines"),
    ({"r2m/core/__init__.py": "", "r2m/core/long.py": "def f():\n" + "    x = 1\n" * 60},
     r"function f is 61 lines"),
    ({"r2m/cli.py": "from r2m_bench.stats import X\n", "r2m_bench/__init__.py": "", "r2m_bench/stats.py": "X = 1\n"},
     r"upward import of r2m_bench\.stats \(bench\) from r2m\.cli \(cli\)"),
    ({"r2m_bench/__init__.py": "", "r2m_bench/big.py": "x = 1\n" * 601}, r"r2m_bench/big\.py: 601 lines"),
])
def test_a_planted_violation_fails(tmp_path, files, expected) -> None:
    found = violations(plant(tmp_path, files), {})
    assert any(re.search(expected, v) for v in found), found


# ---------------------------------------------------------------------------------------------
# The README's Public API keeps importing
# ---------------------------------------------------------------------------------------------


def public_api_imports() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Public API", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))
    lines = [ln for ln in code.splitlines() if ln.startswith(("from ", "import "))]
    dotted = sorted(set(re.findall(r"`(r2m(?:\.\w+)+)\(", section)))  # `r2m.models.fusion.omega(...)` in the prose
    return lines + [_import_line(d) for d in dotted]


def _import_line(dotted: str) -> str:
    """``from MODULE import NAME`` for the longest module prefix of ``dotted``; the rest is an attribute path
    (``r2m.models.r2m.FeedbackRewardModel.from_pretrained``: the class, then its method)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # a prefix that is a module, not a package: ``module`` goes past it
            found = None
        if found is not None:
            attrs = parts[cut:]
            return f"from {module} import {attrs[0]}" + "".join(f"; {attrs[0]}.{a}" for a in attrs[1:2])
    raise AssertionError(f"{dotted}: no importable module prefix")


def test_every_public_api_name_imports() -> None:
    lines = public_api_imports()
    assert len(lines) >= 8, lines
    for line in lines:
        exec(line, {})  # noqa: S102 (the README's own import lines)
