"""A probe for host syncs: the ops whose result's size or value the host would have to wait for."""

from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::nonzero_static",
           "aten::masked_select", "aten::equal", "aten::unique", "aten::_unique2", "aten::unique_consecutive",
           "aten::repeat_interleave", "aten::allclose"}


class SyncingOps(TorchDispatchMode):
    """Records, in ``found``, every op of ``SYNCING`` run inside it."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in SYNCING:
            self.found.append(func._schema.name)
        return func(*args, **(kwargs or {}))
