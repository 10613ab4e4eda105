"""CollaVN on a drone (method `collavn`, the memory protocol of runtime/protocols/memory.py): each node loads
only its part of a `collab-perception nav export` directory.

    perception  encode.onnx + observe.onnx: panorama -> descriptors -> context, query, key, value; the own
                read of its private memory (runtime/nav_agent.NavObserver)
    matcher     nothing to load: it matches queries against the keys its perception produced (runtime/memory)
    fusion      nothing to load: the score-weighted mean of the values that arrive (runtime/memory.fuse)
    policy      act.onnx: the recurrent policy over the five lattice moves (runtime/nav_agent.NavPolicy)
"""
from __future__ import annotations

from typing import Optional, Sequence

from .methods import Method, register_method
from .nav_agent import NavObserver, NavPolicy, load_nav_sessions, new_memory

NODE_ROLES = {'encoder': ('encode', 'observe'), 'matcher': (), 'decoder': (), 'policy': ('act',)}


@register_method('collavn')
class CollaVNMethod(Method):
    protocol = 'memory'

    def __init__(self, model_dir: str = '', roles: Sequence[str] = ('encoder', 'policy'),
                 providers: Sequence[str] = ('CPUExecutionProvider',), threads: int = 1,
                 provider_options: Optional[dict] = None, precision: str = 'fp32', **_unused):
        from .onnx_method import onnxruntime
        if precision != 'fp32':
            raise ValueError(f'precision {precision!r}: the CollaVN export has fp32 roles only')
        unknown = sorted(set(roles) - set(NODE_ROLES))
        if unknown:
            raise ValueError(f'collavn: unknown node role(s) {", ".join(unknown)}; valid: {", ".join(NODE_ROLES)}')
        available = set(onnxruntime().get_available_providers())
        chosen = [p for p in providers if p in available] or ['CPUExecutionProvider']
        files = [f for r in roles for f in NODE_ROLES[r]]
        self.model_dir = model_dir
        self.info, self.sessions = load_nav_sessions(model_dir, files, chosen, threads)
        if self.info.get('method') != 'collavn':
            raise ValueError(f'{model_dir}: roles.json is a {self.info.get("method")!r} model, not collavn '
                             '(collab-perception nav export)')
        self.threshold = float(self.info['threshold'])
        self.value_dim = int(self.info['value_dim'])
        self.query_dim = int(self.info['query_dim'])
        self.context_dim = int(self.info['context_dim'])
        self.image_size = int(self.info['image_size'])

    @property
    def communicates(self) -> bool:
        return bool(self.info['communicates'])

    @property
    def uses_memory(self) -> bool:
        return bool(self.info['memory'])

    def observer(self) -> NavObserver:
        return NavObserver(self.info, self.sessions)

    def policy(self) -> NavPolicy:
        return NavPolicy(self.info, self.sessions)

    def memory(self):
        return new_memory(self.info)

    def query_shape(self):
        return (self.query_dim,)

    def describe(self) -> str:
        return (f'collavn ({self.info["variant"]}, q {self.query_dim} / v {self.value_dim} float32, '
                f'threshold {self.threshold:g})')
