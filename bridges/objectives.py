"""Stage-1 objectives of the Q-Former / Bridge-Net: ATC, ATM, ATG (BLIP-2's ITC/ITM/ITG, MINT's ALC/ALM/ATG).

Each objective has its own attention pattern over ``[queries ; text]`` (anchors.md §1.3-1.4):

- ATC (contrastive): queries and text never see each other (a query-only pass with
  cross-attention, a text-only pass); similarity = max over queries of the projected, normalised
  query feature . text [CLS] feature, divided by a learnable temperature (init 0.07, no clamp);
  cross-entropy both ways with label smoothing 0.1; negatives are the whole world batch. Features
  are gathered across DDP ranks with an autograd all-gather: every rank's loss sends gradient back
  to the rank that owns each row, so DDP's averaged gradients equal one process's on the whole
  batch (LAVIS gathers without gradient and so drops the terms where a row is another rank's
  negative).
- ATM (matching): one bidirectional pass; per text one hard negative audio and per audio one hard
  negative text, drawn from the softmaxed ATC similarities with the positives excluded; a 2-way
  head on every query output, averaged over queries.
- ATG (generation): text is causal, every text token sees all queries, queries never see text;
  the [CLS] slot is replaced by [DEC]; label smoothing 0.1. Built with an explicit mask (no query
  KV cache), so it stays exact under gradient checkpointing.

Only the enabled objectives' heads are built, so DDP never sees unused parameters.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bridgebench.bridges.qformer import BertTokens, QFormerBridge, QFormerLMHead
from bridgebench.runtime.distributed import rank_and_world

STAGE1_OBJECTIVES = ("atc", "atm", "atg")


class ContrastiveProjection(nn.Module):
    """BLAP's CLAP-style projection: linear -> GELU -> linear -> dropout, residual, LayerNorm."""

    def __init__(self, width: int, dim: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(width, dim, bias=False)
        self.linear2 = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x)
        return self.layer_norm(h + self.dropout(self.linear2(F.gelu(h))))


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient into the rows this rank owns.

    Written here because torch.distributed.nn.functional.all_gather's backward on gloo (an
    all-to-all emulation) scrambles non-contiguous gradients (seen with torch 2.13: the CPU DDP test
    catches it). All-reducing the contiguous gradient works on every backend."""

    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_all(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, concatenated in rank order, differentiable: the backward pass sums every
    rank's gradient into the rows this rank owns. Dim 1 is padded to the ranks' maximum first
    (audio frames and text tokens differ between ranks); pad with zeros/False, which masks ignore.
    Ranks hold the same number of rows (DistributedSampler pads the dataset to make it so)."""
    if rank_and_world()[1] == 1:
        return x
    if x.dim() >= 2:
        size = torch.tensor([x.shape[1]], device=x.device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        if int(size) > x.shape[1]:
            pad = [0, 0] * (x.dim() - 2) + [0, int(size) - x.shape[1]]
            x = F.pad(x, pad)
    if not x.is_floating_point():  # ids and masks carry no gradient
        is_bool = x.dtype == torch.bool
        y = x.to(torch.uint8) if is_bool else x  # gloo does not gather bools
        parts = [torch.zeros_like(y) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, y.contiguous())
        out = torch.cat(parts, dim=0)
        return out.bool() if is_bool else out
    return _GatherWithGrad.apply(x)


def _pad_dim1(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[1] >= size:
        return x
    return F.pad(x, [0, 0] * (x.dim() - 2) + [0, size - x.shape[1]])


class Stage1Heads(nn.Module):
    """Heads and losses of the enabled stage-1 objectives on top of a Q-Former bridge."""

    def __init__(self, bridge: QFormerBridge, objectives: tuple[str, ...], embed_dim: int = 256,
                 projection: str = "linear", dropout: float = 0.5, temperature: float = 0.07,
                 label_smoothing: float = 0.1, max_text_tokens: int = 32):
        super().__init__()
        self.objectives = tuple(o for o in STAGE1_OBJECTIVES if o in objectives)
        self.label_smoothing = label_smoothing
        self.text_processor = BertTokens(bridge.tokenizer, max_text_tokens, "right", "s1")
        self.dec_id = bridge.tokenizer.bos_token_id
        width = bridge.hidden_size
        if "atc" in self.objectives or "atm" in self.objectives:
            if projection == "linear":  # LAVIS
                self.audio_proj, self.text_proj = nn.Linear(width, embed_dim), nn.Linear(width, embed_dim)
            else:  # BLAP
                self.audio_proj = ContrastiveProjection(width, embed_dim, dropout)
                self.text_proj = ContrastiveProjection(width, embed_dim, dropout)
            self.temp = nn.Parameter(torch.tensor(temperature))
        if "atm" in self.objectives:
            self.atm_head = nn.Linear(width, 2)
        if "atg" in self.objectives:
            self.lm_head = QFormerLMHead(bridge.qformer.config, bridge.qformer.embeddings.word_embeddings)
            self.lm_head.load_bert_head(bridge.bert_state)

    # --- passes with the three attention patterns ---

    @staticmethod
    def query_pass(bridge: QFormerBridge, audio, audio_mask) -> torch.Tensor:
        return bridge.qformer(audio, audio_mask)

    @staticmethod
    def text_pass(bridge: QFormerBridge, ids, mask) -> torch.Tensor:
        empty = bridge.qformer.query_tokens[:, :0].expand(ids.shape[0], -1, -1)
        return bridge.qformer(None, None, ids, mask, query_embeds=empty)

    @staticmethod
    def generation_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
        """[B, Q+L, Q+L]: queries see queries; text token i sees all queries and real text tokens <= i."""
        b, n = text_mask.shape
        size = num_queries + n
        allowed = torch.zeros(b, size, size, dtype=torch.bool, device=text_mask.device)
        allowed[:, :num_queries, :num_queries] = True
        allowed[:, num_queries:, :num_queries] = True
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=text_mask.device))
        allowed[:, num_queries:, num_queries:] = causal & text_mask.unsqueeze(1)
        return allowed

    # --- features and similarities ---

    def audio_features(self, query_out: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_proj(query_out), dim=-1)  # [B, Q, E]

    def text_features(self, text_out: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_out[:, 0]), dim=-1)  # [CLS] -> [B, E]

    @staticmethod
    def similarity(audio_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """[Na, Nt]: max over queries of query feature . text feature."""
        return torch.einsum("aqe,te->atq", audio_feats, text_feats).amax(dim=-1)

    # --- losses ---

    def losses(self, bridge: QFormerBridge, audio: torch.Tensor, audio_mask: torch.Tensor,
               ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        audio = bridge.ln_audio(audio)
        out: dict[str, torch.Tensor] = {}
        rank, _ = rank_and_world()
        b = ids.shape[0]
        if "atc" in self.objectives or "atm" in self.objectives:
            audio_feats = self.audio_features(self.query_pass(bridge, audio, audio_mask))
            text_feats = self.text_features(self.text_pass(bridge, ids, mask))
            audio_all, text_all = gather_all(audio_feats), gather_all(text_feats)
            sim_a2t = self.similarity(audio_feats, text_all) / self.temp
            sim_t2a = self.similarity(audio_all, text_feats).t() / self.temp
            targets = torch.arange(b, device=ids.device) + rank * b
            if "atc" in self.objectives:
                out["atc"] = (F.cross_entropy(sim_a2t.float(), targets, label_smoothing=self.label_smoothing)
                              + F.cross_entropy(sim_t2a.float(), targets, label_smoothing=self.label_smoothing)) / 2
            if "atm" in self.objectives:
                out["atm"] = self.matching_loss(bridge, audio, audio_mask, ids, mask, sim_a2t, sim_t2a, rank)
        if "atg" in self.objectives:
            out["atg"] = self.generation_loss(bridge, audio, audio_mask, ids, mask)
        return out

    def matching_loss(self, bridge, audio, audio_mask, ids, mask, sim_a2t, sim_t2a, rank) -> torch.Tensor:
        b = ids.shape[0]
        with torch.no_grad():
            local = torch.arange(b, device=ids.device)
            w_t2a = sim_t2a.float().clone()
            w_a2t = sim_a2t.float().clone()
            w_t2a[local, local + rank * b] = -10000.0  # never draw the positive
            w_a2t[local, local + rank * b] = -10000.0
            neg_audio = torch.multinomial(F.softmax(w_t2a, dim=1), 1).squeeze(1)
            neg_text = torch.multinomial(F.softmax(w_a2t, dim=1), 1).squeeze(1)
        audio_all = gather_all(audio)
        mask_all = gather_all(audio_mask)
        ids_all, text_mask_all = gather_all(ids), gather_all(mask)
        audio, audio_mask = _pad_dim1(audio, audio_all.shape[1]), _pad_dim1(audio_mask, audio_all.shape[1])
        ids, mask = _pad_dim1(ids, ids_all.shape[1]), _pad_dim1(mask, ids_all.shape[1])
        audio_in = torch.cat([audio, audio_all[neg_audio], audio], dim=0)
        audio_mask_in = torch.cat([audio_mask, mask_all[neg_audio], audio_mask], dim=0)
        ids_in = torch.cat([ids, ids, ids_all[neg_text]], dim=0)
        text_mask_in = torch.cat([mask, mask, text_mask_all[neg_text]], dim=0)
        hidden = bridge.qformer(audio_in, audio_mask_in, ids_in, text_mask_in)  # bidirectional
        logits = self.atm_head(hidden[:, : bridge.num_queries]).mean(dim=1)
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(ids.device)
        return F.cross_entropy(logits.float(), labels)

    def generation_loss(self, bridge, audio, audio_mask, ids, mask) -> torch.Tensor:
        dec = ids.clone()
        dec[:, 0] = self.dec_id
        q = bridge.num_queries
        hidden = bridge.qformer(audio, audio_mask, dec, mask, self_mask=self.generation_mask(q, mask))
        # The vocabulary-sized head runs only where a next token exists (not at padding), which is
        # the bulk of ATG's cost; the loss is the same as over all positions with ignore_index.
        keep = mask[:, 1:]
        logits = self.lm_head(hidden[:, q:-1][keep])
        return F.cross_entropy(logits.float(), dec[:, 1:][keep], label_smoothing=self.label_smoothing)

    # --- evaluation helpers ---

    @torch.no_grad()
    def encode_audio(self, bridge, audio, audio_mask) -> torch.Tensor:
        return self.audio_features(self.query_pass(bridge, bridge.ln_audio(audio), audio_mask))

    @torch.no_grad()
    def encode_text(self, bridge, ids, mask) -> torch.Tensor:
        return self.text_features(self.text_pass(bridge, ids, mask))

    @torch.no_grad()
    def match_scores(self, bridge, audio, audio_mask, ids, mask) -> torch.Tensor:
        """ATM positive-class logit (averaged over queries) for aligned rows of audio and text."""
        hidden = bridge.qformer(bridge.ln_audio(audio), audio_mask, ids, mask)
        return self.atm_head(hidden[:, : bridge.num_queries]).mean(dim=1)[:, 1]


def stage1_heads_from(bridge: QFormerBridge, objectives, options: Optional[dict] = None) -> Stage1Heads:
    return Stage1Heads(bridge, tuple(objectives), **(options or {}))
