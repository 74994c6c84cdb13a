"""hysparse_kernels.training: tasks, pretraining (LM + MTP), RL recipes."""
