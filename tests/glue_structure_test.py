"""The glue's shape (issue 15, item 3), read from the source with `ast`; nothing is imported.

- Imports among the modules of `experiments/` (module-level and inside functions) form no
  cycle.
- Config reads: an attribute, item or method of a ConfigDict (`c.data.train`, `c["eval"]`,
  `c.get("nets")`) counts as a read. A name is taken for a ConfigDict when it is a parameter
  or variable called `c`, `cs`, `cc` or `config`, a parameter annotated `ConfigDict`, or a
  name bound to a config flag's `.value` (`_CONFIG.value`). Reading `.value` of the flag
  itself is not a read (the mains hand the config on). The per-module counts may only go
  down (`CONFIG_READS`, a ratchet): a new module reading the config, or more reads, fails.
- The size of `experiments/` outside `configs/` may only go down (`MAX_LINES`).
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE = os.path.join(ROOT, "experiments")
CONFIG_NAMES = ("c", "cs", "cc", "config")

# The reads of each module today (issue 15 asks for build.py alone); lower them when a
# module stops reading the config, never raise them.
CONFIG_READS = {"build": 17, "pipeline": 58, "runner": 13, "validate": 11, "evaluation": 13,
                "workdir": 1, "run": 2}
MAX_LINES = 2175   # issue 15 asks for 1,500


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


def test_config_reads_only_go_down():
  counts = {m: config_reads(src) for m, src in _modules().items()}
  counts = {m: n for m, n in counts.items() if n}
  over = {m: (n, CONFIG_READS.get(m, 0)) for m, n in counts.items()
          if n > CONFIG_READS.get(m, 0)}
  assert not over, f"config reads (now, allowed) grew: {over}; all: {counts}"
  print("config reads per module:", counts)


@pytest.mark.parametrize("limit", [MAX_LINES])
def test_glue_size(limit):
  lines = sum(src.count("\n") for src in _modules().values())
  print(f"experiments/ outside configs/: {lines} lines")
  assert lines <= limit
