"""Scale-out on the CPU: pretraining tokens/s on 1 and 2 processes, and the bytes expert
parallelism's ``all_to_all_single`` sends per step against the analytic count.

    python bench/scale_cpu.py tokens [--rounds 2] [--steps 20] [--batch 8] [--seq-len 64]
    python bench/scale_cpu.py ep-bytes [--batch 8] [--seq-len 64]

``tokens`` runs ``hysparse train pretrain`` (tiny HySparse-80B-A3B twin, float32, one MTP block)
as child processes, the layouts alternated round by round so they see the same load: one process
with 1 and with 2 torch threads, and ``--nproc 2`` (torchrun, 1 thread per rank) with FSDP2, with
FSDP2 + expert parallelism over both ranks, and with DDP. tokens/s is the global batch's tokens
over the seconds of the training loop (the run's ``seconds``: start-up and the final save
excluded; the last step's checkpoint included), median over rounds.

``ep-bytes`` starts 2 gloo ranks (spawned), runs one pretraining step (forward and backward) of
the same model with its experts shared out over both, and counts the bytes every
``all_to_all_single`` call hands to the other rank (the collective is wrapped; a rank's rows to
itself are a local copy and not counted). The analytic count: for each MoE layer, the rows routed
to the other rank's experts and back (``Dispatch``: rows x hidden x 4 bytes, out and back), twice
(the backward exchanges the gradients the same way), plus the exchange of the per-expert counts
(``E / P`` int64 to each other rank, per layer, forward only); and the expectation under uniform
routing, ``4 * T * k * (P - 1) / P * hidden * 4`` bytes per layer (``T`` tokens per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

MODEL = "tiny-hysparse-80b-a3b"


# --------------------------------------------------------------------------- tokens/s


LAYOUTS = {
    "1 process, 1 thread": ([], {"OMP_NUM_THREADS": "1"}),
    "1 process, 2 threads": ([], {"OMP_NUM_THREADS": "2"}),
    "2 processes, FSDP2": (["--nproc", "2"], {"OMP_NUM_THREADS": "1"}),
    "2 processes, FSDP2 + EP 2": (["--nproc", "2", "--expert-parallel", "2"], {"OMP_NUM_THREADS": "1"}),
    "2 processes, DDP": (["--nproc", "2", "--data-parallel", "ddp"], {"OMP_NUM_THREADS": "1"}),
}


def run_once(extra: list[str], env: dict, steps: int, batch: int, seq: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "hysparse_kernels.cli", "train", "pretrain", "--model", MODEL, "--mtp-layers", "1",
               "--steps", str(steps), "--batch", str(batch), "--seq-len", str(seq), "--warmup", "2",
               "--corpus-lines", "2000", "--checkpoint-every", str(steps), "--out", os.path.join(tmp, "out"),
               "--no-progress", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"tokens_per_s": steps * batch * seq / summary["seconds"], "lm_loss": summary["final"]["lm_loss"]}


def tokens(args) -> None:
    results: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    for r in range(args.rounds):
        for name, (extra, env) in LAYOUTS.items():
            results[name].append(run_once(extra, env, args.steps, args.batch, args.seq_len))
            print(f"round {r}: {name}: {results[name][-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    base = statistics.median(x["tokens_per_s"] for x in results["1 process, 1 thread"])
    print(f"| layout | tokens/s (median of {args.rounds}) | vs 1 process, 1 thread | final LM loss |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        tps = statistics.median(x["tokens_per_s"] for x in rows)
        print(f"| {name} | {tps:.0f} | {tps / base:.2f}x | {rows[-1]['lm_loss']:.4f} |")


# --------------------------------------------------------------------------- EP bytes


def _ep_rank(rank: int, world: int, port: int, batch: int, seq: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    import hysparse_kernels as hk
    from hysparse_kernels.models import HybridLM
    from hysparse_kernels.models.moe import MoEBlock
    from hysparse_kernels.training import distributed
    from hysparse_kernels.training.pretrain import PretrainLoss, model_config

    torch.set_num_threads(1)
    sent = {"rows": 0, "counts": 0, "calls": 0}
    real = dist.all_to_all_single

    def counting(output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        me, P = dist.get_rank(group), dist.get_world_size(group)
        if input_split_sizes is None:  # the counts: an even split
            sent["counts"] += input.numel() // P * (P - 1) * input.element_size()
        else:
            row = input[0].numel() * input.element_size() if input.shape[0] else 0
            sent["rows"] += sum(n for p, n in enumerate(input_split_sizes) if p != me) * row
        sent["calls"] += 1
        return real(output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op)

    dist.all_to_all_single = counting
    par = distributed.setup("fsdp", 2)
    try:
        torch.manual_seed(0)
        graph = model_config(MODEL, 1).to_graph()
        model = HybridLM(graph)
        root = distributed.parallelize(PretrainLoss(model), model, par)
        ids = torch.randint(0, 256, (batch // world, seq), generator=torch.Generator().manual_seed(rank))
        with hk.use_backend("reference"):
            lm, mtp = root(ids)
            forward_rows = sent["rows"]
            (lm + 0.3 * torch.stack(mtp).mean()).backward()
        blocks = [m for m in model.modules() if isinstance(m, MoEBlock)]
        analytic_rows = 2 * sum(b.last_dispatch.bytes_sent() for b in blocks)
        E = blocks[0].spec.num_experts
        analytic_counts = len(blocks) * (E // world) * (world - 1) * 8
        T, k, D = ids.numel(), blocks[0].spec.top_k, graph.hidden
        uniform = len(blocks) * 4 * T * k * (world - 1) / world * D * 4
        queue.put({"rank": rank, "moe_layers": len(blocks), "tokens": T, "top_k": k, "hidden": D, "experts": E,
                   "measured_rows_bytes": sent["rows"], "measured_forward_rows_bytes": forward_rows,
                   "measured_counts_bytes": sent["counts"], "calls": sent["calls"],
                   "analytic_rows_bytes": analytic_rows, "analytic_counts_bytes": analytic_counts,
                   "uniform_rows_bytes": uniform})
    finally:
        distributed.teardown(par)


def ep_bytes(args) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ep_rank, args=(r, 2, port, args.batch, args.seq_len, queue)) for r in range(2)]
    for p in procs:
        p.start()
    rows = sorted((queue.get(timeout=600) for _ in procs), key=lambda x: x["rank"])
    for p in procs:
        p.join()
    print(json.dumps(rows, indent=1), file=sys.stderr)
    print("| rank | MoE layers | tokens | all_to_all calls | rows bytes measured | rows bytes analytic (Dispatch) | "
          "uniform-routing expectation | counts bytes measured / analytic |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rank']} | {r['moe_layers']} | {r['tokens']} | {r['calls']} | {r['measured_rows_bytes']} | "
              f"{r['analytic_rows_bytes']} | {r['uniform_rows_bytes']:.0f} | {r['measured_counts_bytes']} / "
              f"{r['analytic_counts_bytes']} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tokens")
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--seq-len", type=int, default=64)
    e = sub.add_parser("ep-bytes")
    e.add_argument("--batch", type=int, default=8)
    e.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args(argv)
    (tokens if args.what == "tokens" else ep_bytes)(args)


if __name__ == "__main__":
    main()
