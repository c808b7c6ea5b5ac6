"""The glue's shape (issue 15, item 3), read from the source with `ast`; nothing is imported.

- Imports among the modules of `experiments/` (module-level and inside functions) form no
  cycle.
- Config reads: an attribute, item or method of a ConfigDict (`c.data.train`, `c["eval"]`,
  `c.get("nets")`) counts as a read. A name is taken for a ConfigDict when it is a parameter
  or variable called `c`, `cs`, `cc` or `config`, a parameter annotated `ConfigDict`, or a
  name bound to a config flag's `.value` (`_CONFIG.value`). Reading `.value` of the flag
  itself is not a read (the mains hand the config on). Only build.py reads the config; the
  other modules get its `plan.Plan`, plain values, or hand the config on to build.
- The size of `experiments/` outside `configs/` may only go down (`MAX_LINES`: the size
  reached; issue 15 asks for 1,500).
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE = os.path.join(ROOT, "experiments")
CONFIG_NAMES = ("c", "cs", "cc", "config")

READERS = ("build",)   # the only modules that read ConfigDict fields
MAX_LINES = 1439       # the size reached (issue 15 asks for 1,500): lower it, never raise it


def _modules() -> dict[str, str]:
  """{module name: source} of experiments/*.py (configs/ excluded)."""
  out = {}
  for name in sorted(os.listdir(GLUE)):
    if name.endswith(".py"):
      with open(os.path.join(GLUE, name)) as f:
        out[name[:-3]] = f.read()
  return out


def imports(source: str, modules) -> set[str]:
  """The experiments modules `source` imports anywhere (functions included)."""
  out = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      parts = name.split(".")
      if parts[0] == "experiments" and len(parts) > 1 and parts[1] in modules:
        out.add(parts[1])
  return out


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One cycle of `graph` as [a, b, ..., a], or [] if it has none."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return []

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return []


def _config_names(tree: ast.AST) -> set[str]:
  """Names that hold a ConfigDict (see the module docstring)."""
  names = set(CONFIG_NAMES)
  for node in ast.walk(tree):
    if isinstance(node, ast.arg) and node.annotation is not None:
      if "ConfigDict" in ast.unparse(node.annotation):
        names.add(node.arg)
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute):
      value = node.value
      if (value.attr == "value" and isinstance(value.value, ast.Name)
          and "CONFIG" in value.value.id.upper()):
        names.update(t.id for t in node.targets if isinstance(t, ast.Name))
  return names


def config_reads(source: str) -> int:
  """How many attribute / item / method reads of a ConfigDict `source` has."""
  tree = ast.parse(source)
  names = _config_names(tree)
  count = 0
  for node in ast.walk(tree):
    if isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.value, ast.Name):
      count += node.value.id in names
  return count


def test_the_checks_can_fail():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) == []
  src = ("def f(c, n: ml_collections.ConfigDict):\n"
         "  from experiments import build\n"
         "  x = _CONFIG.value\n"
         "  return c.data.train, n['eval'], x.get('k'), build.build(c)\n")
  assert imports(src, {"build", "runner"}) == {"build"}
  assert config_reads(src) == 3   # c.data, n[...], x.get: not build.build, not _CONFIG.value


def test_no_import_cycle_in_experiments():
  modules = _modules()
  graph = {m: imports(src, modules) - {m} for m, src in modules.items()}
  cycle = find_cycle(graph)
  assert not cycle, "import cycle in experiments/: " + " -> ".join(cycle)


def test_only_build_reads_the_config():
  counts = {m: config_reads(src) for m, src in _modules().items()}
  print("config reads per module:", {m: n for m, n in counts.items() if n})
  assert all(counts[m] > 0 for m in READERS)   # the detection sees build's reads
  others = {m: n for m, n in counts.items() if n and m not in READERS}
  assert not others, f"config fields read outside {READERS}: {others}"


@pytest.mark.parametrize("limit", [MAX_LINES])
def test_glue_size(limit):
  lines = sum(src.count("\n") for src in _modules().values())
  print(f"experiments/ outside configs/: {lines} lines")
  assert lines <= limit
