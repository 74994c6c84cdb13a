"""hysparse_kernels.models: configs and registry, modules, KV cache, generation, loading."""
