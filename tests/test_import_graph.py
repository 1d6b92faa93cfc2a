"""The import graph of `sq_jax`, read from source with `ast` (see `import_graph.py`):

- every `sq_jax` import names a module that exists (a move updated all its importers, even function-level ones);
- no circle: no module reaches itself again through what it imports, counting imports inside functions and the
  package `__init__` that Python runs on the way (`TYPE_CHECKING` imports never run and are left out);
- no upward import: a module imports only its own floor or lower ones (`import_graph.FLOORS`, lowest first),
  type-only imports included;
- a function-level import, of any module, outside `cli.py` says why: a comment on its line or the line above
  (an optional or heavy dependency such as JetStream or torch). Anything else belongs at the top of the module.
"""

from __future__ import annotations

import import_graph
import pytest


@pytest.fixture(scope="module")
def graph() -> import_graph.ImportGraph:
    return import_graph.build_graph()


def test_every_module_has_a_floor(graph):
    assert import_graph.modules_without_floor(graph) == [], "add the new top-level module to import_graph.FLOORS"


def test_every_sq_jax_import_names_a_module(graph):
    found = [f"{s.where()}: {target}" for s, target in import_graph.unresolved_imports(graph)]
    assert found == [], "imports of sq_jax modules that do not exist:\n" + "\n".join(found)


def test_no_import_circle(graph):
    found = [import_graph.format_circle(graph, c) for c in import_graph.circles(graph)]
    assert found == [], "import circles:\n" + "\n".join(found)


def test_no_upward_import(graph):
    found = [f"{s.where()}: {import_graph.floor_of(s.module)} imports {target}"
             for s, target in import_graph.upward_imports(graph)]
    assert found == [], "imports that reach up a floor:\n" + "\n".join(found)


def test_function_level_imports_say_why(graph):
    found = [f"{s.where()}: {', '.join(s.targets)}" for s in import_graph.unexplained_function_level_imports(graph)]
    assert found == [], ("function-level imports without a why-comment (hoist them, or say what is optional or "
                         "heavy):\n" + "\n".join(found))


def test_the_graph_sees_what_it_must(tmp_path):
    # A circle through a function-level relative import and a package __init__, and an upward import.
    pkg = tmp_path / "sq_jax"
    (pkg / "models").mkdir(parents=True)
    (pkg / "pipeline" / "stages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("def f():\n    from sq_jax.pipeline.stages import b\n")
    (pkg / "pipeline" / "__init__.py").write_text("")
    (pkg / "pipeline" / "stages" / "__init__.py").write_text("from . import b\n")
    (pkg / "pipeline" / "stages" / "b.py").write_text("import sq_jax.pipeline.runner\n")
    (pkg / "pipeline" / "runner.py").write_text("from .stages import x  # why: a test\n")
    g = import_graph.build_graph(pkg)
    assert [import_graph.format_circle(g, c) for c in import_graph.circles(g)] == [
        "pipeline/runner.py -> pipeline/stages/__init__.py -> pipeline/stages/b.py -> pipeline/runner.py"]
    assert [(s.where(), t) for s, t in import_graph.upward_imports(g)] == [
        ("sq_jax/models/a.py:2", "sq_jax.pipeline.stages.b")]
    assert [s.where() for s in import_graph.unexplained_function_level_imports(g)] == ["sq_jax/models/a.py:2"]
