"""`hysparse info`: versions, the device, and the backend table (which op runs where, and why not)."""

from __future__ import annotations

import json
import sys

import torch

from . import dispatch, tuned
from .backends import all_status


def device_description() -> str:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"cuda: {props.name} (sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    cpu = tuned.cpu_model()
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


def collect() -> dict:
    from . import __version__

    ops = dispatch.registered_ops()
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "hysparse_kernels": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": device_description(),
        "backends": [
            {
                "name": st.name,
                "installed": st.installed,
                "version": st.version,
                "devices": list(st.devices),
                "why": st.reason,
                "ops": [op for op, impls in ops.items() if st.name in impls],
            }
            for st in all_status()
        ],
        "auto": {op: dispatch.resolve(op, device_type) for op in ops},
        "threads": threads_info(),
    }


def threads_info() -> dict:
    """Thread counts of torch and of TVM's pool (the policy of ``backends.tvm.threads``)."""
    import os

    from .backends import status

    info = {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    if status("tvm").installed:
        from .backends.tvm import threads

        info["tvm"] = threads.describe()
        from .backends.tvm import output_pool

        info["output_pool"] = output_pool.describe()
    return info


def format_table(info: dict) -> str:
    lines = [
        f"hysparse-kernels {info['hysparse_kernels']}  python {info['python']}  torch {info['torch']}",
        f"device  {info['device']}",
        "",
        f"{'backend':<10} {'version':<14} {'runs on':<10} {'ops':>4}  notes",
    ]
    for b in info["backends"]:
        runs = ",".join(b["devices"]) if b["devices"] else "-"
        lines.append(f"{b['name']:<10} {b['version'] or '-':<14} {runs:<10} {len(b['ops']):>4}  {b['why']}")
    th = info.get("threads")
    if th:
        lines += ["", f"threads  torch {th['torch_intra_op']} intra-op, {th['torch_inter_op']} inter-op"
                      f" (OMP_NUM_THREADS {th['OMP_NUM_THREADS'] or 'unset'})"]
        tv = th.get("tvm")
        if tv:
            lines.append(f"         tvm {tv['threads']} per kernel (from {tv['source']}; runtime reports "
                         f"{tv['tvm_runtime_threads']}), pool of {tv['pool']} on {tv['cores']} usable cores; "
                         f"kernels under {tv['small_work_flops'] / 1e6:g} MFLOP on 1; spin count {tv['spin_count']}")
            dyn = (f"on: other processes' load now {tv['other_load']:g}; while it leaves fewer free cores than a "
                   f"kernel's threads, kernels under {tv['busy_work_flops'] / 1e6:g} MFLOP and decode steps under "
                   f"{tv['busy_step_flops'] / 1e6:g} MFLOP run on 1" if tv["dynamic"] else "off (HYSPARSE_TVM_DYNAMIC=0)")
            lines.append(f"         busy-machine adjustment {dyn}")
        pool = th.get("output_pool")
        if pool:
            state = (f"up to {pool['budget_mb']} MiB (HYSPARSE_OUTPUT_POOL_MB) of outputs from {pool['min_block_mb']} MiB, "
                     f"reused once dropped; holds {pool['blocks']} blocks: {pool['in_use_mb']:.0f} MiB in use, "
                     f"{pool['free_mb']:.0f} MiB free" if pool["budget_mb"] else "off (HYSPARSE_OUTPUT_POOL_MB=0"
                     + ("" if pool["available"] else " or no storage use-count hook in this torch") + ")")
            lines.append(f"memory   CPU kernel output pool {state}")
    lines += ["", "auto picks, on this device:"]
    width = max((len(op) for op in info["auto"]), default=0)
    lines += [f"  {op:<{width}}  {backend}" for op, backend in info["auto"].items()]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the same information as JSON")


def run(args) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)  # the table says it already
        info = collect()
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0
