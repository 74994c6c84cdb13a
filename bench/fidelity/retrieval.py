"""Long-context retrieval at tiny scale: HySparse vs full attention vs hybrid SWA (the HySparse
paper: RULER at 32K, 89.3 HySparse, 88.2 full attention, 84.2 hybrid SWA, 7B models).

    python bench/fidelity/retrieval.py [--seeds 0 1 2] [--steps 1500] [--copy-steps 0] [--batch 16]
        [--context 96] [--keys 4] [--queries 2] [--distractors 1] [--eval-contexts 96 192 384]
        [--models hysparse hybrid-swa full] [--out bench/out/fidelity/retrieval]
    python bench/fidelity/retrieval.py --combine DIR [DIR ...] --out OUT   # one table from several runs

A RULER-like task (byte tokens): ``--keys`` lines ``key XY12`` (``--key-len`` capital letters,
``--value-len`` digits) planted at random depths of ``--context`` tokens of RULER's noise
sentences (``--filler noise``, lower case) or the demo corpus's lines, ``--distractors`` of them
with a key one letter away from a queried key, then ``--queries`` lines ``? XY`` each followed by
its value. Training loss: next-token CE over the whole sequence plus the CE of the value digits.
``--copy-steps`` first trains on copy sequences alone (a random string written twice), then
``--copy-fraction`` of every batch stays a copy sequence: the induction a from-scratch tiny model
needs before it can look a key up. Accuracy: a query counts when all value digits are the arg-max
predictions (teacher-forced, equal to greedy decoding of the digits), reported by the depth of the
queried key (quarters of the context) and by context length, including lengths longer than trained.

Three models from the zoo's `tiny-hysparse-7b` graph (8 layers, width 64, 4 query / 2 KV heads):
the HySparse model itself (full layers 0, 4, 7; the others sparse top-2 of 16-token blocks with a
16-token SWA branch), its hybrid-SWA twin (`ir.hybrid_swa_twin`, window 16: full layers 0, 6, 7)
and its full-attention twin; ``hybrid-swa-nosink`` (the hybrid-SWA twin without sinks) is the
sink experiment's control. Their parameter counts are printed (the sparse layers' gates and sinks
are the only difference); the KV bytes per token at the longest evaluated context come from
`ir.kv_plan`. Same data, initial weights of shared parameters, and steps per seed.

Writes ``table.md``, ``result.json`` and ``accuracy.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from hysparse_kernels import dispatch, tuned
from hysparse_kernels.ir import Full, get_graph, hybrid_swa_twin, kv_plan, validate
from hysparse_kernels.models import HybridLM
from hysparse_kernels.training.data import ByteTokenizer, make_corpus

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # keys in capitals: the filler is lower case
# RULER's noise haystack: the same few sentences over and over, so the only thing left to learn
# in a sequence is where the planted keys are.
NOISE = ["the grass is green.", "the sky is blue.", "the sun is yellow.", "here we go.", "there and back again."]


def graphs() -> dict:
    g = get_graph("tiny-hysparse-7b")
    full = validate(dataclasses.replace(g, layers=tuple(dataclasses.replace(l, pattern=Full()) for l in g.layers),
                                        name="full-attention twin"))
    return {"hysparse": g, "hybrid-swa": hybrid_swa_twin(g, window=16), "full": full,
            # the sink experiment's control (not run by default): the hybrid-SWA twin without sinks
            "hybrid-swa-nosink": hybrid_swa_twin(g, window=16, sink=False)}


DEFAULT_MODELS = ("hysparse", "hybrid-swa", "full")


@dataclasses.dataclass
class Example:
    ids: list[int]
    answers: list[tuple[int, float]]  # (position of the first value digit, depth in [0, 1))
    value_len: int


def make_example(rng: random.Random, lines: list[str], tok: ByteTokenizer, context: int, keys: int, queries: int,
                 distractors: int, key_len: int = 4, value_len: int = 4) -> Example:
    """One sequence: filler with planted ``key ... = value`` lines (``key_len`` letters, ``value_len``
    digits), then the queries and their values."""
    if keys > len(LETTERS) ** key_len // 2:
        raise ValueError(f"keys: expected at most {len(LETTERS) ** key_len // 2} for key_len {key_len}, got {keys}")
    names = set()
    while len(names) < keys:
        names.add("".join(rng.choice(LETTERS) for _ in range(key_len)))
    names = sorted(names)
    rng.shuffle(names)
    value = lambda: f"{rng.randrange(10 ** value_len):0{value_len}d}"  # noqa: E731
    values = {k: value() for k in names}
    asked = names[:queries]
    planted = [(k, values[k]) for k in names]
    for k in asked[:distractors]:  # a key one letter away, with its own value
        i = rng.randrange(key_len)
        near = k[:i] + rng.choice([c for c in LETTERS if c != k[i]]) + k[i + 1:]
        if near not in values:
            planted.append((near, value()))
    rng.shuffle(planted)  # the asked keys land at random depths, not in the first slots
    filler = []
    while sum(len(x) + 1 for x in filler) < context:
        filler.append(rng.choice(lines))
    slots = sorted(rng.choices(range(len(filler) + 1), k=len(planted)))  # several may share a gap
    body, depth_of = [], {}
    placed = 0
    for i in range(len(filler) + 1):
        while placed < len(slots) and slots[placed] == i:
            k, v = planted[placed]
            depth_of[k] = sum(len(x) + 1 for x in body)
            body.append(f"key {k}{v}")
            placed += 1
        if i < len(filler):
            body.append(filler[i])
    text = "\n".join(body) + "\n"
    total = len(text)
    ids = tok.encode(text, bos=True)
    answers = []
    for k in asked:
        ids += tok.encode(f"? {k}")
        answers.append((len(ids), depth_of[k] / total))
        ids += tok.encode(values[k] + "\n")
    return Example(ids, answers, value_len)


def copy_example(rng: random.Random, tok: ByteTokenizer, length: int) -> Example:
    """A random string of letters and digits written twice: the repetition that teaches a model
    to look back and copy (induction), which pretraining text is full of and the planted keys alone
    are too rare to teach in a few hundred steps."""
    text = "".join(rng.choice(LETTERS + "0123456789") for _ in range(length))
    return Example(tok.encode(f"{text}\n{text}\n", bos=True), [], 0)


def batch_of(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[B, S]`` (pad = 0, masked out; S rounded up to a multiple of 64 so the
    compiled kernels see few shapes) and the answer mask ``[B, S]`` (value digits)."""
    S = -(-max(len(e.ids) for e in examples) // 64) * 64
    ids = torch.zeros(len(examples), S, dtype=torch.long)
    answer = torch.zeros(len(examples), S, dtype=torch.bool)
    for b, e in enumerate(examples):
        ids[b, :len(e.ids)] = torch.tensor(e.ids)
        for pos, _ in e.answers:
            answer[b, pos:pos + e.value_len] = True
    return ids, answer


def loss_of(model, ids: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, CE of the value digits alone): next-token CE over the real tokens (mean per
    sequence, then over the batch, so a short copy sequence counts as much as a long haystack)
    plus the CE of the queried values' digits (so the retrieval signal is not drowned by the
    filler)."""
    logits = model.logits(model.hidden_states(ids))[:, :-1]
    target, valid, ans = ids[:, 1:], ids[:, 1:] != 0, answer[:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    per_sequence = (ce * valid).sum(1) / valid.sum(1).clamp(min=1)  # every sequence weighs the same
    if not ans.any():  # copy sequences only
        return per_sequence.mean(), torch.tensor(float("nan"))
    answer_ce = ce[ans].mean()
    return per_sequence.mean() + answer_ce, answer_ce.detach()


@torch.no_grad()
def accuracy(model, examples: list[Example], batch: int = 16) -> list[tuple[float, bool]]:
    """(depth, all four digits right) per query."""
    out = []
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        ids, _ = batch_of(chunk)
        pred = model.logits(model.hidden_states(ids)).argmax(-1)  # [B, S]: prediction of position s + 1
        for b, e in enumerate(chunk):
            for pos, depth in e.answers:
                n = e.value_len
                out.append((depth, bool((pred[b, pos - 1:pos - 1 + n] == ids[b, pos:pos + n]).all())))
    return out


def train_one(name, graph, seed, args, lines, tok) -> dict:
    torch.manual_seed(seed)
    model = HybridLM(graph)
    if name != "hysparse":  # shared parameters start equal to the HySparse model's of this seed
        torch.manual_seed(seed)
        ref = HybridLM(graphs()["hysparse"]).state_dict()
        own = model.state_dict()
        model.load_state_dict({k: ref[k] if k in ref and ref[k].shape == v.shape else v for k, v in own.items()})
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng = random.Random(seed)
    task = (args.keys, args.queries, args.distractors, args.key_len, args.value_len)
    curve, answer_curve = [], []
    warmup = max(1, args.steps // 15)
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / warmup)
        n_copy = args.batch if step < args.copy_steps else round(args.copy_fraction * args.batch)
        ex = [make_example(rng, lines, tok, args.context, *task) for _ in range(args.batch - n_copy)]
        ex += [copy_example(rng, tok, rng.randrange(16, 49)) for _ in range(n_copy)]
        loss, answer_ce = loss_of(model, *batch_of(ex))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append(float(loss.detach()))
        answer_curve.append(float(answer_ce))
        if (step + 1) % args.log_every == 0:
            print(f"  {name} seed {seed} step {step + 1}: loss {statistics.fmean(curve[-20:]):.3f}, "
                  f"value-digit CE {statistics.fmean(answer_curve[-20:]):.3f}", flush=True)
    model.eval()
    result = {"model": name, "seed": seed, "curve": curve, "answer_curve": answer_curve, "params": sum(p.numel() for p in model.parameters()),
              "accuracy": {}, "by_depth": {}}
    for ctx in args.eval_contexts:
        erng = random.Random(10_000 + 97 * seed + ctx)
        ex = [make_example(erng, lines, tok, ctx, *task) for _ in range(args.eval_n)]
        hits = accuracy(model, ex)
        result["accuracy"][ctx] = statistics.fmean(h for _, h in hits)
        result["by_depth"][ctx] = [statistics.fmean([h for d, h in hits if q / 4 <= d < (q + 1) / 4] or [float("nan")])
                                   for q in range(4)]
    return result


def escape_step(answer_curve: list[float], threshold: float = 1.0, window: int = 20) -> int | None:
    """The first step (1-based) at which the value-digit CE, averaged over the last ``window``
    steps, falls below ``threshold`` nats (ln 10 = 2.30 is chance): when the model left the
    plateau and started looking keys up. ``None`` if it never did. Copy-only steps (NaN) are skipped."""
    recent = []
    for step, value in enumerate(answer_curve, 1):
        if value != value:  # NaN: a copy-only step
            continue
        recent = (recent + [value])[-window:]
        if len(recent) == window and statistics.fmean(recent) < threshold:
            return step
    return None


def _ms(values):
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f} ({', '.join(f'{v:.2f}' for v in values)})"


def plot(results, contexts, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(contexts), figsize=(4 * len(contexts), 3.5), squeeze=False)
    for ax, ctx in zip(axes[0], contexts):
        for name in dict.fromkeys(r["model"] for r in results):
            rows = [r["by_depth"][ctx] for r in results if r["model"] == name]
            mean = [statistics.fmean(v[q] for v in rows) for q in range(4)]
            ax.plot([0.125, 0.375, 0.625, 0.875], mean, marker="o", label=name)
        ax.set_title(f"context {ctx}")
        ax.set_xlabel("depth of the key")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("exact-match accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: list[dict], setting: dict, out: Path) -> str:
    """Write ``table.md``, ``result.json`` and ``accuracy.png`` of ``results`` (one dict per trained
    model and seed) under ``out``; return the table."""
    contexts = list(setting["eval_contexts"])
    models = list(dict.fromkeys(r["model"] for r in results))
    seeds = sorted({r["seed"] for r in results})
    longest = max(contexts)
    copy = f" (the first {setting['copy_steps']} on copy sequences alone)" if setting.get("copy_steps") else ""
    lines_out = [f"{setting['steps']} steps{copy} x {setting['batch']} sequences of {setting['context']} filler tokens, {setting['keys']} keys, "
                 f"{setting['queries']} queries, {setting['distractors']} distractors; seeds {seeds}; mean ± spread (per seed)", "",
                 "| model | parameters | KV bytes/token at " + str(longest) + " (fp32) | final loss | final value CE | "
                 "step value CE < 1 | " + " | ".join(f"accuracy @ {c}" for c in contexts) + " |",
                 "|---|---|---|---|---|---|" + "---|" * len(contexts)]
    for name in models:
        rs = [r for r in results if r["model"] == name]
        kv = kv_plan(graphs()[name], 1, longest, "float32").total_bytes / longest
        escapes = ", ".join(str(escape_step(r["answer_curve"]) or "never") for r in rs)
        lines_out.append(f"| {name} | {rs[0]['params']:,} | {kv:,.0f} | {_ms([statistics.fmean(r['curve'][-20:]) for r in rs])} | "
                         f"{_ms([statistics.fmean(r['answer_curve'][-20:]) for r in rs])} | {escapes} | "
                         + " | ".join(_ms([r["accuracy"][c] for r in rs]) for c in contexts) + " |")
    lines_out += ["", "accuracy by depth of the key (quarters), mean over seeds:", "",
                  "| model | context | 0-25% | 25-50% | 50-75% | 75-100% |", "|---|---|---|---|---|---|"]
    for name in models:
        for c in contexts:
            rows = [r["by_depth"][c] for r in results if r["model"] == name]
            cells = [statistics.fmean(v[q] for v in rows) for q in range(4)]
            lines_out.append(f"| {name} | {c} | " + " | ".join(f"{x:.2f}" for x in cells) + " |")
    table = "\n".join(lines_out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "result.json").write_text(json.dumps({"args": setting, "runs": results}, indent=2))
    plot(results, contexts, out / "accuracy.png")
    print(table)
    return table


# settings that may differ between runs put in one table (the rest must agree)
_PER_RUN = ("seeds", "models", "out", "combine", "log_every", "threads")


def combine(dirs: list[Path]) -> tuple[dict, list[dict]]:
    """The common setting and all runs of several ``result.json`` files (e.g. one per model and
    seed, trained as separate processes). Raises ``ValueError`` naming the directory whose file is
    missing or whose training setting differs from the first's."""
    setting, results = None, []
    for d in dirs:
        path = d / "result.json"
        if not path.is_file():
            raise ValueError(f"--combine: expected {path} (a run directory of this script), found no such file")
        data = json.loads(path.read_text())
        own = {k: v for k, v in data["args"].items() if k not in _PER_RUN}
        if setting is None:
            setting = own
        elif own != setting:
            diff = sorted(k for k in own.keys() | setting.keys() if own.get(k) != setting.get(k))
            raise ValueError(f"--combine: {d} was trained with other settings than {dirs[0]} ({', '.join(diff)})")
        for r in data["runs"]:  # JSON made the context keys strings
            r["accuracy"] = {int(c): v for c, v in r["accuracy"].items()}
            r["by_depth"] = {int(c): v for c, v in r["by_depth"].items()}
            results.append(r)
    return setting, results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--context", type=int, default=96, help="filler tokens of a training sequence")
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--distractors", type=int, default=1)
    ap.add_argument("--filler", choices=["noise", "corpus"], default="noise",
                    help="noise: RULER's repeated sentences; corpus: the generated demo corpus's lines")
    ap.add_argument("--copy-steps", type=int, default=0,
                    help="first steps on copy sequences alone (a random string written twice: teaches copying)")
    ap.add_argument("--copy-fraction", type=float, default=0.25,
                    help="share of each later batch that is a copy sequence")
    ap.add_argument("--key-len", type=int, default=2, help="letters per key")
    ap.add_argument("--value-len", type=int, default=2, help="digits per value")
    ap.add_argument("--eval-contexts", type=int, nargs="+", default=[96, 192, 384])
    ap.add_argument("--eval-n", type=int, default=48, help="sequences per evaluated context")
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(graphs()))
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny models: 1 is fastest)")
    ap.add_argument("--out", default="bench/out/fidelity/retrieval")
    ap.add_argument("--combine", nargs="+", metavar="DIR", default=None,
                    help="train nothing: one table of the result.json files under these run directories")
    args = ap.parse_args(argv)
    if args.combine:
        try:
            setting, results = combine([Path(d) for d in args.combine])
        except ValueError as e:
            ap.error(str(e))
        report(results, setting, Path(args.out))
        return 0
    if not 1 <= args.queries <= args.keys or args.distractors > args.queries or args.steps < 1 or args.context < 16:
        ap.error(f"expected 1 <= --queries <= --keys, --distractors <= --queries, --steps >= 1, --context >= 16; got "
                 f"{args.queries}, {args.keys}, {args.distractors}, {args.steps}, {args.context}")
    warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
    warnings.simplefilter("ignore", tuned.TunedConfigWarning)
    torch.set_num_threads(args.threads)
    tok = ByteTokenizer()
    lines = NOISE if args.filler == "noise" else make_corpus(5000, seed=123).splitlines()
    results = []
    for seed in args.seeds:
        for name in args.models:
            results.append(train_one(name, graphs()[name], seed, args, lines, tok))
            r = results[-1]
            print(f"seed {seed} {name}: loss {statistics.fmean(r['curve'][-20:]):.3f}, accuracy {r['accuracy']}",
                  flush=True)
    report(results, vars(args), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
