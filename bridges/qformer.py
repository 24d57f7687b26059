"""BLIP-2 Q-Former (BLAP) and MINT's instruction-aware Bridge-Net, on one Q-Former body.

Why our own layers: transformers' BERT with cross-attention is forced to be a causal decoder, and
its Blip2QFormerModel has no text branch for the stage-1 objectives. The body below follows the
LAVIS Q-Former (see ../shared/design/anchors.md §1.1-1.3):

- sequence = [queries ; text]; one LayerNorm + dropout over it (text gets word + position
  embeddings, queries none, no token-type embedding);
- self-attention shared by queries and text, under a caller-given mask (bidirectional by default);
- cross-attention to the audio features in every k-th layer (layers 0, k, 2k, ...), for query
  positions only;
- two FFNs per layer: queries use ``intermediate_query``/``output_query``, text the BERT FFN.

Parameter names follow BERT/LAVIS (``attention.self.query``, ``crossattention.self.key``,
``intermediate_query``), so a BERT checkpoint maps onto it by name; cross-attention is new and
random (std 0.02) and the query FFN is copied from the text FFN, as BLIP-2 initialises it.
Attention runs through ``scaled_dot_product_attention`` (flash/SDPA kernels where available).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from bridgebench.bridges.base import Bridge, output_init_problems
from bridgebench.runtime.references import pretrained_problem


class QFormerAttention(nn.Module):
    """Multi-head attention with BERT naming: ``self.{query,key,value}``, ``output.{dense,LayerNorm}``."""

    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float, dropout: float, attn_dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.self = nn.Module()
        self.self.query = nn.Linear(hidden, hidden)
        self.self.key = nn.Linear(kv_width, hidden)
        self.self.value = nn.Linear(kv_width, hidden)
        self.output = nn.Module()
        self.output.dense = nn.Linear(hidden, hidden)
        self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.output.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def _qkv(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._split(self.self.query(x)), self._split(self.self.key(context)), self._split(self.self.value(context))

    def explicit(self, x: torch.Tensor, context: torch.Tensor,
                 mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention probabilities [B, heads, Lq, Lk] and the update (``output.dense`` of the attended
        values, before dropout, residual and LayerNorm), without SDPA (which keeps no probabilities):
        for analysis (bench/stage1_probe.py), not training."""
        q, k, v = self._qkv(x, context)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        probs = logits.softmax(-1)
        return probs, self.output.dense((probs @ v).transpose(1, 2).reshape(x.shape))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``mask``: bool [B, 1 or Lq, Lk], True = may attend."""
        q, k, v = self._qkv(x, context)
        attn_mask = mask.unsqueeze(1) if mask is not None else None
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        out = out.transpose(1, 2).reshape(x.shape)
        return self.output.LayerNorm(self.output.dropout(self.output.dense(out)) + x)


def _ffn_parts(hidden: int, inner: int, eps: float, dropout: float) -> tuple[nn.Module, nn.Module]:
    """A BERT FFN as BERT's two modules: ``intermediate.dense`` and ``output.{dense,LayerNorm,dropout}``."""
    intermediate = nn.Module()
    intermediate.dense = nn.Linear(hidden, inner)
    output = nn.Module()
    output.dense = nn.Linear(inner, hidden)
    output.LayerNorm = nn.LayerNorm(hidden, eps=eps)
    output.dropout = nn.Dropout(dropout)
    return intermediate, output


