"""CUTLASS backend of the MoE family: ``grouped_gemm.py`` (the op ``grouped_gemm`` on sm80/sm90).
Nothing is imported here: dispatch loads ``grouped_gemm.py`` by name on first use."""
