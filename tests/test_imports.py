"""`import mert` stays light: no Lightning, Hydra, transformers or hub client at import time."""

import ast
import re
import subprocess
import sys
from pathlib import Path


def test_import_mert_is_light():
    code = (
        "import sys, mert; from mert import Encoder; "
        "heavy = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'transformers', "
        "'huggingface_hub', 'torchaudio', 'soundfile') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at `import mert`: {out.stdout.strip()}"


# ---------------------------------------------------------------------------------------------- import graph
ROOT = Path(__file__).resolve().parents[1] / "mert"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> list[tuple[str, str, str | None]]:
    """``(importer, imported module, imported name or None)`` for every ``import``/``from`` of a ``mert``
    module anywhere in a file (function-level imports included: they hide cycles, they do not break them)."""
    edges = []
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges += [(mod, a.name, None) for a in node.names if a.name.split(".")[0] == "mert"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                if base.split(".")[0] != "mert":
                    continue
                for a in node.names:  # `from mert.cli import data` imports the module mert.cli.data
                    sub = f"{base}.{a.name}"
                    edges.append((mod, sub, None) if sub in modules else (mod, base, a.name))
    return edges


def _area(mod: str) -> str:
    """The package a module belongs to for the private-import rule: ``mert.probe.layouts._gtzan`` -> ``mert.probe``;
    a top-level module (``mert.audio``) is its own."""
    return ".".join(mod.split(".")[:2])


def test_import_graph_has_no_cycle():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for src, dst, _ in _imports(modules):
        if dst in modules and dst != src:
            graph[src].add(dst)
    # Depth-first search with colours; report one cycle as a path.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_imports_across_packages():
    modules = _modules()
    bad = []
    for src, dst, name in _imports(modules):
        if _area(src) == _area(dst):
            continue
        private_module = any(p.startswith("_") and not p.startswith("__") for p in dst.split("."))
        private_name = name is not None and name.startswith("_") and not name.startswith("__")
        if private_module or private_name:
            bad.append(f"{src} imports {dst}{'.' + name if name else ''}")
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


def test_every_subcommand_lives_in_mert_cli():
    """Argument parsing only in mert/cli/ (mert/lightning/train.py's __main__ re-enters `mert pretrain` for the
    ranks Lightning's DDP launcher starts by re-running that file)."""
    offenders = [
        str(path.relative_to(ROOT.parent))
        for mod, path in _modules().items()
        if _area(mod) != "mert.cli" and re.search(r"\bargparse\b|ArgumentParser", path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_cli_module_names_shadow_no_top_level_module():
    """Lightning's DDP launcher re-runs mert/cli/rank_entry.py as a script, which puts mert/cli/ first on sys.path:
    a module there named like an installed top-level module (``hydra``, ``data``...) would replace it in every rank."""
    names = [p.stem for p in (ROOT / "cli").glob("*.py") if not p.stem.startswith("__")]
    code = (
        "import importlib.util, json, sys; "
        f"print(json.dumps([n for n in {names!r} if importlib.util.find_spec(n) is not None]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"mert/cli modules shadow installed modules: {out.stdout.strip()}"


# docs/architecture.md draws these layers: a package imports only packages of a lower layer.
LAYERS = [
    ["mert.audio", "mert.fileio", "mert.progress", "mert.version"],
    ["mert.registry"],
    ["mert.download"],
    ["mert.hub"],
    ["mert.models"],
    ["mert"],
    ["mert.targets", "mert.data", "mert.hear"],
    ["mert.pretrain", "mert.probe"],
    ["mert.lightning"],
    ["mert.demo"],
    ["mert.cli"],
]


def test_packages_import_only_lower_layers():
    modules = _modules()
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    areas = {_area(m) for m in modules}
    assert areas <= set(rank), f"packages missing from LAYERS: {sorted(areas - set(rank))}"
    bad = sorted(
        {f"{src} -> {dst}" for src, dst, _ in _imports(modules) if rank[_area(src)] <= rank[_area(dst)]}
        - {f"{src} -> {dst}" for src, dst, _ in _imports(modules) if _area(src) == _area(dst)}
    )
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_benchmark_scripts_import():
    """Benchmarks import helpers from tests/ and library internals: a move must not leave them broken."""
    code = (
        "import importlib.util, pathlib, sys\n"
        "for p in sorted(pathlib.Path('benchmarks').glob('*.py')):\n"
        "    spec = importlib.util.spec_from_file_location('bench_' + p.stem, p)\n"
        "    sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT.parent)
    assert out.returncode == 0, out.stderr[-3000:]


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers.py and tests/conftest.py: importing a test module from another runs
    its module-level code twice and hides which file a fixture belongs to."""
    import re
    from pathlib import Path

    pattern = re.compile(r"^\s*(from tests\.test_\w+ import|import tests\.test_)", re.MULTILINE)
    offenders = [p.name for p in sorted(Path(__file__).parent.glob("*.py")) if pattern.search(p.read_text())]
    assert offenders == [], f"import from tests/helpers.py or conftest.py instead: {offenders}"
    assert pattern.search("from tests.test_probe import x\n")  # the check can fail
