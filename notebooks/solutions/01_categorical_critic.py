"""Solution to notebook 01's exercise: the C51 projection, one atom at a time (slow but plain)."""

import torch


def my_projection(target_atoms: torch.Tensor, probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Mass probs[b, j] sitting at target_atoms[b, j], split between the two support atoms around it."""
    v_min, v_max, bins = support[0].item(), support[-1].item(), len(support)
    delta = (v_max - v_min) / (bins - 1)
    projected = torch.zeros_like(probs)
    for b in range(probs.shape[0]):
        for j in range(bins):
            position = (min(max(target_atoms[b, j].item(), v_min), v_max) - v_min) / delta
            lower = min(int(position), bins - 1)
            upper_weight = position - lower
            projected[b, lower] += probs[b, j] * (1 - upper_weight)
            projected[b, min(lower + 1, bins - 1)] += probs[b, j] * upper_weight
    return projected
