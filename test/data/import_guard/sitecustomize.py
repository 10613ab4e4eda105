"""Import guard for test_drone_imports.py (put this folder first on PYTHONPATH, set COLLAB_IMPORT_GUARD_DIR).

In a drone's node process (its ROS arguments put it under a /droneN namespace) the modules a drone must not
need (the renderer, OpenCV, PyTorch, tqdm) cannot be imported: a finder raises ImportError for them, and
records every attempt, with the importing stack's last frames, in <dir>/<pid>.json, which is written once
at start-up (so the test can tell the guard ran) and again at every attempt.
"""
import json
import os
import sys
import traceback

BLOCKED = ('moderngl', 'cv2', 'torch', 'tqdm')


def _drone_namespace(argv):
    for arg in argv:
        if arg.startswith('__ns:=/drone'):
            return arg[len('__ns:='):]
    return None


_guard_dir = os.environ.get('COLLAB_IMPORT_GUARD_DIR')
_namespace = _drone_namespace(sys.argv)
if _guard_dir and _namespace:
    _record = {'pid': os.getpid(), 'argv': sys.argv, 'namespace': _namespace, 'blocked': list(BLOCKED),
               'attempts': []}

    def _save():
        with open(os.path.join(_guard_dir, f'{os.getpid()}.json'), 'w') as f:
            json.dump(_record, f)

    class _Guard:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                _record['attempts'].append({'module': name, 'stack': traceback.format_stack(limit=6)[:-1]})
                _save()
                raise ImportError(f'{name} is not importable in a drone process (test import guard)')
            return None

    sys.meta_path.insert(0, _Guard())
    _save()
