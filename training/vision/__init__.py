"""Vision reasoning: generated puzzles (``puzzles``) and the DiffThinker image-to-image reasoner
(``diffthinker``) with its text-centric baseline (``text_baseline``)."""
