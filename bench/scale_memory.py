"""Per-rank memory of training the zoo's full-size models with FSDP2 (+ expert parallelism), from
the IR's parameter counts (``ir.accounting.param_count``): arithmetic, nothing is run.

    python bench/scale_memory.py [--gpu-gib 80] [--tokens 4096] [--markdown]

Per rank, with ``N`` ranks, ``ep`` ranks per expert group, the weights kept in fp32 as the
trainer keeps them (``--dtype float32``) and AdamW:

* states: ``16 B`` per parameter (fp32 weight 4, gradient 4, AdamW's two moments 8), sharded
  over all ``N`` ranks: FSDP2 shards the dense parameters over the ``dp`` mesh, and each
  expert is held by one ``ep`` rank and FSDP-sharded over the ``N / ep`` ranks of ``edp``.
* gathered: FSDP2 unshards one decoder block at a time (and prefetches the next): two blocks of
  fp32 weights plus their gradients before the reduce-scatter; a MoE block holds ``E / ep`` of
  its experts on a rank, so expert parallelism shrinks this term. The root group (embedding, LM
  head, final norm) stays gathered from its forward to its backward, with its gradients.
* logits: ``tokens x vocab`` fp32 logits and their gradient.
* activations: ``34 * hidden`` bytes per token per layer in 16-bit (Korthikanti et al. 2022,
  attention without the ``s^2`` term as with flash attention), doubled for fp32; with full
  activation checkpointing only each layer's fp32 input (``4 * hidden`` bytes per token) is
  kept plus one layer's full set. MoE layers are counted like dense ones (their routed FFN keeps
  ``k`` expert activations of ``moe_intermediate`` each per token, comparable to a dense FFN's).
  This term is an estimate; the others are exact counts.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

GIB = 1024 ** 3
STATE_BYTES = 16  # fp32 weight + fp32 gradient + AdamW exp_avg + exp_avg_sq
WEIGHT_BYTES = 4


@dataclass(frozen=True)
class Layout:
    model: str
    nodes: int
    gpus_per_node: int
    ep: int

    @property
    def ranks(self) -> int:
        return self.nodes * self.gpus_per_node


# The layouts the README recommends on 80 GiB GPUs (8 per node; the expert group inside a node,
# where all_to_all runs over NVLink).
LAYOUTS = (
    Layout("mimo-7b", 1, 8, 1),
    Layout("hysparse-7b", 1, 8, 1),
    Layout("hysparse-80b-a3b", 4, 8, 8),
    Layout("mimo-v2-flash", 16, 8, 8),
)


def block_params(graph) -> list[int]:
    """Parameters of each decoder block: ``(attention + norms + dense FFN or router + shared, experts)``."""
    from hysparse_kernels.ir.accounting import attention_params, ffn_params
    from hysparse_kernels.ir.graph import MoE

    out = []
    h = graph.hidden
    for layer in graph.layers:
        a = attention_params(h, layer, layer.pattern) + 2 * h
        total, _ = ffn_params(h, layer.ffn)
        if isinstance(layer.ffn, MoE):
            experts = layer.ffn.num_experts * 3 * h * layer.ffn.intermediate
            out.append((a + total - experts, experts, layer.ffn.num_experts))
        else:
            out.append((a + total, 0, 1))
    return out


def per_rank(name: str, ranks: int, ep: int, tokens: int, checkpointing: bool) -> dict:
    """Bytes per rank of each term for model ``name`` on ``ranks`` ranks with expert groups of ``ep``."""
    from hysparse_kernels.ir.accounting import param_count
    from hysparse_kernels.models import get_config

    graph = get_config(name).to_graph()
    pc = param_count(graph)
    if ranks % ep:
        raise ValueError(f"ep: expected a divisor of {ranks} ranks, got {ep}")
    blocks = block_params(graph)
    for dense, experts, n_exp in blocks:
        if experts and n_exp % ep:
            raise ValueError(f"ep: expected a divisor of {name}'s {n_exp} experts, got {ep}")
    local_block = max(dense + experts // ep for dense, experts, _ in blocks)
    root = pc.embedding + pc.lm_head + graph.hidden
    h, L = graph.hidden, graph.num_layers + (graph.mtp.num_layers if graph.mtp is not None else 0)
    full_layer = 2 * 34 * h * tokens  # fp32
    acts = (4 * h * tokens * L + full_layer) if checkpointing else full_layer * L
    terms = {
        "params": pc.total,
        "states": STATE_BYTES * pc.total / ranks,
        "gathered": 2 * 2 * WEIGHT_BYTES * local_block + 2 * WEIGHT_BYTES * root,
        "logits": 2 * 4 * tokens * graph.vocab,
        "activations": acts,
    }
    terms["total"] = terms["states"] + terms["gathered"] + terms["logits"] + terms["activations"]
    terms["local_block_params"] = local_block
    return terms


def fewest_ranks(name: str, ep: int, tokens: int, gpu_bytes: float, per_node: int = 8) -> int:
    """The fewest ranks (whole nodes of ``per_node``) whose per-rank total fits ``gpu_bytes``
    with activation checkpointing."""
    for nodes in range(1, 1025):
        n = nodes * per_node
        if n % ep == 0 and per_rank(name, n, ep, tokens, True)["total"] <= gpu_bytes:
            return n
    return math.inf


def table(gpu_gib: float, tokens: int) -> str:
    rows = ["| model | params | layout (H100 80 GiB, 8 per node) | states / rank | gathered / rank | logits | "
            "activations (no ckpt / ckpt) | total / rank (no ckpt / ckpt) | fewest GPUs (ckpt) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for lay in LAYOUTS:
        a = per_rank(lay.model, lay.ranks, lay.ep, tokens, False)
        b = per_rank(lay.model, lay.ranks, lay.ep, tokens, True)
        least = fewest_ranks(lay.model, lay.ep, tokens, gpu_gib * GIB)
        rows.append(
            f"| {lay.model} | {a['params'] / 1e9:.1f} B | {lay.nodes} node(s) x {lay.gpus_per_node}: dp {lay.ranks}, "
            f"ep {lay.ep} | {a['states'] / GIB:.1f} GiB | {a['gathered'] / GIB:.1f} GiB | {a['logits'] / GIB:.1f} GiB | "
            f"{a['activations'] / GIB:.1f} / {b['activations'] / GIB:.1f} GiB | {a['total'] / GIB:.1f} / "
            f"{b['total'] / GIB:.1f} GiB | {least} |")
    return "\n".join(rows)


def ep_bytes_per_step(name: str, ep: int, tokens: int, element_size: int = 4) -> float:
    """Bytes one rank's expert-parallel ``all_to_all_single`` calls send to the other ranks per
    training step under uniform routing: per MoE layer its ``tokens * k`` rows, ``(ep - 1) / ep``
    of them remote, out and back in the forward and again in the backward."""
    from hysparse_kernels.ir.graph import MoE
    from hysparse_kernels.models import get_config

    graph = get_config(name).to_graph()
    moe = [layer.ffn for layer in graph.layers if isinstance(layer.ffn, MoE)]
    return sum(4 * tokens * f.top_k * (ep - 1) / ep * graph.hidden * element_size for f in moe)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (default 80: H100)")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per rank per micro-batch (default 4096)")
    args = p.parse_args(argv)
    print(table(args.gpu_gib, args.tokens))
    print()
    for lay in LAYOUTS:
        for ep in sorted({1, lay.ep}):
            t = per_rank(lay.model, lay.ranks, ep, args.tokens, True)
            print(f"{lay.model:18s} N={lay.ranks:4d} ep={ep}: largest gathered block {t['local_block_params'] / 1e9:.2f} B "
                  f"params, gathered {t['gathered'] / GIB:.1f} GiB, total (ckpt) {t['total'] / GIB:.1f} GiB")
    print()
    for lay in LAYOUTS:
        if lay.ep > 1:
            fp32, bf16 = (ep_bytes_per_step(lay.model, lay.ep, args.tokens, e) for e in (4, 2))
            print(f"{lay.model:18s} ep={lay.ep}: all_to_all per rank per step ({args.tokens} tokens, uniform routing): "
                  f"{fp32 / 1e9:.1f} GB in fp32, {bf16 / 1e9:.1f} GB in bf16")


if __name__ == "__main__":
    main()
