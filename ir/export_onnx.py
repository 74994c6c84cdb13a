"""ONNX export of a ModelGraph, for inspection and interop.

The model's nodes are standard ONNX ops (Gather, RMSNormalization, MatMul, Sigmoid, Mul, Add)
plus custom ops in the ``hysparse`` domain whose attributes carry the IR:

* ``hysparse.Attention``: attributes ``pattern`` ("full" | "swa" | "sparse"), head geometry
  (``q_heads``, ``kv_heads``, ``qk_dim``, ``v_dim``, ``rope_dim``, ``value_scale``), and per
  pattern ``window``, ``sink``, ``topk``, ``block_size``, ``gate``, ``kv_owner``. A full layer
  outputs its K and V (the cache its sparse layers read) and, when it feeds sparse layers,
  ``block_scores``; a sparse layer takes its owner's K, V and top-k indices as inputs, so the
  KV sharing is visible as graph edges.
* ``hysparse.TopKBlocks``: block scores -> top-k block indices (``k``, ``block_size``).
* ``hysparse.MoE``: router, experts (stacked ``[E, ...]`` weights), routing attributes.
* ``hysparse.MTP``: the MTP blocks (``num_layers``, pattern attributes), draft logits.

Weights are graph inputs with their shapes (no data), so even a 309B model exports in
milliseconds; ``input_ids`` is ``[batch, seq_len]`` with a symbolic batch.

Example::

    model = to_onnx(graph, seq_len=128, path="model.onnx")
    onnx.checker.check_model(model)
"""

from __future__ import annotations

from .graph import Dense, ModelGraph, MoE
from .passes import assign_kv_owners, selection_sources
from .patterns import Full, OracleSparse, SlidingWindow

DOMAIN = "hysparse"
ONNX_OPSET = 23  # RMSNormalization
EPS = 1e-6


def _onnx():
    try:
        import onnx
    except ModuleNotFoundError as exc:  # the `export` extra
        raise ModuleNotFoundError("to_onnx needs onnx: pip install 'hysparse-kernels[export]'") from exc
    return onnx


def _pattern_attrs(pattern) -> dict:
    if isinstance(pattern, Full):
        return {"pattern": "full", "causal": int(pattern.causal)}
    if isinstance(pattern, SlidingWindow):
        return {"pattern": "swa", "window": pattern.window, "sink": int(pattern.sink)}
    assert isinstance(pattern, OracleSparse)
    return {"pattern": "sparse", "topk": pattern.topk, "block_size": pattern.block_size,
            "window": -1 if pattern.window is None else pattern.window, "sink": int(pattern.sink),
            "gate": pattern.gate}


def _dims_attrs(d) -> dict:
    return {"q_heads": d.q_heads, "kv_heads": d.kv_heads, "qk_dim": d.qk_dim, "v_dim": d.v_dim,
            "rope_dim": d.rope_dim, "value_scale": float(d.value_scale), "rope_theta": float(d.rope_theta)}


