"""``import panoptic_ext`` registers the plugins and does nothing else: no application module,
no changed attribute of detectron2; the package has no import cycle."""

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "panoptic_ext"

# Runs in a fresh interpreter: detectron2's modules, every attribute's identity, then the import.
_PROBE = r"""
import importlib, json, pkgutil, sys
import detectron2
for info in pkgutil.walk_packages(detectron2.__path__, "detectron2."):
    if info.name.startswith(("detectron2.export", "detectron2.projects", "detectron2.model_zoo")):
        continue  # v0.6's export imports caffe2; not what a plugin touches
    try:
        importlib.import_module(info.name)
    except Exception:
        pass
def snapshot():
    return {
        name: {k: id(v) for k, v in vars(m).items() if not k.startswith("__")}
        for name, m in list(sys.modules.items())
        if name.startswith("detectron2") and m is not None
    }
before = snapshot()
import panoptic_ext
from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY, ROI_HEADS_REGISTRY, SEM_SEG_HEADS_REGISTRY
after = snapshot()
changed = sorted(
    f"{mod}.{k}" for mod, attrs in before.items() for k, i in attrs.items()
    if after[mod].get(k) != i
)
added = sorted(f"{mod}.{k}" for mod, attrs in before.items() for k in set(after[mod]) - set(attrs))
print(json.dumps({
    "changed": changed,
    "added": added,
    "panoptic_ext_modules": sorted(m for m in sys.modules if m.startswith("panoptic_ext")),
    "registered": [
        "PanopticFPNExt" in META_ARCH_REGISTRY, "SemanticFPNHead" in SEM_SEG_HEADS_REGISTRY,
        "PanopticROIHeads" in ROI_HEADS_REGISTRY,
        "panoptic_synthetic_train" in DatasetCatalog.list(),
        "cityscapes_fine_panoptic_ext_val" in DatasetCatalog.list(),
    ],
}))
"""


def test_import_registers_plugins_and_changes_nothing_of_detectron2():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(result["registered"]), result["registered"]
    assert result["changed"] == [], "detectron2 attributes replaced by import panoptic_ext"
    assert result["added"] == [], "attributes added to detectron2 modules by import panoptic_ext"
    loaded = result["panoptic_ext_modules"]
    assert "panoptic_ext.modeling.meta_arch" in loaded
    assert [m for m in loaded if m.startswith("panoptic_ext.apps")] == []


def _module_imports():
    """Module -> the panoptic_ext modules it imports at module level (not inside functions)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        name = ".".join(parts)
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = parts if is_pkg else parts[:-1]
                if node.level:
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("panoptic_ext"):
                    deps.add(target)
                    deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("panoptic_ext"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_package_init_edge(a, b):
    # a package's __init__ importing its own submodules (and they importing a sibling through
    # the package) is how packages expose their API, not a design cycle
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycles_and_the_plugin_never_imports_the_applications():
    graph = _module_imports()
    design = {m: {d for d in deps if not _is_package_init_edge(m, d)} for m, deps in graph.items()}
    assert _cycles(design) == []
    for module, deps in graph.items():
        if not module.startswith("panoptic_ext.apps"):
            assert not [d for d in deps if d.startswith("panoptic_ext.apps")], module
