"""`hysparse autotune`: tune this machine's kernels and manage the saved configs.

::

    hysparse autotune --model mimo-v2-flash --ops attention,moe --budget 20m
    hysparse autotune --op attention.fwd --shape "B=1,Hq=64,Hkv=8,S=4096,D=128" --dtype bf16
    hysparse autotune list | show OP | export DIR | import DIR | clear

Tuning holds the device's tuner lock (a second tuner stops with an error), saves each bucket as
soon as it is done (``--budget`` and Ctrl-C keep what is finished plus the best-so-far of the
bucket in progress, marked incomplete), and ``--resume`` skips the buckets already complete.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

from hysparse_kernels import tuned

from . import report, runner, shapes, spaces, tasks
from .device import detect

ACTIONS = ("list", "show", "export", "import", "clear")


def add_arguments(parser) -> None:
    parser.add_argument("action", nargs="?", choices=ACTIONS, help="manage saved configs instead of tuning")
    parser.add_argument("target", nargs="?", help="OP for show, DIR for export / import")
    parser.add_argument("--model", help="tune the shapes of this model's kernel plan (see `hysparse ir`)")
    parser.add_argument("--ops", default="attention,moe", help="op families to tune with --model (default: attention,moe)")
    parser.add_argument("--op", help="tune one op: attention.fwd, attention.decode, attention.block_scores, moe")
    parser.add_argument("--shape", action="append", default=[], help='with --op: "B=1,Hq=64,Hkv=8,S=4096,D=128" (repeatable)')
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="input dtype (default bf16)")
    parser.add_argument("--backend", choices=("tvm", "triton"), help="default: tvm on the CPU, triton on CUDA")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when present, else cpu")
    parser.add_argument("--seq-lens", default="1024,4096", help="with --model: sequence lengths to plan for")
    parser.add_argument("--batch", type=int, default=1, help="with --model: batch size (default 1)")
    parser.add_argument("--budget", default="20m", help="time budget: 90s, 20m, 1h (default 20m)")
    parser.add_argument("--resume", action="store_true", help="skip buckets that are already tuned completely")
    parser.add_argument("--max-candidates", type=int, default=None, help="at most this many candidates per bucket")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per candidate on the CPU (median; default 5)")
    parser.add_argument("--max-memory", type=float, default=None, help="skip shapes whose inputs exceed this many GB")
    parser.add_argument("--cache", help="cache folder (default: $HYSPARSE_CACHE or ~/.cache/hysparse-kernels)")
    parser.add_argument("--plots", help="folder for the PNG plots (default: <cache>/<device>/plots)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_budget(text: str) -> float:
    """``"90s"``, ``"20m"``, ``"1h"``, ``"1h30m"`` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not m or not any(m.groups()):
        raise ValueError(f"--budget: expected a duration like 90s, 20m or 1h, got {text!r}")
    h, mnt, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mnt * 60 + s


def _device(args) -> str:
    if args.device:
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _user_dir(device) -> pathlib.Path:
    return tuned.cache_root() / tuned.device_key(device)


def run(args) -> int:
    if args.cache:
        os.environ[tuned.ENV_CACHE] = str(pathlib.Path(args.cache).resolve())
        tuned.invalidate()
    try:
        if args.action:
            return {"list": cmd_list, "show": cmd_show, "export": cmd_export, "import": cmd_import,
                    "clear": cmd_clear}[args.action](args)
        return cmd_tune(args)
    except (ValueError, KeyError, tuned.TunerBusyError) as e:
        print(f"hysparse autotune: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"hysparse autotune: error: {_os_error(e)}", file=sys.stderr)
        return 2


def _os_error(e: OSError) -> str:
    """One line for a file error; for the tuned-config cache, how to pick another one."""
    where = e.filename or ""
    text = f"{where}: {e.strerror or e}" if where else str(e)
    root = tuned.cache_root()
    try:
        in_cache = bool(where) and pathlib.Path(where).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError):
        in_cache = False
    if in_cache:
        text += f" (the tuned-config cache {root} must be writable: pass --cache DIR or set {tuned.ENV_CACHE})"
    return text


# ---------------------------------------------------------------- tuning


def _jobs(args, device: str, backend: str) -> list[tuple[str, dict]]:
    if bool(args.model) == bool(args.op):
        raise ValueError("expected either --model NAME or --op OP --shape ... (one of them)")
    if args.op:
        op = shapes.op_name(args.op)
        if not spaces.tunable(op, backend):
            raise ValueError(f"--op: {args.op!r} is not tunable on {backend}; tunable: "
                             f"{', '.join(spaces.tunable_ops(backend))}")
        if not args.shape:
            raise ValueError("--op needs at least one --shape")
        return [(op, shapes.parse_shape(s)) for s in args.shape]
    families = tuple(f.strip() for f in args.ops.split(",") if f.strip())
    bad = [f for f in families if f not in shapes.FAMILIES]
    if bad:
        raise ValueError(f"--ops: expected families from {shapes.FAMILIES}, got {bad}")
    seq_lens = [int(s) for s in args.seq_lens.split(",") if s.strip()]
    return shapes.model_shapes(args.model, families=families, backend=backend, device=device, seq_lens=seq_lens,
                               batch=args.batch, tunable=spaces.tunable)