class _Builder:
    def __init__(self, onnx, elem_type):
        self.onnx, self.helper, self.elem = onnx, onnx.helper, elem_type
        self.nodes, self.inputs = [], []

    def weight(self, name: str, shape) -> str:
        self.inputs.append(self.helper.make_tensor_value_info(name, self.elem, list(shape)))
        return name

    def node(self, op, inputs, outputs, name, domain="", **attrs):
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def rmsnorm(self, x, weight_name, hidden, out):
        w = self.weight(weight_name, [hidden])
        return self.node("RMSNormalization", [x, w], [out], out, axis=-1, epsilon=EPS)

    def attention_weights(self, prefix, hidden, d, pattern):
        """(q, k, v, o, extra...) weight inputs for one attention block; [in, out] layout for MatMul."""
        names = [self.weight(f"{prefix}.q_proj.weight", [hidden, d.q_heads * d.qk_dim])]
        has_kv = not isinstance(pattern, OracleSparse) or pattern.window is not None
        if has_kv:
            names.append(self.weight(f"{prefix}.k_proj.weight", [hidden, d.kv_heads * d.qk_dim]))
            names.append(self.weight(f"{prefix}.v_proj.weight", [hidden, d.kv_heads * d.v_dim]))
        names.append(self.weight(f"{prefix}.o_proj.weight", [d.q_heads * d.v_dim, hidden]))
        if isinstance(pattern, OracleSparse):
            gates = 2 if pattern.window is not None else 1
            names.append(self.weight(f"{prefix}.gate_proj.weight", [hidden, gates * d.q_heads]))
        if getattr(pattern, "sink", False):
            branches = 2 if isinstance(pattern, OracleSparse) and pattern.window is not None else 1
            names.append(self.weight(f"{prefix}.attention_sink", [branches, d.q_heads]))
        return names

    def ffn(self, x, prefix, hidden, ffn, out):
        if isinstance(ffn, Dense):
            i = ffn.intermediate
            g = self.node("MatMul", [x, self.weight(f"{prefix}.gate_proj.weight", [hidden, i])], [f"{out}.gate"], f"{out}.gate")
            u = self.node("MatMul", [x, self.weight(f"{prefix}.up_proj.weight", [hidden, i])], [f"{out}.up"], f"{out}.up")
            s = self.node("Sigmoid", [g], [f"{out}.sig"], f"{out}.sig")
            a = self.node("Mul", [g, s], [f"{out}.silu"], f"{out}.silu")
            m = self.node("Mul", [a, u], [f"{out}.act"], f"{out}.act")
            return self.node("MatMul", [m, self.weight(f"{prefix}.down_proj.weight", [i, hidden])], [out], out)
        assert isinstance(ffn, MoE)
        e, i = ffn.num_experts, ffn.intermediate
        ins = [x, self.weight(f"{prefix}.gate.weight", [hidden, e]),
               self.weight(f"{prefix}.experts.gate_up_proj", [e, hidden, 2 * i]),
               self.weight(f"{prefix}.experts.down_proj", [e, i, hidden])]
        if ffn.correction_bias:
            ins.append(self.weight(f"{prefix}.gate.e_score_correction_bias", [e]))
        if ffn.shared_experts:
            ins.append(self.weight(f"{prefix}.shared_experts.gate_up_proj", [hidden, 2 * i * ffn.shared_experts]))
            ins.append(self.weight(f"{prefix}.shared_experts.down_proj", [i * ffn.shared_experts, hidden]))
        return self.node("MoE", ins, [out], out, domain=DOMAIN, num_experts=e, top_k=ffn.top_k, intermediate=i,
                         scoring=ffn.scoring, n_group=ffn.n_group, topk_group=ffn.topk_group,
                         shared_experts=ffn.shared_experts, correction_bias=int(ffn.correction_bias),
                         routed_scaling=float(ffn.routed_scaling))


