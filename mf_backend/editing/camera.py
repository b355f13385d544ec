"""Camera mode (method.md §A.8): the reconstruction's up-block self-attention K/V (the source
background) injected into the editing pass of the same step.

    store = {}
    unet(z_rec, ..., attention_hook=capture_hook(store))            # reconstruction pass
    unet(z_edit, ..., attention_hook=inject_hook(store, masks, hw))  # editing (CFG) pass

Only the current step's and window's K/V are held (the two branches advance in lock-step).
"""

from __future__ import annotations

from typing import Callable

import torch

from mf_backend.editing.guidance import RegionMasks

Hook = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def capture_hook(store: dict) -> Hook:
    """Records every attn1 key/value of the reconstruction pass (L,N,C) in `store`, unchanged."""
    def hook(name, hidden, key, value):
        store[name] = (key.detach(), value.detach())  # kept on the device
        return key, value
    return hook


def inject_hook(store: dict, masks: RegionMasks, latent_hw: tuple[int, int]) -> Hook:
    """Editing pass: keys/values = [edit ⊙ M_e ; rec ⊙ (1-M_r)] (2N tokens), as the reference does
    (multiplicative masking: zeroed keys keep softmax mass at logit 0). Works for any batch of rows
    of the window (e.g. both CFG halves)."""
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def masks_for(n_tokens: int, L: int):
        if n_tokens not in cache:
            h, w = latent_hw
            while h * w > n_tokens and h > 1:
                h, w = h // 2, w // 2
            if h * w != n_tokens:
                raise ValueError(f"cannot map {n_tokens} attention tokens onto the latent grid {latent_hw}")
            m_e = masks.nearest("M_e", (h, w)).reshape(L, n_tokens, 1)
            m_bg = 1 - masks.nearest("M_r", (h, w)).reshape(L, n_tokens, 1)
            cache[n_tokens] = (m_e, m_bg)
        return cache[n_tokens]

    def hook(name, hidden, key, value):
        if name not in store:
            return key, value
        k_rec, v_rec = store[name]
        L = k_rec.shape[0]
        b = key.shape[0] // L
        m_e, m_bg = (m.to(key.dtype) for m in masks_for(key.shape[1], L))  # (L,N,1)
        m_e = m_e.repeat(b, 1, 1)  # every row of the batch
        key = torch.cat([key * m_e, (k_rec * m_bg).repeat(b, 1, 1)], dim=1)
        value = torch.cat([value * m_e, (v_rec * m_bg).repeat(b, 1, 1)], dim=1)
        return key, value
    return hook
