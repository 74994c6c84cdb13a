"""hysparse_kernels.autotune: search spaces, runner, and the `hysparse autotune` command."""
