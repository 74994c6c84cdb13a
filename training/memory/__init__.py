"""Memory recipes: agents that learn from an experience bank of earlier episodes.

``bank``: the experience bank (raw trajectories with their outcome, retrieved by cosine similarity
of all-MiniLM-L6-v2 sentence embeddings; saved as ``bank.json`` + ``embeddings.safetensors``).
``composer``: the LatentMem memory composer (a zoo model plus learned query vectors whose last
hidden states, projected, become latent memory tokens in a frozen agent's input) and the agent
wrapper that rolls out with them. ``roles``: the planner and solver roles of the lookup team, their
formats and SFT warm starts; ``team``: the team's episodes with memory in either role's prompt.
``latentmem``: LMPO training and the held-out comparison of no memory, raw-text memory and latent
memory (``hysparse recipe run latentmem``). ``trust_bench``: a stream of lookup
tasks and trust probes with their checkers; ``tame``: value memories of scored decisions (an
executor memory of strategies, an evaluator memory of verdicts on drafts) and the agents;
``tame_run``: ``hysparse recipe run tame``.
"""
