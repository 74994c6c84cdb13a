"""Vision reasoning: generated puzzles (``puzzles``), the DiffThinker image-to-image reasoner
(``diffthinker``) with its text-centric baseline (``text_baseline``), and AdaReasoner's visual
tool use (``tools``, ``episodes``, ``rollout``, ``agent``, ``figures``)."""
