"""Solution to notebook 04's exercise: discounted returns-to-go with a bootstrapped tail."""

import numpy as np


def my_returns_to_go(rewards, gamma: float, bootstrap: float) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1}, run backwards from G_T = bootstrap."""
    returns = np.zeros(len(rewards))
    future = bootstrap
    for t in reversed(range(len(rewards))):
        future = rewards[t] + gamma * future
        returns[t] = future
    return returns
