"""Solution to notebook 07's exercise: the tanh-Gaussian log-probability over a task's own action dims."""

import math

import torch
import torch.nn.functional as F


def my_masked_log_prob(mean, log_std, noise, action_mask) -> torch.Tensor:
    """log pi(a|s) of a = tanh(mean + std * noise), summed over the dims where action_mask is 1: [batch]."""
    pre_tanh = mean + log_std.exp() * noise
    gaussian = -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)  # log N(pre_tanh; mean, std) per dim
    # the change of variables through tanh, log(1 - tanh(u)^2), written in a form that stays finite for large |u|
    squash = 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))
    return ((gaussian - squash) * action_mask).sum(-1)