def cmd_tune(args) -> int:
    device = _device(args)
    backend = args.backend or ("triton" if device == "cuda" else "tvm")
    budget = parse_budget(args.budget)
    deadline = runner.clock() + budget
    dev = detect(device)
    dtype_name = tasks.DTYPE_NAMES[args.dtype]
    jobs = [(op, {**shape, "dtype": dtype_name}) for op, shape in _jobs(args, device, backend)]
    timer = runner.time_gpu if device == "cuda" else (lambda fn: runner.time_cpu(fn, args.reps))
    limit = (args.max_memory * 1e9) if args.max_memory else _default_memory_limit()
    root = tuned.cache_root()
    print(f"device: {dev.name} ({dev.key}), backend {backend}, {len(jobs)} shape bucket(s), budget {budget:.0f}s, "
          f"cache {root / dev.key}")
    rows, plots, interrupted = [], {}, False
    with tuned.file_lock(root / dev.key / ".tuner.lock", blocking=False):
        plan = []
        for op, shape in jobs:
            existing = tuned.read_entries(root / dev.key / f"{op}.json", op=op, key=dev.key, backend=backend)
            prev = existing.get(tuned.bucket_key(shape))
            row = {"op": op, "bucket": report.fmt_shape(shape)}
            if args.resume and prev and prev.get("complete"):
                rows.append({**row, "config": prev["config"], "ms": prev.get("time_ms"),
                             "heuristic_ms": prev.get("heuristic_ms"), "status": "done before (--resume)"})
                continue
            need = tasks.input_bytes(op, shape, args.dtype)
            if need > limit:
                rows.append({**row, "status": f"skipped: inputs need {need / 1e9:.1f} GB > {limit / 1e9:.1f} GB"})
                continue
            groups = spaces.space(op, backend, shape, dtype_name, dev)
            plan.append((op, shape, groups, row))
        total = sum(1 + runner.count(g) if args.max_candidates is None else 1 + min(args.max_candidates, runner.count(g))
                    for _, _, g, _ in plan)
        bar = _progress(total, args.no_progress)
        for i, (op, shape, groups, row) in enumerate(plan):
            now = runner.clock()
            if now >= deadline:
                rows.append({**row, "status": "not started (budget)"})
                continue
            # An even share of what is left, so one slow bucket cannot starve the others (time a
            # bucket does not use passes on to the next ones).
            bucket_deadline = now + (deadline - now) / (len(plan) - i)
            state = {"res": None}

            def progress(res, op=op, row=row):
                state["res"] = res
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{op} {row['bucket']} best {res.best_ms:.3f} ms", refresh=False)
            try:
                task = tasks.make_task(op, backend, shape, args.dtype, device)
                res = runner.tune_bucket(task, groups, spaces.heuristic(op, backend, shape), timer=timer,
                                         deadline=bucket_deadline, max_candidates=args.max_candidates,
                                         on_candidate=progress)
                if res.complete:
                    res = runner.confirm(task, res, timer=timer)
            except KeyboardInterrupt:
                interrupted, res = True, state["res"]
            except Exception as e:  # the heuristic itself fails for this shape: nothing to tune
                rows.append({**row, "status": f"failed: {type(e).__name__}: {e}"[:120]})
                continue
            if res is not None and res.best is not None:
                _save(op, backend, device, shape, res, args)
                status = "tuned" if res.complete else "partial (interrupted)" if interrupted else "partial (budget)"
                rows.append({**row, "config": res.best, "ms": res.best_ms, "heuristic_ms": res.heuristic_ms, "status": status})
                plots.setdefault(op, []).append({"bucket": row["bucket"], "candidates": res.candidates,
                                                 "heuristic": res.heuristic, "best": res.best})
            if interrupted:
                break
        if bar is not None:
            bar.close()
    print(report.table(rows))
    if not args.no_plots:
        folder = pathlib.Path(args.plots) if args.plots else root / dev.key / "plots"
        for op, buckets in plots.items():
            path = report.plot(op, buckets, folder)
            if path:
                print(f"plot: {path}")
    if interrupted:
        print("interrupted: finished buckets and the best-so-far were saved; --resume continues", file=sys.stderr)
        return 130
    return 0


def _save(op, backend, device, shape, res, args) -> None:
    tuned.store(op, backend=backend, device=device, shape=shape, config=res.best, time_ms=res.best_ms,
                heuristic_ms=res.heuristic_ms,
                extra={"complete": res.complete, "heuristic": res.heuristic, "candidates": res.candidates,
                       "failed": res.failed, "tuner": {"reps": args.reps, "max_candidates": args.max_candidates}})


