"""MS-SSIM of two grey images with pytorch_msssim: the torch kernel of checks.fidelity's ``msssim_edges``.

No weights: it lives here because torch is imported only under workers/models (and only inside
functions), so importing checks.fidelity stays cheap for processes that never run QC.
"""

from __future__ import annotations

import numpy as np


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """MS-SSIM of two float32 HxW images of the same size (each side > 160 px for its 5 scales)."""
    import torch  # lazy: heavy import, only QC needs it
    from pytorch_msssim import ms_ssim as _ms_ssim

    ta = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    tb = torch.from_numpy(np.ascontiguousarray(b))[None, None]
    # One single-channel image is too small to gain from intra-op threads: fanning out
    # cost 2-6x more on the 2-core workers (worst when the box is busy). Restore the
    # worker's setting afterwards, larger models in the same process want it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return float(_ms_ssim(ta, tb, data_range=data_range, size_average=True))
    finally:
        torch.set_num_threads(threads)
