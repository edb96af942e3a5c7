"""Data: from files (or phantoms) to the batches a training step reads.

sources      one registry of 2D ('image') and 3D ('volume') sources, each declaring its fields
splits       patient-level splits (random, test-first with a minimum positive share, official,
             k-fold)
resample     which records an epoch visits, against class imbalance
augment      2D augmentation presets per modality (label-preserving)
standardize  one intensity standardisation core for films and scans
pipeline     the one grain data path of every task (sharding, epochs, workers, resume at a step)
check        every record opened and decoded once before training (unreadable, NaN/Inf, constant)
consensus    reference standards from several readers (majority vote, Cohen's and Fleiss' kappa)
image/       generic 2D: decoding, a film's record, file/folder sources, ArrayRecord preparation
cxr/         chest X-ray sources (NIH, CheXpert, expert labels, phantoms); volume/ 3D sources
(the command lines, python -m mdx prepare | check | split | audit | consensus: mdx.commands)
"""