def _default_memory_limit() -> float:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size / 4
    except (ValueError, OSError):
        return 8e9


def _progress(total: int, disabled: bool):
    if disabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="cfg", file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------- managing configs


def _op_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.glob("*.json") if p.name != "blacklist.json") if folder.is_dir() else []


def cmd_list(args) -> int:
    device = _device(args)
    key = tuned.device_key(device)
    print(f"device {key}; cache {tuned.cache_root()}")
    found = False
    for label, folder in (("user", _user_dir(device)), ("shipped", tuned.SHIPPED / key)):
        for path in _op_files(folder):
            found = True
            op = path.stem
            for backend in ("tvm", "triton"):
                n = len(tuned.read_entries(path, op=op, key=key, backend=backend))
                if n:
                    print(f"  {label:8s} {op:24s} {backend:7s} {n} bucket(s)  {path}")
    others = [p.name for p in tuned.cache_root().iterdir()
              if p.is_dir() and p.name != key and p.name.startswith(("cpu-", "cuda-"))] \
        if tuned.cache_root().is_dir() else []
    if others:
        print(f"  other devices in the cache (not used here): {', '.join(sorted(others))}")
    if not found:
        print("  no tuned configs for this device: kernels use their heuristic defaults")
    return 0


def cmd_show(args) -> int:
    if not args.target:
        raise ValueError("show: expected an OP, e.g. `hysparse autotune show attention.fwd`")
    device = _device(args)
    op = shapes.op_name(args.target)
    rows = []
    for backend in ("tvm", "triton"):
        for entry in tuned.entries(op, backend=backend, device=device).values():
            rows.append({"op": f"{op} ({backend})", "bucket": report.fmt_shape(entry.get("shape") or {}),
                         "config": entry["config"], "ms": entry.get("time_ms"), "heuristic_ms": entry.get("heuristic_ms"),
                         "status": "complete" if entry.get("complete", True) else "partial"})
    if not rows:
        print(f"no tuned configs for {op} on {tuned.device_key(device)}")
        return 0
    print(report.table(rows))
    return 0


def cmd_export(args) -> int:
    if not args.target:
        raise ValueError("export: expected a DIR")
    device = _device(args)
    src = _user_dir(device)
    dst = pathlib.Path(args.target) / src.name
    n = 0
    for path in sorted(src.glob("*.json")) if src.is_dir() else []:
        tuned.write_json_atomic(dst / path.name, __import__("json").loads(path.read_text()))
        n += 1
    print(f"exported {n} file(s) to {dst}")
    return 0


def cmd_import(args) -> int:
    import json
    import warnings

    if not args.target:
        raise ValueError("import: expected a DIR written by `hysparse autotune export`")
    device = _device(args)
    key = tuned.device_key(device)
    folder = pathlib.Path(args.target)
    if not folder.is_dir():
        raise ValueError(f"import: expected a folder written by `hysparse autotune export`, got {str(folder)!r} "
                         f"({'not a folder' if folder.exists() else 'does not exist'})")
    folder = folder / key if (folder / key).is_dir() else folder
    found = _op_files(folder)
    if not found:
        raise ValueError(f"import: no tuned-config files (*.json) for device {key} in {folder}")
    n = skipped = 0
    for path in found:
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            warnings.warn(f"{path}: not JSON ({e}); not imported", tuned.TunedConfigWarning, stacklevel=2)
            skipped += 1
            continue
        op = data.get("op") if isinstance(data, dict) else None
        for backend in sorted((data.get("backends") or {}) if isinstance(data, dict) else {}):
            why = tuned.check_file(data, op=op or path.stem, key=key, backend=backend)
            if why:
                warnings.warn(f"{path} ({backend}): {why}; not imported", tuned.TunedConfigWarning, stacklevel=2)
                skipped += 1
                continue
            for entry in data["backends"][backend]["entries"].values():
                extra = {k: v for k, v in entry.items() if k not in ("fixed", "bucket", "dtype", "shape", "config", "time_ms",
                                                                     "heuristic_ms", "date")}
                tuned.store(op, backend=backend, device=device, shape=entry["shape"], config=entry["config"],
                            time_ms=entry.get("time_ms"), heuristic_ms=entry.get("heuristic_ms"), extra=extra)
                n += 1
    print(f"imported {n} entr{'y' if n == 1 else 'ies'} into {_user_dir(device)}" + (f"; {skipped} part(s) refused" if skipped else ""))
    return 0 if not skipped else 1


def cmd_clear(args) -> int:
    device = _device(args)
    folder = _user_dir(device)
    n = 0
    if folder.is_dir():
        with tuned.file_lock(folder / ".write.lock"):
            for path in folder.glob("*.json"):
                path.unlink()
                n += 1
    tuned.invalidate()
    print(f"removed {n} file(s) from {folder}")
    return 0
