"""Support code of bro_mt.py and bro_atari.py: everything that is not BRC. You never need it to learn the method.

CleanRL keeps the same kind of code in `cleanrl_utils`, so that each script reads top to bottom as the algorithm.

  run.py ..... the run plumbing: flag checks, torch and thread set-up, memory estimates, vector envs, the run folder,
               TensorBoard / wandb, the progress line, signals, guarded env steps, checkpoints and exact resume,
               the --compile / --cudagraphs wrappers
  envs.py .... bro_mt.py's environments: dm_control and MetaWorld as gymnasium envs, task suites, simulator state
  atari.py ... bro_atari.py's environments: ALE games with the standard preprocessing, suites, reference scores

Everything a student changes to try an idea (networks, losses, the update, reward normalisation, replay, padding,
evaluation, the training loop) is in the scripts themselves.
"""
