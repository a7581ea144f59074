"""How tensors travel between the Serve deployments: as NumPy arrays.

Ray pickles a ``torch.Tensor`` through torch's own reduction (its storage serialized in band,
with a fixed cost per tensor); a NumPy array goes out of band (pickle protocol 5) straight into
the object store and is read back without a copy. Measured on the 2-core CPU machine with Serve
(2.60) handles between two replicas: a 30 s stereo clip (11.5 MB float32) sent and returned,
66-69 ms as a tensor, 14-25 ms as an array; the clip with 40 small parameter tensors, 73 ms
against 28 ms; pickling the 40 small tensors alone, 23 ms against 0.07 ms. In the app
(``POST /v1/master`` of a 30 s clip, fused) transport and queueing went from 30 to 24.5 ms.

:func:`install` registers a serializer for ``torch.Tensor`` with
``ray.util.register_serializer`` (Ray's documented hook for custom serialization) in the
calling process, so every tensor that process sends (songs, parameters, conditioning) travels
as an array (moved to the CPU first) and comes back a CPU tensor. Call it in every replica that
sends tensors (the ingress and the stage groups); receivers need nothing installed.
"""

from __future__ import annotations

import numpy as np
import torch


def tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as a NumPy array on the host (no copy for a CPU tensor)."""
    return tensor.detach().cpu().numpy()


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``array``; arrays read back from the object store are read-only views
    of shared memory, so those are copied (a writable tensor, ~2 ms per 11.5 MB)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def install() -> None:
    """Send ``torch.Tensor`` as NumPy arrays from this process (see the module docstring)."""
    import ray.util

    ray.util.register_serializer(
        torch.Tensor, serializer=tensor_to_array, deserializer=array_to_tensor
    )
