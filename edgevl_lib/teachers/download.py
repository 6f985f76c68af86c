"""The download / offline policy of the teachers (and students): nothing is fetched without an opt-in.

Downloads need `allow_download=True` or the environment variable EDGEVL_ALLOW_DOWNLOAD=1 (`downloads_allowed`).
Without the opt-in every Hugging Face hub request (weights, tokenizers, text-tower configs) is served from the
local cache or refused (`hub_offline`), and `is_hub_refusal` recognises such a refusal in an exception chain.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

ALLOW_DOWNLOAD_ENV = "EDGEVL_ALLOW_DOWNLOAD"


def downloads_allowed(allow_download: bool = False) -> bool:
    """True when `allow_download` or the environment variable EDGEVL_ALLOW_DOWNLOAD=1 opts in to downloads."""
    return bool(allow_download) or os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def hub_offline(offline: bool = True) -> Iterator[None]:
    """While inside (and `offline`), the Hugging Face hub serves files from its local cache only.

    Sets `huggingface_hub.constants.HF_HUB_OFFLINE`, which huggingface_hub and transformers read on every
    request, for the block only; a file that is not cached then raises huggingface_hub's
    LocalEntryNotFoundError / OfflineModeIsEnabled instead of opening a connection. Wraps timm / open_clip
    model creation when downloads are not allowed (`downloads_allowed`).
    """
    if not offline:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def is_hub_refusal(err: BaseException) -> bool:
    """True when `err`, or an exception in its cause / context chain, is huggingface_hub refusing to go online
    (LocalEntryNotFoundError, OfflineModeIsEnabled); transformers wraps those in an OSError."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
