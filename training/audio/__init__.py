"""hysparse_kernels.training.audio: MiMo-Audio's recipes on synthetic audio. ``synth`` (numpy audio),
``corpus`` (bursty audio + text documents, tokenized), ``tokenizer_train`` and ``pretrain`` (atomic
checkpoints, resume), ``fewshot`` (in-context tasks and their scores, with ``features``), ``cli``
(``hysparse audio``)."""
