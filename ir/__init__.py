"""hysparse_kernels.ir: attention patterns, model graphs, passes (KV plan, selection plan, kernel plan), export."""
