"""Solution to notebook 06's exercise: the categorical double-DQN target."""

import torch

from bro_atari import categorical_projection


def my_double_dqn_target(next_online_logits, next_target_logits, returns, bootstrap, support) -> torch.Tensor:
    """[batch, actions, bins] logits of both networks at s' -> the projected target distribution [batch, bins]."""
    online_q = (next_online_logits.softmax(-1) * support).sum(-1)  # [batch, actions]
    best = online_q.argmax(-1)  # the online network chooses a*
    next_probs = next_target_logits.softmax(-1)[torch.arange(len(best)), best]  # the target network evaluates it
    moved_atoms = returns[:, None] + bootstrap[:, None] * support  # [batch, bins]
    return categorical_projection(moved_atoms, next_probs, support)
