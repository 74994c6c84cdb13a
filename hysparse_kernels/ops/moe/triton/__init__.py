"""Triton kernels of the MoE family, one file per op: the fused expert MLP and the grouped GEMM
(``moe.py``: ops ``moe_fwd``, ``grouped_gemm``) and routing (``route.py``: op ``route``)."""
