"""Environments for the RL recipes that act in a simulator rather than write text (``aoi``)."""
