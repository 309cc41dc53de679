"""timm's ImageNet weights: from a local cache when there is a copy, and never from the network when offline.

timm fetches pretrained weights from the Hugging Face hub (or, for old models, a URL cached by torch.hub). Offline,
that fetch would retry for minutes before failing, so graft looks in both caches itself (no network) and either
loads the cached file or fails at once with the way out: `--weights FILE`, or a cache directory that holds the file
(`HF_HUB_CACHE` / `HF_HOME`, or `TORCH_HOME` for torch.hub).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from graft.errors import GraftError, first_line

_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _hf_cached(hub_id: str, filename: str | None) -> Path | None:
    from huggingface_hub import constants, try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    names = [filename] if filename else list(_HF_FILES)
    if filename == "pytorch_model.bin":
        names.insert(0, "model.safetensors")  # timm prefers the safetensors alternative
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=constants.HF_HUB_CACHE, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def cached_hub_weights(name: str) -> Path | None:
    """The local copy of timm's default pretrained weights for `name` (Hugging Face cache, then torch.hub's), if any.

    Looks at files only: no socket is opened.
    """
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        found = _hf_cached(cfg.hf_hub_id, cfg.hf_hub_filename)
        if found is not None:
            return found
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if candidate.is_file():
            return candidate
    return None


def hub_source(name: str) -> str:
    """Where timm would fetch `name`'s weights from: the hub repository, else the URL, for messages."""
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        return "none: timm has no pretrained weights for it"
    return f"hub repo {cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url or "none"


def require_hub_weights(name: str, *, offline: bool) -> Path | None:
    """The cached weights file for `name` (None: fetch from the hub); refuses at once what cannot work.

    Called before any data is read, so an offline run without the weights fails in a second, not after minutes.
    """
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        raise GraftError(f"timm has no pretrained weights for {name}; train from scratch or pass --weights FILE")
    cached = cached_hub_weights(name)
    if cached is None and offline:
        raise GraftError(
            f"--offline: no local copy of {name}'s ImageNet weights ({hub_source(name)}) in the Hugging Face cache "
            "(HF_HUB_CACHE or HF_HOME) or torch.hub's (TORCH_HOME); pass --weights FILE, or fill a cache online first"
        )
    return cached


def hub_state_dict(name: str, kwargs: dict, *, offline: bool = False) -> dict[str, torch.Tensor]:
    """timm's ImageNet weights for `name`: a cached copy when there is one, else the hub (never when `offline`)."""
    cached = require_hub_weights(name, offline=offline)
    overlay = {"file": str(cached)} if cached is not None else None
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as error:
        where = f"the cached file {cached}" if cached is not None else "the hub"
        raise GraftError(
            f"could not load ImageNet weights for {name} from {where}: {first_line(error, 160)}; "
            "offline? pass --weights FILE"
        ) from None
    return model.state_dict()
