"""The final table and the per-op plots of a tuning run."""

from __future__ import annotations

import json
import pathlib


def fmt_config(cfg: dict | None) -> str:
    return "-" if not cfg else ",".join(f"{k}={v}" for k, v in sorted(cfg.items()))


def fmt_shape(shape: dict) -> str:
    short = {"batch": "B", "q_heads": "Hq", "kv_heads": "Hkv", "seq_q": "Sq", "seq_k": "Sk", "qk_dim": "Dqk",
             "v_dim": "Dv", "window": "W", "block_size": "BS", "topk": "k", "tokens": "T", "hidden": "H",
             "experts": "E", "top_k": "K", "intermediate": "I", "dtype": "dtype"}
    return ",".join(f"{short.get(k, k)}={v}" for k, v in shape.items() if v is not None)


def table(rows: list[dict]) -> str:
    """Rows: ``{"op", "bucket", "config", "ms", "heuristic_ms", "status"}`` -> an aligned text table."""
    head = ("op", "shape", "best config", "time ms", "heuristic ms", "speed-up", "status")
    body = []
    for r in rows:
        sp = r["heuristic_ms"] / r["ms"] if r.get("ms") and r.get("heuristic_ms") else None
        body.append((r["op"], r["bucket"], fmt_config(r.get("config")),
                     f"{r['ms']:.3f}" if r.get("ms") else "-", f"{r['heuristic_ms']:.3f}" if r.get("heuristic_ms") else "-",
                     f"{sp:.2f}x" if sp else "-", r.get("status", "")))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def plot(op: str, buckets: list[dict], folder) -> pathlib.Path | None:
    """PNG of every candidate's time per bucket (heuristic and best marked); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    heights = [0.8 + 0.22 * len(b["candidates"]) for b in buckets]
    fig, axes = plt.subplots(len(buckets), 1, figsize=(8, sum(heights) + 0.6 * len(buckets)), squeeze=False,
                             gridspec_kw={"height_ratios": heights, "hspace": 0.7})
    for ax, b in zip(axes[:, 0], buckets):
        cands = sorted(b["candidates"], key=lambda c: c["ms"])
        colors = ["tab:green" if c["config"] == b["best"] else "tab:orange" if c["config"] == b["heuristic"]
                  else "tab:blue" for c in cands]
        ax.barh(range(len(cands)), [c["ms"] for c in cands], color=colors)
        ax.set_yticks(range(len(cands)))
        ax.set_yticklabels([fmt_config(c["config"]) for c in cands], fontsize=6)
        ax.invert_yaxis()  # fastest on top
        ax.set_xlabel("ms (median)", fontsize=7)
        ax.set_title(f"{op}  {b['bucket']}   green: kept, orange: heuristic", fontsize=8)
    path = folder / f"{op}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
