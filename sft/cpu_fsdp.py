"""FSDP2 over CPU processes (gloo): accelerate's FSDP plugin for ranks that have no GPU.

torch's ``fully_shard`` shards, trains and gathers full state dicts on CPU tensors over gloo, but
accelerate (1.15, ``AcceleratorState.__init__``) turns its FSDP plugin on only for GPU-class
distributed types: a CPU rank (``MULTI_CPU``) keeps the plugin aside and trains an unsharded copy.
:func:`enable` makes a CPU rank take the plugin exactly as accelerate does for a GPU rank (same
three assignments), so transformers' Trainer and trl prepare, checkpoint and save through
accelerate's own FSDP2 code. It changes nothing when the ranks are not CPU ranks or no FSDP
plugin is given, and only runs in a worker the launcher started for an FSDP config on CPU.
"""

from __future__ import annotations

import functools


def enable() -> None:
    """Let ``AcceleratorState`` take an FSDP plugin on CPU (gloo) ranks, as it does on GPU ranks."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__
    if getattr(init, "_tempa_cpu_fsdp", False):
        return

    @functools.wraps(init)
    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # accelerate's own branch for GPU ranks (state.py), applied to a CPU rank
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type

    __init__._tempa_cpu_fsdp = True
    AcceleratorState.__init__ = __init__
