"""The package's layers only import downward, and no modules import each other in a circle.

Read from the source (AST, nothing executed), every import counted, those inside functions too: the op and
its kernels, below the adapter API, below the integrations with model libraries, below the application and
tools. A module imports from its own layer or those below it; the package's __init__ (the public facade) may
import anything and nothing imports it. A new module must be given a layer here."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "st_adapter_fast"
# Bottom first. A name covers the module and, for a package, everything inside it.
LAYERS = (
    ("the op and its kernels", ("_C", "activations", "validation", "backends", "fused", "reference", "ops",
                                "kernels")),
    ("the adapter API", ("adapted", "files", "module", "checkpoint", "convert", "report", "measure", "compiling")),
    ("the integrations", ("integrations",)),
    ("the application and tools", ("video", "bench", "console", "cli")),
)
FACADE = "st_adapter_fast"


def package_modules():
    """{dotted name: (path, is_package)} of every Python module of the package, and the compiled extension."""
    modules = {"st_adapter_fast._C": (None, False)}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imported_modules(name, path, is_package, modules):
    """The package's modules that module `name` imports anywhere in its source."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules}


def import_graph():
    modules = package_modules()
    return {name: imported_modules(name, path, is_package, modules)
            for name, (path, is_package) in modules.items() if path is not None}


def layer_of(module):
    if module == FACADE:
        return None
    top = module.split(".")[1]
    for index, (_, names) in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} has no layer: add it to LAYERS in {__file__}")


GRAPH = import_graph()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_look_down(module):
    if module == FACADE:
        return
    layer = layer_of(module)
    upward = sorted(m for m in GRAPH[module] if m == FACADE or layer_of(m) > layer)
    assert not upward, (f"{module} ({LAYERS[layer][0]}) imports {upward}, from above its layer "
                        f"({', '.join(LAYERS[layer_of(m)][0] if m != FACADE else 'the facade' for m in upward)})")


def find_circles(graph):
    """Each import circle of `graph` ({module: imported modules}) found by a depth-first walk."""
    circles, state = [], {}   # state: 1 while on the path of the walk, 2 when done

    def walk(module, path):
        state[module] = 1
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                circles.append(path[path.index(other):] + [other])
            elif other not in state:
                walk(other, path + [other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    return circles


def test_no_import_circles():
    circles = find_circles(GRAPH)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The checker itself: a lazy upward import inside a function, and a two-module circle, are found."""
    (tmp_path / "st_adapter_fast").mkdir()
    (tmp_path / "st_adapter_fast" / "ops.py").write_text("def f():\n    from .cli import main\n")
    (tmp_path / "st_adapter_fast" / "cli.py").write_text("from . import ops\n")
    modules = {"st_adapter_fast.ops": (tmp_path / "st_adapter_fast" / "ops.py", False),
               "st_adapter_fast.cli": (tmp_path / "st_adapter_fast" / "cli.py", False)}
    assert imported_modules("st_adapter_fast.ops", *modules["st_adapter_fast.ops"], modules) == {"st_adapter_fast.cli"}
    assert imported_modules("st_adapter_fast.cli", *modules["st_adapter_fast.cli"], modules) == {"st_adapter_fast.ops"}
    assert layer_of("st_adapter_fast.cli") > layer_of("st_adapter_fast.ops")
    graph = {name: imported_modules(name, *where, modules) for name, where in modules.items()}
    assert find_circles(graph) == [["st_adapter_fast.cli", "st_adapter_fast.ops", "st_adapter_fast.cli"]]
