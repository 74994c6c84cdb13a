"""hysparse_kernels.autotune: tune the kernels for this machine and save the configs they look up.

* ``device``  — what is tuned for: detected CPU / GPU, and H100 / A100 descriptions (limits)
* ``spaces``  — per-kernel search spaces, pruned by the device's shared memory and registers
* ``tasks``   — inputs of one shape and a runner that launches a kernel with a given config
* ``runner``  — timing (CPU median, GPU ``do_bench``) and the search of one shape bucket
* ``shapes``  — ``--shape`` parsing and the shapes of a model's kernel plan (``ir.lower``)
* ``report``  — the final table and the per-op plots
* ``cli``     — ``hysparse autotune``

Results are written through ``hysparse_kernels.tuned`` (the kernels' lookup API). This package
imports the kernel layer and ``ir``, nothing above them.
"""
