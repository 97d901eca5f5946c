"""What ``datasets.map``'s forked worker processes inherit from the parent instead of receiving pickled.

``datasets`` hands every worker its function and ``fn_kwargs`` pickled, once per worker. For the chat
encoder that is the whole tokenizer: Meta's Llama 3 tokenizer pickles to 7.3 MB in 0.37 s in the parent
(one worker after the other) and loads in 1.0 s in each worker, before the worker's first row. A forked
worker already holds the parent's encoder in its copy of the parent's memory, so while
:func:`forked_workers` runs, an :class:`InheritedByForks` object pickles as a key into that copy. Where
workers are not forked (another start method), it pickles whole, as before.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

_REGISTERED: dict[int, Any] = {}


class InheritedByForks:
    """An object that, while :func:`forked_workers` shares it, reaches forked workers without being pickled.

    (``copy.deepcopy`` goes through the same hook: inside the block it gives back the object itself.)
    """

    def __reduce_ex__(self, protocol: Any) -> Any:
        if _REGISTERED.get(id(self)) is self and _workers_fork():
            return (_inherited, (id(self),))
        return super().__reduce_ex__(protocol)


def _inherited(key: int) -> Any:
    try:
        return _REGISTERED[key]
    except KeyError:
        raise RuntimeError(
            "an object shared with forked workers was unpickled in a process that was not forked from the "
            "one sharing it"
        ) from None


def _workers_fork() -> bool:
    import multiprocess  # datasets' pool (imported with datasets)

    return multiprocess.get_start_method() == "fork"


_frozen_depth = 0


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects alive now (torch, transformers, the tokenizer: 300,000+ with Llama 3's) kept out of the
    garbage collector's full collections until the block ends.

    Each full collection walks every tracked object; the rows a prepare allocates trigger them, and each
    one walks that inherited heap again (measured: 0.2-0.4 s of normalising 3,000 rows with Llama 3's
    tokenizer loaded). ``gc.freeze`` is what the gc docs advise for long-lived objects; blocks nest (an
    inner ``gc.unfreeze`` would give back the outer block's objects too, so only the outermost unfreezes).
    """
    global _frozen_depth
    gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()


@contextlib.contextmanager
def forked_workers(workers: int | None, *shared: InheritedByForks) -> Iterator[None]:
    """Around a ``datasets.map`` with ``num_proc=workers``: ``shared`` reach the workers by inheritance,
    and the workers' garbage collector stays off what they inherit.

    A forked child's first full collection walks every object of the parent's heap (torch, transformers,
    the tokenizer...) and writes to each one's header, so the child copies those pages and pays for the
    walk: measured 0.3-1 CPU-s per prepare with 2 workers. :func:`frozen_heap` moves them where the
    collector never looks (what the gc docs advise before a fork) while the workers run.
    """
    if not workers:
        yield
        return
    for obj in shared:
        _REGISTERED[id(obj)] = obj
    try:
        with frozen_heap():
            yield
    finally:
        for obj in shared:
            _REGISTERED.pop(id(obj), None)
