"""Solution to notebook 05's exercise: the Polyak (soft) target update."""


def my_polyak(target_params, online_params, tau: float) -> list:
    """New target weights: each one moved a fraction tau of the way to the online weights (returns new tensors)."""
    return [(1 - tau) * target + tau * online for target, online in zip(target_params, online_params)]
