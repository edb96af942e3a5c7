"""Training: the Task protocol and its tasks, TrainState, pure steps, checkpoints, the loop.

tasks           the Task protocol and the registry of tasks (classification, segmentation)
loop, steps     the host loop and the pure shard_map train / eval-loss steps
state, optim    TrainState; optimizer and schedule from config.train
checkpoint      Orbax checkpoints of the state and the data iterator
finetune        pretrained backbones under a new head; frozen stages
run, sweep      one run of an experiment (flag-free); every variant of an ablation, one table
crossval        the k folds of a segmentation experiment, out-of-fold results, their ensemble
"""
