"""Triton kernels of the MoE family: the fused expert GEMMs (``fused.py``) and routing (``routing.py``)."""
