"""The package's module graph: no import cycles among module-level imports, and the layers of
docs/ARCHITECTURE.md (each imports only the ones below it)."""
import ast
import os

import collab_perception

ROOT = os.path.dirname(os.path.abspath(collab_perception.__file__))
# bottom to top (docs/ARCHITECTURE.md); learn and nodes sit side by side, neither imports the other
LAYERS = {'config': 0, 'classes': 0, 'registry': 0, 'rosenv': 0, 'world': 1, 'data': 2, 'runtime': 3,
          'learn': 4, 'nodes': 4, 'launch': 5, 'cli': 6}


def module_name(path):
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def top_level_imports(path):
    """collab_perception modules imported at module level (not inside functions or TYPE_CHECKING)."""
    name = module_name(path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in tree.body:
        if isinstance(node, ast.If) and 'TYPE_CHECKING' in ast.dump(node.test):
            continue
        for sub in ([node] if not isinstance(node, (ast.If, ast.Try)) else ast.walk(node)):
            if isinstance(sub, ast.Import):
                out |= {a.name for a in sub.names if a.name.startswith('collab_perception')}
            elif isinstance(sub, ast.ImportFrom):
                if sub.level:
                    base = package.split('.')
                    base = base[:len(base) - sub.level + 1]
                    target = '.'.join(base + ([sub.module] if sub.module else []))
                else:
                    target = sub.module or ''
                if not target.startswith('collab_perception'):
                    continue
                out.add(target)
                for a in sub.names:   # `from . import onnx_method` names a module
                    if os.path.exists(os.path.join(os.path.dirname(ROOT), *f'{target}.{a.name}'.split('.')) + '.py'):
                        out.add(f'{target}.{a.name}')
    return out


def graph():
    g = {}
    for dirpath, _, files in os.walk(ROOT):
        for file in files:
            if file.endswith('.py'):
                path = os.path.join(dirpath, file)
                g[module_name(path)] = top_level_imports(path)
    return g


def test_no_import_cycles():
    g = graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 'open'
        for dep in sorted(g.get(node, ())):
            if dep not in g:
                continue
            if state.get(dep) == 'open':
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 'done'

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert cycles == [], '\n'.join(' -> '.join(c) for c in cycles)


def test_layers_import_only_layers_below():
    bad = []
    for module, deps in graph().items():
        parts = module.split('.')
        if len(parts) < 2 or parts[1] not in LAYERS:
            continue
        mine = LAYERS[parts[1]]
        for dep in deps:
            dparts = dep.split('.')
            if len(dparts) < 2 or dparts[1] not in LAYERS or dparts[1] == parts[1]:
                continue
            theirs = LAYERS[dparts[1]]
            if theirs > mine or (theirs == mine and mine != 0):
                bad.append(f'{module} imports {dep}')
    assert bad == [], '\n'.join(sorted(bad))


def test_every_lazily_named_method_registers_when_its_module_loads():
    import importlib
    from collab_perception.runtime import methods
    for name, module in methods.LAZY_METHODS.items():
        importlib.import_module(f'collab_perception.runtime.{module}')
        assert name in methods.METHODS, f'{module} did not register {name!r}'
    assert set(methods.METHODS.names()) == set(methods.method_names())
