"""Solution to notebook 00's exercise: Q from the critic's output."""

import torch


def my_q_value(critic_out: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """[members, batch, bins] logits -> Q [batch]: the expectation of the members' mean distribution."""
    mean_probs = critic_out.softmax(-1).mean(0)  # average the probabilities, not the logits
    return (mean_probs * support).sum(-1)
