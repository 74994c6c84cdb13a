"""CPU training-step benchmark: one pretraining step (forward, backward, AdamW) of a zoo model.

Default shape: the tiny HySparse-80B-A3B twin, batch 8 x 256 tokens, the step of
``training/pretrain.py`` (LM loss + MTP loss if the model has MTP blocks, clip, AdamW, routing
bias update), every op on the default backend of the CPU.

    python bench/train_cpu.py [--steps 6] [--profile] [--json PATH]
    python bench/train_cpu.py --against OTHER_PYTHON [--rounds 3]

``--profile`` prints where the step's time goes (torch profiler, self CPU time per op, the
``hysparse`` ops summed). ``--against`` compares two installations of the toolkit on this machine
in one run: it alternates child processes of this interpreter and of ``OTHER_PYTHON`` (for
instance a venv holding an older commit), round by round, so both see the same load, and prints
the median tokens/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def measure(model_name: str, batch: int, seq: int, steps: int, profile: bool) -> dict:
    import torch

    from hysparse_kernels.models import HybridLM
    from hysparse_kernels.training.pretrain import losses, model_config

    torch.manual_seed(0)
    graph = model_config(model_name, None).to_graph()
    model = HybridLM(graph).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, min(graph.vocab, 256), (batch, seq), generator=g) for _ in range(2)]
    moe_blocks = [m for m in model.modules() if hasattr(m, "update_bias")]

    def step(i: int) -> float:
        lm, mtp = losses(model, batches[i % 2], with_mtp=True)
        loss = lm + 0.3 * torch.stack(mtp).mean() if mtp else lm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for b in moe_blocks:
            b.update_bias(1e-3)
        return float(loss.detach())

    step(0)  # warm-up: kernel builds, allocator
    times, cpu = [], []
    for i in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step(i + 1)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    # CPU time (all threads of the process): the steadier measure of the work on a shared machine
    out = {"model": model_name, "batch": batch, "seq": seq, "step_s": med, "tokens_per_s": batch * seq / med,
           "cpu_s": statistics.median(cpu), "times": times, "threads": torch.get_num_threads(), "load": os.getloadavg()}
    try:
        from hysparse_kernels.backends.tvm.threads import policy

        out["tvm_threads"] = policy().threads
    except ImportError:  # an installation without the thread policy
        pass
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            step(0)
        rows = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in rows)
        out["profile"] = [(e.key, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total) for e in rows[:15]]
        # the toolkit's ops with what they call (total time), against the step's self time
        ops = sorted((e for e in p.key_averages() if e.key.startswith("hysparse::")), key=lambda e: -e.cpu_time_total)
        out["profile_ops"] = [(e.key, e.cpu_time_total / 1e3, e.cpu_time_total / total) for e in ops]
    return out


def compare(other: str, rounds: int, args) -> None:
    """Alternate child processes of this interpreter and ``other``; medians and the ratio."""
    cmd = [__file__, "--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq),
           "--steps", str(args.steps), "--child"] + (["--threads", str(args.threads)] if args.threads else [])
    runs = {"this": [], "other": []}
    cpu = {"this": [], "other": []}
    for r in range(rounds):
        for name, py in (("other", other), ("this", sys.executable)):
            res = subprocess.run([py, *cmd], capture_output=True, text=True, cwd=os.path.dirname(__file__) or ".")
            if res.returncode != 0:
                raise SystemExit(f"{name} ({py}) failed:\n{res.stderr[-2000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            runs[name].append(row["tokens_per_s"])
            cpu[name].append(row["cpu_s"])
            print(f"round {r} {name}: {row['tokens_per_s']:.0f} tokens/s (step {row['step_s'] * 1e3:.0f} ms, "
                  f"CPU {row['cpu_s'] * 1e3:.0f} ms, load {row['load'][0]:.1f})", flush=True)
    this, base = statistics.median(runs["this"]), statistics.median(runs["other"])
    print(f"median tokens/s: this {this:.0f}, other {base:.0f}: {this / base:.2f}x; CPU time per step: this "
          f"{statistics.median(cpu['this']) * 1e3:.0f} ms, other {statistics.median(cpu['other']) * 1e3:.0f} ms")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-hysparse-80b-a3b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (median)")
    ap.add_argument("--profile", action="store_true", help="also profile one step by op")
    ap.add_argument("--json", default=None, help="write the result to this file")
    ap.add_argument("--against", default=None, help="another Python interpreter to compare with, round by round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: torch's own)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    if args.against:
        compare(args.against, args.rounds, args)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = measure(args.model, args.batch, args.seq, args.steps, args.profile)
    if args.child:
        print(json.dumps(res))
        return
    print(f"{res['model']}: batch {res['batch']} x {res['seq']} tokens, step {res['step_s'] * 1e3:.0f} ms "
          f"(median of {len(res['times'])}; CPU {res['cpu_s'] * 1e3:.0f} ms), {res['tokens_per_s']:.0f} tokens/s, torch threads {res['threads']}, "
          f"TVM threads {res.get('tvm_threads', '?')}, load {res['load'][0]:.1f}")
    if "profile" in res:
        print("  self CPU time by op:")
    for key, ms, frac in res.get("profile", []):
        print(f"  {key:<45} {ms:9.1f} ms {100 * frac:5.1f}%")
    if "profile_ops" in res:
        print("  hysparse ops, total CPU time (with what they call):")
    for key, ms, frac in res.get("profile_ops", []):
        print(f"  {key:<45} {ms:9.1f} ms {100 * frac:5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
