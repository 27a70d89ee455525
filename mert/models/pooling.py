"""Layer selection, layer weighting and time pooling over encoder outputs.

Shape legend: ``b`` batch, ``t`` frames, ``d`` width, ``n`` hidden-state layers.

Which layer is best depends on the task (MERT-v1 probing results: key at layer 8, genre at 7, pitch at 1 for
MERT-v1-95M), so the helpers make "one layer", "several layers" and "a learned softmax-weighted sum" equally easy.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from einops import rearrange, reduce
from torch import Tensor, nn

__all__ = [
    "parse_layers",
    "select_layers",
    "weighted_layer_sum",
    "LayerWeights",
    "mean_pool",
    "pool_frames",
    "valid_mask",
]


def valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``lengths (b,)`` -> ``(b, t)`` boolean with ``t = max_len``, True where the frame (or sample) index is inside
    the item's length; on ``lengths``' device."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def parse_layers(spec: str | int | Sequence[int] | None, num_states: int) -> list[int]:
    """Turn a layer spec into non-negative indices into ``hidden_states``.

    Accepts ``None``/``"all"`` (every state), ``"last"``, an int, a list of ints, or a string such as
    ``"0,6,12"``, ``"-1"`` or ``"1-12"`` (inclusive range). Negative indices count from the end.
    """
    if spec is None or spec == "all":
        return list(range(num_states))
    if spec == "last":
        return [num_states - 1]
    if isinstance(spec, bool) or isinstance(spec, (list, tuple)) and any(isinstance(i, bool) for i in spec):
        # True == 1 would silently pick layer 1
        raise ValueError(f"layers must be an int, a list of ints or a string such as '0,6,12', got {spec!r}")
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, str):
        items = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            try:
                items.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
            except ValueError:
                raise ValueError(
                    f"cannot parse layer spec {spec!r}: use e.g. 'all', 'last', '6', '0,6,12', '1-12'"
                ) from None
    else:
        try:  # operator.index: numpy integers pass, floats such as 1.5 do not
            items = [operator.index(i) for i in spec]
        except TypeError:
            raise ValueError(
                f"layers must be an int, a list of ints or a string such as '0,6,12', got {spec!r}"
            ) from None
    out = []
    for i in items:
        j = i + num_states if i < 0 else i
        if not 0 <= j < num_states:
            raise ValueError(f"layer {i} is out of range: this encoder has hidden states 0..{num_states - 1}")
        out.append(j)
    if not out:
        raise ValueError(f"layer spec {spec!r} selects no layer")
    return out


def select_layers(hidden_states: Sequence[Tensor], layers: str | int | Sequence[int] | None = None) -> Tensor:
    """Stack the chosen hidden states: n x ``(b, t, d)`` -> ``(b, n', t, d)``."""
    idx = parse_layers(layers, len(hidden_states))
    return torch.stack([hidden_states[i] for i in idx], dim=1)


def weighted_layer_sum(hidden_states: Sequence[Tensor] | Tensor, weights: Tensor, softmax: bool = True) -> Tensor:
    """Weighted sum over layers.

    Args:
        hidden_states: n x ``(b, t, d)`` or a stacked ``(b, n, t, d)``.
        weights: ``(n,)`` raw weights; softmax-normalised when ``softmax`` (the MARBLE convention).
    Returns:
        ``(b, t, d)``.
    """
    x = hidden_states if isinstance(hidden_states, Tensor) else torch.stack(list(hidden_states), dim=1)
    if weights.shape != (x.shape[1],):
        raise ValueError(f"weights must have shape ({x.shape[1]},) to match the layers, got {tuple(weights.shape)}")
    w = weights.softmax(0) if softmax else weights
    return torch.einsum("bntd,n->btd", x, w.to(x.dtype))


class LayerWeights(nn.Module):
    """Learned softmax weights over ``num_layers`` hidden states (initialised uniform)."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self, hidden_states: Sequence[Tensor] | Tensor) -> Tensor:
        """n x ``(b, t, d)`` or ``(b, n, t, d)`` -> ``(b, t, d)``."""
        return weighted_layer_sum(hidden_states, self.logits)

    @property
    def weights(self) -> Tensor:
        return self.logits.detach().softmax(0)


def mean_pool(x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Mean over the valid frames of each item: ``(b, ..., t, d) -> (b, ..., d)``; frames >= ``lengths`` ignored."""
    if lengths is None:
        return x.mean(dim=-2)
    t = x.shape[-2]
    valid = valid_mask(lengths.to(x.device), t).to(x.dtype)  # (b, t)
    valid = valid.reshape(valid.shape[0], *([1] * (x.dim() - 3)), t, 1)
    return (x * valid).sum(dim=-2) / valid.sum(dim=-2).clamp(min=1)


def pool_frames(x: Tensor, lengths: Tensor | None, frame_rate: float, target_rate: float) -> tuple[Tensor, Tensor]:
    """Average consecutive frames down to ``target_rate`` Hz (e.g. 75 -> 25 Hz pools groups of 3).

    The factor must be a whole number of frames so each output frame covers the same audio.

    Args:
        x: ``(b, t, d)``.
        lengths: ``(b,)`` valid frames or None.
    Returns:
        ``(b, t', d)`` and the new lengths ``(b,)``; partial groups at each item's end are averaged over
        their valid frames only.
    """
    factor = frame_rate / target_rate
    k = round(factor)
    if k < 1 or abs(factor - k) > 1e-6:
        raise ValueError(
            f"target_rate {target_rate} Hz must divide the frame rate {frame_rate} Hz by a whole number >= 1"
        )
    b, t, _ = x.shape
    if lengths is None:
        lengths = torch.full((b,), t, dtype=torch.long, device=x.device)
    t_out = -(-t // k)
    pad = t_out * k - t
    valid = (torch.arange(t + pad, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)  # (b, t)
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)) * valid[..., None]
    sums = reduce(xp, "b (t k) d -> b t d", "sum", k=k)
    counts = reduce(valid, "b (t k) -> b t", "sum", k=k)
    out = sums / rearrange(counts.clamp(min=1), "b t -> b t 1")
    return out, -(-lengths // k)
