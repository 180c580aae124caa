"""Whether a pipeline's models have their weights on this machine, before Ray is asked to
load them: an optional application is skipped with the reason instead of failing in its
replicas."""

from __future__ import annotations

import contextlib
import io
import socket

from vlm_core.models.spec import PRETRAINED
from vlm_core.pipeline import PipelineConfig

#: Seconds to wait for torchvision's download server before taking the machine as offline.
DOWNLOAD_TIMEOUT_S = 10.0


def unavailable_weights(config: PipelineConfig, *, download_timeout_s: float = DOWNLOAD_TIMEOUT_S) -> list[str]:
    """The weights files ``config``'s models need and this machine cannot have, each as
    "file (why)". torchvision's pretrained weights missing from torch's hub cache are
    downloaded into it first where a download works (empty list: every model loads)."""
    import torch

    from vlm_core.models.zoo import cached_weights_file, get_architecture, pretrained_weights

    missing = []
    for model in config.models.values():
        spec = model.model_spec()
        if spec.weights != PRETRAINED:
            continue  # files and registry versions say what is wrong when they load
        arch = get_architecture(spec.arch)
        target = cached_weights_file(arch)
        if target.is_file():
            continue
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(download_timeout_s)
        try:
            # torch announces every download attempt; the caller says what came of it.
            with contextlib.redirect_stdout(io.StringIO()):
                torch.hub.load_state_dict_from_url(pretrained_weights(arch).url, progress=False, weights_only=True)
        except Exception as exc:  # offline, a proxy, a full disk: the caller skips the application
            missing.append(f"{target} ({type(exc).__name__})")
        finally:
            socket.setdefaulttimeout(previous)
    return missing
