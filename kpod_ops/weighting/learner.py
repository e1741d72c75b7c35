"""MaskLearner: weight generator + Gumbel mask + answer predictor, and the KPOD objective L_k."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.tokenized import TokenizedExample
from ..errors import bad_input
from .batching import MaskBatch, check_examples, make_batch
from .config import MaskLearnerConfig
from .generator import TokenWeighter
from .gumbel import apply_mask, gumbel_sigmoid
from .predictor import AnswerPredictor
from .prefixes import sample_prefix_lengths


def _embedding_matrix(student: object) -> torch.Tensor:
    if isinstance(student, torch.Tensor):
        return student
    if isinstance(student, nn.Embedding):
        return student.weight
    if hasattr(student, "get_input_embeddings"):
        return student.get_input_embeddings().weight
    raise bad_input("student", "a student model, its nn.Embedding or a [vocab, dim] tensor", type(student).__name__)


class MaskLearner(nn.Module):
    """Learns keypoint weights of rationale tokens by masking them (paper §3.3).

    ``student`` supplies the (frozen) input embedding, so weights are per token of the student's
    tokenizer; ``predictor`` is any Hugging Face causal or seq2seq LM that learns to predict the
    answer from the question and a masked rationale prefix. Train with :meth:`fit`, then read
    deterministic weights with :meth:`token_weights`.
    """

    def __init__(self, student: object, predictor: nn.Module, config: MaskLearnerConfig | None = None) -> None:
        super().__init__()
        self.config = config or MaskLearnerConfig()
        c = self.config
        emb = _embedding_matrix(student)
        self.weighter = TokenWeighter(
            emb, num_heads=c.num_heads, mlp_hidden=c.mlp_hidden, position=c.position, init_keep_logit=c.init_keep_logit
        )
        # what a hidden token reads as: the mean input embedding, learned with the weights or held fixed
        self.mask_embedding = nn.Parameter(self.weighter.embedding.weight.mean(0).clone(), requires_grad=c.mask_embedding == "learned")
        self.predictor = AnswerPredictor(
            predictor,
            self.weighter.dim,
            self.weighter.vocab_size,
            training=c.predictor_training,
            projection=c.projection,
            lora_r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_targets=c.lora_targets,
            copy_model=c.copy_predictor,
            fused_linear=c.fused_linear,
        )

    @property
    def device(self) -> torch.device:
        return self.mask_embedding.device

    def objective(
        self,
        batch: MaskBatch,
        *,
        tau: float | None = None,
        rng: np.random.Generator,
        generator: torch.Generator | None = None,
        cap_at_blank: bool | None = None,
        full_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``L_k = L_p + alpha * L_m`` averaged over the batch's examples (those with a rationale).

        ``L_p`` per example is the prefix-sampled estimate of the paper's sum over all prefix lengths
        (see :mod:`kpod_ops.weighting.prefixes`), divided by the rationale and answer lengths under
        ``objective="normalized"``; ``L_m`` is the sum of the sampled keep mask (or of the keep
        probabilities), divided by the rationale length under ``mask_norm="length"`` (the
        normalized default). With ``cap_at_blank`` (``None``: the config's, resolved) each prefix's
        NLL is at most that of the same prefix fully masked (no gradient through that bound).
        ``full_only``: the answer loss on the full rationale alone (no prefixes). Returns the batch
        means ``loss``, ``answer_loss``, ``mask_loss`` and the kept ratio ``kept`` (mean w).
        """
        c = self.config
        logits, emb = self.weighter(batch.rationale, batch.attention_mask)
        m = gumbel_sigmoid(logits, c.tau if tau is None else tau, hard=c.hard, generator=generator)
        m = torch.where(batch.attention_mask, m, torch.zeros_like(m))
        masked = apply_mask(emb, m, self.mask_embedding)
        live = [i for i, n in enumerate(batch.lengths) if n > 0]
        if not live:
            raise bad_input("examples", "at least one example with a non-empty rationale", "only empty rationales")
        rows, coefs = self.prefix_rows(batch, rng, normalized=c.objective == "normalized", full_only=full_only)
        embed = self.weighter.embed
        prompts, answers = [embed(p) for p in batch.prompts], [embed(a) for a in batch.answers]
        rationales = [masked[i, : batch.lengths[i]] for i in range(len(batch.lengths))]
        nll = self.predictor(prompts, rationales, answers, batch.answers, rows)
        if c.caps_at_blank if cap_at_blank is None else cap_at_blank:  # misleading prefixes count as unread
            with torch.no_grad():
                blank = [self.mask_embedding.detach().expand(n, -1) for n in batch.lengths]
                base = self.predictor(prompts, blank, answers, batch.answers, rows)
            nll = torch.minimum(nll, base.to(nll.dtype))
        owner = torch.tensor([i for i, _ in rows], device=nll.device)
        coef = torch.tensor(coefs, device=nll.device, dtype=nll.dtype)
        answer = torch.zeros(len(batch.lengths), device=nll.device, dtype=nll.dtype).index_add(0, owner, coef * nll)
        keep_prob = torch.sigmoid(logits)
        mask_term = (m if c.mask_loss == "sampled" else keep_prob).sum(-1)
        lengths = torch.tensor(batch.lengths, device=nll.device, dtype=nll.dtype)
        if c.mask_normalization == "length":
            mask_term = mask_term / lengths.clamp_min(1)
        idx = torch.tensor(live, device=nll.device)
        answer, mask_term = answer[idx], mask_term[idx]
        return {
            "loss": (answer + c.alpha * mask_term).mean(),
            "answer_loss": answer.mean(),
            "mask_loss": mask_term.mean(),
            "kept": keep_prob[batch.attention_mask].mean(),
        }

    def prefix_rows(
        self, batch: MaskBatch, rng: np.random.Generator, *, normalized: bool = True, full_only: bool = False
    ) -> tuple[list[tuple[int, int]], list[float]]:
        """The answer loss's rows ``(example, prefix length)`` over the examples with a rationale, and
        each row's coefficient in ``L_p``: the P sampled prefixes (see
        :mod:`kpod_ops.weighting.prefixes`), or only the full rationale with ``full_only``; with
        ``normalized`` a mean over prefixes (``prefix_mean``) of the mean answer-token NLL."""
        c = self.config
        rows, coefs = [], []
        for i, n in enumerate(batch.lengths):
            if n == 0:
                continue
            if full_only:
                ks, cs = np.array([n]), np.array([1.0])
            else:
                ks, cs = sample_prefix_lengths(n, c.num_prefixes, rng)
                if normalized:
                    if c.prefix_mean == "sampled":  # the sampled prefixes (the full rationale among them) alike
                        cs = np.full(len(ks), 1.0 / len(ks))
                    else:  # unbiased for the mean over all L prefix lengths (the full rationale weighs 1/L)
                        cs = cs / n
            if normalized:
                cs = cs / batch.answers[i].numel()
            rows += [(i, int(k)) for k in ks]
            coefs += [float(v) for v in cs]
        return rows, coefs

    @torch.no_grad()
    def token_weights(self, examples: Sequence[TokenizedExample], *, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Deterministic keypoint weights ``w in (0,1)`` per example id, one float32 per rationale token.

        No noise; each rationale is weighted on its own tokens only, so a weight depends on neither
        the batch nor any truncation point (invariant W4).
        """
        check_examples(examples)
        was_training = self.training
        self.eval()
        order = sorted(range(len(examples)), key=lambda i: examples[i].rationale_len)
        out: dict[str, np.ndarray] = {}
        try:
            for s in range(0, len(order), batch_size):
                chunk = [examples[i] for i in order[s : s + batch_size]]
                b = make_batch(chunk, self.device)
                w = self.weighter.weights(b.rationale, b.attention_mask).float().cpu().numpy()
                for j, ex in enumerate(chunk):
                    out[ex.id] = w[j, : b.lengths[j]].astype(np.float32, copy=True)
        finally:
            self.train(was_training)
        return {ex.id: out[ex.id] for ex in examples}

    def fit(self, train: Sequence[TokenizedExample], val: Sequence[TokenizedExample] | None = None, **kwargs):
        """Train the learner; see :func:`kpod_ops.weighting.training.fit`."""
        from .training import fit

        return fit(self, train, val, **kwargs)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of the parameters that training changes (what checkpoints hold)."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor] | str | Path) -> None:
        """Restore :meth:`trainable_state` (a dict, or a checkpoint file written by ``fit``)."""
        if not isinstance(state, dict):
            state = torch.load(state, map_location=self.device, weights_only=True)["state"]
        params = dict(self.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise bad_input("state", "parameters of this MaskLearner", f"unknown names {unknown[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                if params[name].shape != value.shape:
                    raise bad_input(f"state[{name!r}]", f"shape {tuple(params[name].shape)}", tuple(value.shape))
                params[name].copy_(value)