def to_onnx(graph: ModelGraph, seq_len: int, *, dtype: str = "bfloat16", path: str | None = None):
    """An ``onnx.ModelProto`` of ``graph`` for ``input_ids [batch, seq_len]``; saved to ``path``
    when given. Weights are typed graph inputs (``dtype``), without data."""
    onnx = _onnx()
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len: expected a positive int, got {seq_len!r}")
    elem = {"bfloat16": onnx.TensorProto.BFLOAT16, "float16": onnx.TensorProto.FLOAT16,
            "float32": onnx.TensorProto.FLOAT}.get(dtype)
    if elem is None:
        raise ValueError(f"dtype: expected one of ['bfloat16', 'float16', 'float32'], got {dtype!r}")
    owners = assign_kv_owners(graph)  # validates
    sources = selection_sources(graph)
    b, helper, h = _Builder(onnx, elem), onnx.helper, graph.hidden
    ids = helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", seq_len])
    embed = b.weight("model.embed_tokens.weight", [graph.vocab, h])
    x = b.node("Gather", [embed, "input_ids"], ["h.embed"], "embed", axis=0)
    caches: dict[int, tuple[str, str]] = {}
    topk: dict[tuple[int, int], str] = {}
    for layer, own in zip(graph.layers, owners):
        i, pat, p = layer.index, layer.pattern, f"model.layers.{layer.index}"
        n1 = b.rmsnorm(x, f"{p}.input_layernorm.weight", h, f"h.{i}.attn_norm")
        weights = b.attention_weights(f"{p}.self_attn", h, layer, pat)
        attrs = {**_pattern_attrs(pat), **_dims_attrs(layer), "layer": i,
                 "kv_owner": -1 if own.reads is None else own.reads}
        outputs = [f"h.{i}.attn"]
        ins = [n1] + weights
        if isinstance(pat, Full):
            outputs += [f"kv.{i}.k", f"kv.{i}.v"]
            caches[i] = (outputs[1], outputs[2])
            if i in sources:
                outputs.append(f"kv.{i}.block_scores")
                attrs["block_size"] = sources[i][0].block_size
        elif isinstance(pat, OracleSparse):
            ins += [*caches[own.reads], topk[(own.reads, pat.topk)]]
        res = b.node("Attention", ins, outputs, f"attention.{i}", domain=DOMAIN, **attrs)
        if isinstance(pat, Full) and i in sources:
            for sel in sources[i]:
                name = f"kv.{i}.top{sel.topk}"
                b.node("TopKBlocks", [res[3]], [name], name, domain=DOMAIN, k=sel.topk, block_size=sel.block_size,
                       source_layer=i, consumers=list(sel.sparse_layers))
                topk[(i, sel.topk)] = name
        attn_out = outputs[0]
        x = b.node("Add", [x, attn_out], [f"h.{i}.mid"], f"h.{i}.mid")
        n2 = b.rmsnorm(x, f"{p}.post_attention_layernorm.weight", h, f"h.{i}.ffn_norm")
        f = b.ffn(n2, f"{p}.mlp", h, layer.ffn, f"h.{i}.ffn")
        x = b.node("Add", [x, f], [f"h.{i}.out"], f"h.{i}.out")
    final = b.rmsnorm(x, "model.norm.weight", h, "h.final_norm")
    head = embed if graph.tie_embeddings else b.weight("lm_head.weight", [graph.vocab, h])
    head_t = b.node("Transpose", [head], ["lm_head.t"], "lm_head.t", perm=[1, 0])
    b.node("MatMul", [final, head_t], ["logits"], "lm_head")
    outputs = [helper.make_tensor_value_info("logits", elem, ["batch", seq_len, graph.vocab])]
    if graph.mtp is not None:
        m = graph.mtp
        ins = [x, "input_ids", embed, head]
        for j in range(m.num_layers):
            q = f"model.mtp.layers.{j}"
            ins += [b.weight(f"{q}.enorm.weight", [h]), b.weight(f"{q}.hnorm.weight", [h]),
                    b.weight(f"{q}.eh_proj.weight", [2 * h, h])]
            ins += b.attention_weights(f"{q}.self_attn", h, m.attention, m.pattern)
            ins += [b.weight(f"{q}.input_layernorm.weight", [h]), b.weight(f"{q}.post_attention_layernorm.weight", [h])]
            ins += [b.weight(f"{q}.mlp.{w}", s) for w, s in _ffn_shapes(h, m.ffn)]
            ins.append(b.weight(f"{q}.final_layernorm.weight", [h]))
        b.node("MTP", ins, ["mtp_logits"], "mtp", domain=DOMAIN, num_layers=m.num_layers,
               ffn=m.ffn.kind, **_pattern_attrs(m.pattern), **_dims_attrs(m.attention))
        outputs.append(helper.make_tensor_value_info("mtp_logits", elem, ["batch", seq_len, m.num_layers, graph.vocab]))
    g = helper.make_graph(b.nodes, graph.name or "hysparse-graph", [ids] + b.inputs, outputs)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)],
                              producer_name="hysparse-kernels")
    if graph.notes:
        helper.set_model_props(model, {"notes": "\n".join(graph.notes)})
    if path is not None:
        onnx.save(model, path)
    return model


def _ffn_shapes(h, ffn):
    if isinstance(ffn, Dense):
        i = ffn.intermediate
        return [("gate_proj.weight", [h, i]), ("up_proj.weight", [h, i]), ("down_proj.weight", [i, h])]
    e, i = ffn.num_experts, ffn.intermediate
    return [("gate.weight", [h, e]), ("experts.gate_up_proj", [e, h, 2 * i]), ("experts.down_proj", [e, i, h])]
