"""The answer predictor: any Hugging Face LM that reads the question and a masked rationale prefix.

It is fed through ``inputs_embeds`` (the mask acts on embeddings, never on ids), so the gradient of
the answer loss reaches the mask and through it the weight generator. Decoder-only models get one
left-padded row ``[question, masked prefix, answer]`` per (example, prefix), or (the default) all
prefixes of an example in one sequence with a 4-D attention mask, and apply the LM head only on the
rows that predict answer tokens, by default through the fused linear keypoint cross-entropy (no
logits at all; see :mod:`kpod_ops.weighting.answer_loss`); encoder-decoder models get
``[question, masked prefix]`` in the encoder and the answer in the decoder (their own LM head's
loss comes from the logits). All prefixes of a batch go through one forward.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .._optional import require
from ..errors import bad_input
from .answer_loss import resolve_fused_linear, row_nll_from_logits, row_nll_fused


def _output_vocab(model: nn.Module) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    return int(model.config.vocab_size)


class AnswerPredictor(nn.Module):
    """Wraps ``model`` to score the answer given question + masked rationale prefixes.

    ``input_dim`` and ``student_vocab`` describe the student embedding space the inputs come
    from. A learned projection maps ``input_dim`` to the model's embedding size when they differ
    (or always, with ``projection="linear"``); a learned answer head over the student's vocabulary
    replaces the model's own when their vocabularies differ. ``training`` is ``"full"``,
    ``"lora"`` (adapters from ``peft``; the base is frozen) or ``"frozen"`` (gradients still flow
    through it to the mask). The caller's ``model`` is never changed: it is deep-copied first
    (passing the student itself is safe) unless ``copy_model=False``, which trains, freezes or
    adapts the very model passed in (saves its memory; the caller asked for it).

    ``fused_linear``: ``"auto"`` computes the answer loss from the answer rows' hidden states with
    :func:`kpod_ops.keypoint_linear_cross_entropy` (no ``[rows, V]`` logits) wherever the predictor
    allows it (the learner's answer head, or the plain LM head of a Llama / Mistral / Qwen family
    causal LM), and otherwise uses the logits with a warning that says why; ``True`` makes
    an unsupported predictor an error, ``False`` always uses the logits. ``fused_linear_reason``
    records the decision.
    """

    def __init__(
        self,
        model: nn.Module,
        input_dim: int,
        student_vocab: int,
        *,
        training: str = "full",
        projection: str = "auto",
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_targets: str | list[str] = "all-linear",
        copy_model: bool = True,
        share_prefixes: bool = True,
        fused_linear: bool | str = "auto",
    ) -> None:
        super().__init__()
        if not hasattr(model, "config") or not hasattr(model, "get_input_embeddings"):
            raise bad_input("predictor", "a Hugging Face PreTrainedModel", type(model).__name__)
        if copy_model:
            model = copy.deepcopy(model)
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.training_mode = training
        model_dim = model.get_input_embeddings().embedding_dim
        self.student_vocab = student_vocab
        if projection == "identity" and model_dim != input_dim:
            raise bad_input(
                "projection", f"'auto' or 'linear' (embedding sizes differ: {input_dim} vs {model_dim})", "'identity'"
            )
        use_linear = projection == "linear" or (projection == "auto" and model_dim != input_dim)
        self.projection = nn.Linear(input_dim, model_dim) if use_linear else nn.Identity()
        self.answer_head = nn.Linear(model_dim, student_vocab, bias=False) if _output_vocab(model) != student_vocab else None
        self._keep_logits = "logits_to_keep" in inspect.signature(type(model).forward).parameters
        if self.is_encoder_decoder:
            start = getattr(model.config, "decoder_start_token_id", None)
            start = model.config.pad_token_id if start is None else start
            self.register_buffer("_start_id", torch.tensor([int(start or 0)]), persistent=False)
        if training == "lora":
            peft = require("peft", extra="weighting", feature='predictor_training="lora"')
            LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=lora_targets))
        elif training == "frozen":
            model.requires_grad_(False)
        self.model = model
        self.share_prefixes = share_prefixes
        self.fused_linear, self.fused_linear_reason = resolve_fused_linear(fused_linear, model, self.answer_head)
        if fused_linear == "auto" and not self.fused_linear:
            warnings.warn(
                f"mask learner (fused_linear='auto'): {self.fused_linear_reason}; the answer loss is computed from "
                "the logits (fused_linear=False says so without this warning)",
                UserWarning,
                stacklevel=3,
            )

    def train(self, mode: bool = True) -> AnswerPredictor:
        super().train(mode)
        if self.training_mode == "frozen":
            self.model.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(
        self,
        prompt: list[torch.Tensor],
        rationale: list[torch.Tensor],
        answer_emb: list[torch.Tensor],
        answer_ids: list[torch.Tensor],
        rows: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Summed answer NLL of each row ``(example index, prefix length)``: a ``[R]`` tensor.

        ``prompt``, ``rationale`` (already masked) and ``answer_emb`` are per-example embeddings in
        the student space ``[len, input_dim]``; ``answer_ids`` are the targets (student vocabulary).
        Row ``(i, k)`` sees the question and the first ``k`` masked rationale tokens only.
        """
        dt = self.dtype
        proj = [
            (self.projection(p.to(dt)), self.projection(r.to(dt)), self.projection(a.to(dt)))
            for p, r, a in zip(prompt, rationale, answer_emb)
        ]
        if self.is_encoder_decoder:
            return self._encoder_decoder(proj, answer_ids, rows)
        parts = self._body_and_head() if self.share_prefixes else None
        if parts is not None:
            return self._decoder_shared(proj, answer_ids, rows, *parts)
        return self._decoder(proj, answer_ids, rows)

    def _body_and_head(self) -> tuple[nn.Module, nn.Module] | None:
        """The transformer body (hidden states) and the LM head of a causal LM (through peft), or None."""
        hf = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        body = hf.get_decoder() if hasattr(hf, "get_decoder") else None
        head = self.answer_head if self.answer_head is not None else hf.get_output_embeddings()
        if body is None or body is hf or head is None:
            return None
        return body, head

    def _decoder_shared(self, proj, answer_ids, rows, body: nn.Module, head: nn.Module) -> torch.Tensor:
        """All prefixes of an example in one sequence with a 4-D mask (see the module doc)."""
        by_example: dict[int, list[int]] = {}
        for r, (i, _) in enumerate(rows):
            by_example.setdefault(i, []).append(r)
        examples = list(by_example)
        seqs, layouts = [], []
        for i in examples:
            q, rat, ans = proj[i]
            n_q, n_a = q.shape[0], int(answer_ids[i].numel())
            ks = [rows[r][1] for r in by_example[i]]
            n_r = max(ks)
            seqs.append(torch.cat([q, rat[:n_r]] + [ans[:n_a]] * len(ks)))
            layouts.append((n_q, n_r, n_a, ks))
        total = max(s.shape[0] for s in seqs)
        dev, dt = seqs[0].device, seqs[0].dtype
        emb = torch.stack([F.pad(s, (0, 0, total - s.shape[0], 0)) for s in seqs])  # left padding
        allowed = torch.zeros(len(seqs), total, total, dtype=torch.bool, device=dev)
        pos = torch.zeros(len(seqs), total, dtype=torch.long, device=dev)
        gather_rows, gather_cols, targets = [], [], []
        for b, (n_q, n_r, n_a, ks) in enumerate(layouts):
            off = total - seqs[b].shape[0]
            ctx = n_q + n_r
            idx = torch.arange(ctx, device=dev)
            allowed[b, off : off + ctx, off : off + ctx] = idx[:, None] >= idx[None, :]
            pos[b, off : off + ctx] = idx
            tri = torch.ones(n_a, n_a, dtype=torch.bool, device=dev).tril()
            for p, k in enumerate(ks):
                start = off + ctx + p * n_a
                allowed[b, start : start + n_a, off : off + n_q + k] = True
                allowed[b, start : start + n_a, start : start + n_a] = tri
                pos[b, start : start + n_a] = torch.arange(n_q + k, n_q + k + n_a, device=dev)
                # the row before each answer token predicts it: the prefix's last token, then the answer copy
                cols = [off + n_q + k - 1] + list(range(start, start + n_a - 1))
                gather_rows.append(b)
                gather_cols.append(cols)
            allowed[b, :off, :off] = torch.eye(off, dtype=torch.bool, device=dev)  # padding sees itself: no NaN
        mask = torch.zeros(allowed.shape, dtype=dt, device=dev).masked_fill(~allowed, torch.finfo(dt).min)[:, None]
        hidden = body(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        a_max = max(n_a for _, _, n_a, _ in layouts)
        order = [r for i in examples for r in by_example[i]]
        cols = torch.stack([torch.tensor(c + [c[-1]] * (a_max - len(c)), device=dev) for c in gather_cols])
        picked = hidden[torch.tensor(gather_rows, device=dev)[:, None], cols]  # [R, a_max, H]: answer rows only
        for i in examples:
            for _ in by_example[i]:
                t = answer_ids[i]
                targets.append(F.pad(t, (0, a_max - t.numel()), value=-100))
        nll = self._answer_nll(picked, head, torch.stack(targets))
        out = torch.empty_like(nll)
        out[torch.tensor(order, device=dev)] = nll
        return out

    def _decoder(self, proj, answer_ids, rows) -> torch.Tensor:
        seqs = [torch.cat([proj[i][0], proj[i][1][:k], proj[i][2]]) for i, k in rows]
        total = max(s.shape[0] for s in seqs)
        a_max = max(int(answer_ids[i].numel()) for i, _ in rows)
        emb = torch.stack([F.pad(s, (0, 0, total - s.shape[0], 0)) for s in seqs])  # left padding
        lengths = torch.tensor([s.shape[0] for s in seqs], device=emb.device)
        attn = (torch.arange(total, device=emb.device)[None, :] >= (total - lengths)[:, None]).long()
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        targets = torch.stack([F.pad(answer_ids[i], (a_max - answer_ids[i].numel(), 0), value=-100) for i, _ in rows])
        kwargs = {"inputs_embeds": emb, "attention_mask": attn, "position_ids": pos, "use_cache": False}
        if self.answer_head is not None:
            hidden = self.model(**kwargs, output_hidden_states=True).hidden_states[-1]
            return self._answer_nll(hidden[:, -(a_max + 1) : -1], self.answer_head, targets)
        if self.fused_linear:  # a supported causal LM: its backbone's hidden states, then its plain LM head
            hf = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            hidden = hf.model(**kwargs).last_hidden_state
            return row_nll_fused(hidden[:, -(a_max + 1) : -1], hf.lm_head, targets)
        else:
            if self._keep_logits:
                kwargs["logits_to_keep"] = a_max + 1
            logits = self.model(**kwargs).logits[:, -(a_max + 1) : -1]
        return row_nll_from_logits(logits, targets)

    def _encoder_decoder(self, proj, answer_ids, rows) -> torch.Tensor:
        enc = [torch.cat([proj[i][0], proj[i][1][:k]]) for i, k in rows]
        e_max = max(s.shape[0] for s in enc)
        a_max = max(int(answer_ids[i].numel()) for i, _ in rows)
        emb = torch.stack([F.pad(s, (0, 0, 0, e_max - s.shape[0])) for s in enc])
        attn = torch.stack([(torch.arange(e_max, device=emb.device) < s.shape[0]).long() for s in enc])
        start = self.model.get_input_embeddings()(self._start_id).to(emb.dtype)
        dec = [torch.cat([start, proj[i][2][: answer_ids[i].numel() - 1]]) for i, _ in rows]
        dec_emb = torch.stack([F.pad(s, (0, 0, 0, a_max - s.shape[0])) for s in dec])
        dec_attn = torch.stack([(torch.arange(a_max, device=emb.device) < s.shape[0]).long() for s in dec])
        targets = torch.stack([F.pad(answer_ids[i], (0, a_max - answer_ids[i].numel()), value=-100) for i, _ in rows])
        out = self.model(
            inputs_embeds=emb,
            attention_mask=attn,
            decoder_inputs_embeds=dec_emb,
            decoder_attention_mask=dec_attn,
            use_cache=False,
            output_hidden_states=self.answer_head is not None,
        )
        if self.answer_head is not None:
            return self._answer_nll(out.decoder_hidden_states[-1], self.answer_head, targets)
        return row_nll_from_logits(out.logits, targets)

    def _answer_nll(self, hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
        """Summed answer NLL per row from the answer rows' hidden states ``[R, A, H]`` and the head."""
        if self.fused_linear:
            return row_nll_fused(hidden, head, targets)
        return row_nll_from_logits(head(hidden), targets)
