"""TVM backend of the MoE family (CPU, ``llvm``): ``moe.py`` launches the fused expert MLP
(``moe``, op ``moe_fwd``) and the grouped GEMM (``grouped_gemm``); ``kernels.py`` holds their
TensorIR kernels. Nothing is imported here: dispatch loads ``moe.py`` by name on first use."""
