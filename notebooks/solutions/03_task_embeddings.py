"""Solution to notebook 03's exercise: the actor loss with the embedding NOT detached."""

import torch


def my_actor_loss_through_embedding(actor, critic, log_alpha, obs, task_ids, action_mask, support) -> torch.Tensor:
    """bro_mt.actor_loss's value, mean(alpha * log pi(a|s) - Q(s, a)), but the actor reads critic.embed(task_ids)
    itself, so that the loss's gradient reaches the task embedding."""
    actions, log_probs = actor.sample(obs, critic.embed(task_ids), action_mask)  # no .detach()
    out = critic(obs, actions, task_ids)  # [members, batch, bins]
    q = (out.softmax(-1).mean(0) * support).sum(-1)
    return (log_alpha.exp().detach() * log_probs - q).mean()
