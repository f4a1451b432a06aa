"""The package's import graph has no cycle (every import counted, also those inside functions): a cycle
means two modules that cannot be read, tested or moved apart (issue 18: flops.py <-> longer.py was one)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"longer_train": ROOT / "longer_train", "longer_train.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports (a name imported from a package counts as its submodule
    when there is one, else as the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read():  # the check below would pass on an empty graph
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "longer_train.models.inputs" in graph["longer_train.models.flops"]
    assert "longer_train.kernels" in graph["longer_train.models.token_merge"]


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


# what the rest of the package may import of models/: the contract (models/contract.py and the types it is made
# of), the embedding side and the registry that builds a model from its config (ranking.py); no model or layer
CONTRACT = {"longer_train.models.contract", "longer_train.models.inputs", "longer_train.models.units",
            "longer_train.models.user_state", "longer_train.models.sparse_arch", "longer_train.models.ranking"}


def test_trainer_distributed_and_serve_know_models_by_their_contract_only():
    """The trainer, machine checks, distributed/ and serve/ reach a dense model through `DenseModel` and the
    registry: no import of a model or one of its layers, so no model special case there (distributed/ not
    even the registry: it is handed the built model)."""
    modules = _modules()
    checked = 0
    for name, path in modules.items():
        if name in ("longer_train.trainer", "longer_train.machine") or name.startswith(
                ("longer_train.distributed", "longer_train.serve")):
            models = {m for m in _imports(name, path, modules) if m.startswith("longer_train.models")}
            allowed = CONTRACT - {"longer_train.models.ranking"} if "distributed" in name else CONTRACT
            assert models <= allowed, (name, models - allowed)
            checked += bool(models)
    assert checked >= 4  # the imports were seen (trainer, parallelize, scorer, export, ...)



def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_read_path_imports_no_dataset_production():
    """Training and serving read data through longer_train.data; making datasets (generators, preparation,
    the writer, longer-data) is longer_train.datasets, which the read path never imports, even indirectly."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "longer_train.data.store" in _reach(graph, "longer_train.datasets.prepare")  # through the writer
    for name in modules:
        if name.startswith("longer_train.data.") or name == "longer_train.data":
            production = {m for m in _reach(graph, name) if m.startswith("longer_train.datasets")}
            assert not production, (name, production)
    for name in ("longer_train.datasets.synthetic", "longer_train.datasets.synthetic_match"):
        assert "longer_train.trainer" not in _reach(graph, name), name