def _ffn(intermediate: nn.Module, output: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = F.gelu(intermediate.dense(x))
    return output.LayerNorm(output.dropout(output.dense(h)) + x)


class QFormerLayer(nn.Module):
    def __init__(self, cfg, encoder_width: int, has_cross: bool, has_text: bool):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        drop, adrop = cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob
        self.attention = QFormerAttention(h, cfg.num_attention_heads, h, eps, drop, adrop)
        self.crossattention = (
            QFormerAttention(h, cfg.num_attention_heads, encoder_width, eps, drop, adrop) if has_cross else None
        )
        self.intermediate_query, self.output_query = _ffn_parts(h, cfg.intermediate_size, eps, drop)
        self.has_text = has_text
        if has_text:
            self.intermediate, self.output = _ffn_parts(h, cfg.intermediate_size, eps, drop)

    def forward(self, x, num_queries, self_mask, audio, audio_mask):
        x = self.attention(x, x, self_mask)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if self.crossattention is not None and num_queries:
            queries = self.crossattention(queries, audio, audio_mask)
        queries = _ffn(self.intermediate_query, self.output_query, queries)
        if text.shape[1]:
            if not self.has_text:
                raise RuntimeError("this Q-Former was built without its text branch")
            text = _ffn(self.intermediate, self.output, text)
        return torch.cat([queries, text], dim=1)


class QFormer(nn.Module):
    """The Q-Former body: learned queries (+ optional text) in, hidden states out."""

    def __init__(self, bert_config, encoder_width: int, num_queries: int, cross_attention_freq: int,
                 with_text: bool):
        super().__init__()
        cfg = bert_config
        self.config = cfg
        self.num_queries = num_queries
        self.with_text = with_text
        self.gradient_checkpointing = False
        h = cfg.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, h))
        self.embeddings = nn.Module()
        if with_text:
            self.embeddings.word_embeddings = nn.Embedding(cfg.vocab_size, h, padding_idx=cfg.pad_token_id)
            self.embeddings.position_embeddings = nn.Embedding(cfg.max_position_embeddings, h)
        self.embeddings.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.embeddings.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            QFormerLayer(cfg, encoder_width, i % cross_attention_freq == 0, with_text)
            for i in range(cfg.num_hidden_layers)
        )
        self.apply(self._init_weights)
        nn.init.normal_(self.query_tokens, std=cfg.initializer_range)

    def _init_weights(self, m: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def load_bert(self, bert_state: dict[str, torch.Tensor]) -> list[str]:
        """Copy BERT weights by name; the query FFN starts as a copy of the text FFN (BLIP-2).
        Returns the parameter names left at their random init (cross-attention and queries)."""
        state = {k.removeprefix("bert."): v for k, v in bert_state.items()}
        own = self.state_dict()
        new = {}
        for name in own:
            source = name
            if ".intermediate_query." in name:
                source = name.replace(".intermediate_query.", ".intermediate.")
            elif ".output_query." in name:
                source = name.replace(".output_query.", ".output.")
            if source not in state:
                continue
            value = state[source]
            if name.endswith("word_embeddings.weight") and value.shape[0] < own[name].shape[0]:
                grown = own[name].clone()  # added tokens ([DEC]) keep their random init
                grown[: value.shape[0]] = value
                value = grown
            if value.shape == own[name].shape:
                new[name] = value
        self.load_state_dict(new, strict=False)
        return sorted(set(own) - set(new))

    def forward(
        self,
        audio: Optional[torch.Tensor],
        audio_mask: Optional[torch.Tensor],
        input_ids: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        self_mask: Optional[torch.Tensor] = None,
        query_embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Hidden states of [queries ; text], shape [B, Q + L, H].

        ``self_mask`` (bool [B, Q+L, Q+L], True = may attend) sets who sees whom; the default is
        bidirectional over the non-padding positions. A text-only pass gives ``query_embeds`` with
        zero queries and no audio.
        """
        ref = audio if audio is not None else input_ids
        b = ref.shape[0]
        queries = self.query_tokens.expand(b, -1, -1) if query_embeds is None else query_embeds
        parts = [queries]
        masks = [torch.ones(b, queries.shape[1], dtype=torch.bool, device=ref.device)]
        if input_ids is not None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)
            parts.append(self.embeddings.word_embeddings(input_ids) + self.embeddings.position_embeddings(pos))
            masks.append(text_mask.bool() if text_mask is not None else torch.ones_like(input_ids, dtype=torch.bool))
        x = self.embeddings.dropout(self.embeddings.LayerNorm(torch.cat(parts, dim=1)))
        if self_mask is None:
            self_mask = torch.cat(masks, dim=1).unsqueeze(1)  # [B, 1, Q+L]
        cross_mask = audio_mask.bool().unsqueeze(1) if audio_mask is not None else None
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.encoder.layer:
            if checkpointing:
                # Every mask is an explicit argument (no KV cache), so recomputation sees the same
                # attention pattern; LAVIS's cache-based ATG silently changes under checkpointing.
                x = torch.utils.checkpoint.checkpoint(layer, x, queries.shape[1], self_mask, audio, cross_mask,
                                                      use_reentrant=False)
            else:
                x = layer(x, queries.shape[1], self_mask, audio, cross_mask)
        return x


class QFormerLMHead(nn.Module):
    """BERT's MLM head (dense + GELU + LayerNorm, decoder tied to the word embeddings), used by ATG.
    Names follow BERT (``predictions.transform.*``, ``predictions.bias``) so BERT's head loads by name."""

    def __init__(self, config, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = nn.Module()
        self.predictions.transform = nn.Module()
        self.predictions.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.predictions.transform.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.predictions.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))
        self.word_embeddings = [word_embeddings]  # tied, not a second copy of the weights

    def load_bert_head(self, bert_state: dict[str, torch.Tensor]) -> None:
        """Copy BERT's MLM head (``cls.predictions.*``) by name. The bias is as long as the grown
        vocabulary ([DEC] added): BERT's values fill the old rows and the added rows stay 0, which is
        what LAVIS gets by loading BERT at its own vocabulary size and then resizing (transformers pads
        the tied decoder bias with zeros); copying only same-shaped tensors would drop the whole bias."""
        head = {k.removeprefix("cls."): v for k, v in bert_state.items() if k.startswith("cls.")}
        own = self.state_dict()
        load = {k: v for k, v in head.items() if k in own and own[k].shape == v.shape}
        bias = head.get("predictions.bias")
        if bias is not None and bias.dim() == 1 and bias.shape[0] < own["predictions.bias"].shape[0]:
            grown = torch.zeros_like(own["predictions.bias"])
            grown[: bias.shape[0]] = bias
            load["predictions.bias"] = grown
        self.load_state_dict(load, strict=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        t = self.predictions.transform
        h = t.LayerNorm(F.gelu(t.dense(hidden)))
        return F.linear(h, self.word_embeddings[0].weight, self.predictions.bias)


def check_options(opts, key: str) -> list[str]:
    """Checks of ``qformer``/``bridgenet`` options beyond their declared ranges."""
    out = [p for p in [pretrained_problem(f"{key}.bert", opts.bert)] if p]
    out += output_init_problems(opts.output_init, f"{key}.output_init")
    if opts.standardize_queries and opts.dropout != 0:
        out.append(f"{key}.standardize_queries needs {key}.dropout: 0 (got {opts.dropout}); standardising divides "
                   "by the across-batch spread, which dropout noise would dominate, so eval prompts would differ "
                   "from the trained ones")
    return out


def load_bert(reference: str, key: str):
    """Config, state dict and tokenizer of a BERT checkpoint (hub id, folder, ``pkg:``, ``tiny``)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from bridgebench.runtime.references import resolve_pretrained

    path = resolve_pretrained(reference, key, family="bert")
    config = AutoConfig.from_pretrained(path)
    if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (config.architectures or [])):
        # The MLM head (``cls.*``) initialises ATG's LM head when the checkpoint has one.
        from transformers import AutoModelForMaskedLM

        state = AutoModelForMaskedLM.from_pretrained(path).state_dict()
    else:  # e.g. sentence-transformers' MiniLM: encoder only, the LM head starts random
        state = AutoModel.from_pretrained(path).state_dict()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return config, state, tokenizer


@dataclass
class BertTokens:
    """BERT tokens of a batch of texts for the Q-Former (runs in data-loader workers), returned as
    ``{prefix}_ids`` and ``{prefix}_mask``. The Bridge-Net's instructions truncate on the left (the
    end holds the question, as in InstructBLIP); stage-1 captions truncate on the right."""

    tokenizer: object
    max_tokens: int
    truncation_side: str
    prefix: str

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        tok.truncation_side = self.truncation_side
        enc = tok(texts, padding="longest", truncation=True, max_length=self.max_tokens, return_tensors="pt")
        return {f"{self.prefix}_ids": enc.input_ids, f"{self.prefix}_mask": enc.attention_mask.bool()}


class QFormerBridge(Bridge):
    """BLAP/BLIP-2 bridge: LayerNorm on the audio features, Q-Former, linear projection to the LLM.

    In stage 2 the Q-Former's text parts are not built (LAVIS deletes them for stage 2); a stage-1
    checkpoint's text weights are then ignored on load.
    """

    uses_instruction = False

    def __init__(self, in_dim: int, out_dim: Optional[int], bert: str = "bert-base-uncased", num_queries: int = 32,
                 cross_attention_freq: int = 2, num_layers: Optional[int] = None, max_text_tokens: int = 128,
                 gradient_checkpointing: bool = False, with_text: bool = False, standardize_queries: bool = False,
                 dropout: Optional[float] = None, output_init: str = "default"):
        super().__init__()
        self.output_init = output_init
        config, state, tokenizer = load_bert(bert, "model.bridge.bert")
        if num_layers is not None:
            config.num_hidden_layers = num_layers
        if dropout is not None:
            config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
        if with_text:
            # ATG's decoder start token (LAVIS adds [DEC] and grows the vocabulary by one).
            tokenizer.add_special_tokens({"bos_token": "[DEC]"})
            config.vocab_size = len(tokenizer)
        self.bert_reference = bert
        self.max_text_tokens = max_text_tokens
        self.tokenizer = tokenizer
        self.bert_state = {k: v for k, v in state.items() if k.startswith("cls.")}  # MLM head, for ATG
        self.ln_audio = nn.LayerNorm(in_dim)
        self.qformer = QFormer(config, in_dim, num_queries, cross_attention_freq, with_text=with_text)
        self.qformer.gradient_checkpointing = gradient_checkpointing
        self.random_init = self.qformer.load_bert(state)
        # Stage 1 has no LLM and so no projection; stage 2 projects the queries to the LLM's width.
        self.proj = nn.Linear(config.hidden_size, out_dim) if out_dim else None
        # See QFormerOptions.standardize_queries; stage 1 has no projection and so no use for it.
        self.query_norm = (nn.BatchNorm1d(num_queries * config.hidden_size, affine=False)
                           if standardize_queries and out_dim else None)
        self.num_queries = num_queries
        self.hidden_size = config.hidden_size

    def query_outputs(self, features, feature_mask, text=None) -> torch.Tensor:
        """The Q-Former's query outputs [B, queries, hidden], before standardisation and projection."""
        return self.qformer(self.ln_audio(features), feature_mask, **self._text_inputs(text))[:, : self.num_queries]

    def forward(self, features, feature_mask, text=None):
        if self.proj is None:
            raise RuntimeError("this bridge was built without an LLM projection (stage 1: no LLM)")
        hidden = self.query_outputs(features, feature_mask, text)
        if self.query_norm is not None:
            flat, norm = hidden.reshape(hidden.shape[0], -1), self.query_norm
            if norm.training and flat.shape[0] == 1:
                # One clip has no spread to standardise by (an epoch's last batch can be one clip).
                flat = nn.functional.batch_norm(flat, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
            else:
                flat = norm(flat)
            hidden = flat.view_as(hidden)
        prompt = self.proj(hidden)
        return prompt, torch.ones(prompt.shape[:2], dtype=torch.bool, device=prompt.device)

    def _text_inputs(self, text) -> dict:
        return {}

    def output_layer(self) -> Optional[nn.Linear]:
        return self.proj

    def extra_groups(self) -> dict[str, list[nn.Parameter]]:
        """``cross_attention``: the cross-attention layers and the query tokens, the parts BERT has no
        weights for (random at the start of stage 1), so ``lr_scale`` can give them their own rate."""
        return {"cross_attention": [p for n, p in self.qformer.named_parameters()
                                    if ".crossattention." in n or n == "query_tokens"]}

    def stage1_only_keys(self) -> tuple[str, ...]:
        # Stage-1 text-branch weights a stage-2 Q-Former has no place for (LAVIS deletes them).
        return ("qformer.embeddings.word_embeddings", "qformer.embeddings.position_embeddings",
                ".intermediate.", ".output.dense", ".output.LayerNorm")


class BridgeNetBridge(QFormerBridge):
    """MINT's Bridge-Net: the instruction (BERT tokens, left-truncated) joins the queries in one
    bidirectional self-attention pass; only the query outputs are projected to the LLM."""

    uses_instruction = True

    def __init__(self, in_dim: int, out_dim: Optional[int], bert: str = "bert-base-uncased", num_queries: int = 32,
                 cross_attention_freq: int = 2, num_layers: Optional[int] = None, max_text_tokens: int = 128,
                 gradient_checkpointing: bool = False, with_text: bool = True, standardize_queries: bool = False,
                 dropout: Optional[float] = None, output_init: str = "default"):
        super().__init__(in_dim, out_dim, bert, num_queries, cross_attention_freq, num_layers, max_text_tokens,
                         gradient_checkpointing, with_text=True, standardize_queries=standardize_queries,
                         dropout=dropout, output_init=output_init)
        self.text_processor = BertTokens(self.tokenizer, max_text_tokens, "left", "bridge")

    def _text_inputs(self, text) -> dict:
        if text is None or "bridge_ids" not in text:
            raise ValueError("bridgenet needs instruction tokens ('bridge_ids'); the data must carry instructions")
        return {"input_ids": text["bridge_ids"], "text_mask": text["bridge_mask"]}

    def stage1_only_keys(self) -> tuple[str, ...]:
        return ()
