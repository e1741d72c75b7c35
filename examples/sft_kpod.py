"""KPOD with TRL, configured from the command line: ``KPODConfig`` parsed next to ``SFTConfig``.

Every option is a command-line flag, as in any Hugging Face training script: TRL's (``--max_steps``,
``--learning_rate``, ``--max_length``, ``--label_smoothing_factor``, ...), KPOD's (``--normaliser``,
``--fused_linear``, ``--chunk_size``, ``--label_smoothing``, ``--schedule_file``,
``--token_weights_file``) and this script's (``--model``, ``--dataset``, ``--n_train``, ...).
The data are chain-of-thought examples (a built-in set or a JSONL file) turned into TRL's rows:
prompt + rationale + answer, or a conversation (``--chat``, with the tokenizer's chat template).

    python examples/sft_kpod.py --output_dir out --model tiny --max_steps 20 --normaliser token

Learning rate: with the default ``--normaliser sequence`` an update is (active tokens per sequence)
times a token mean's at the same learning rate (61x on the quick preset's data); learning rates of
Hugging Face recipes carry over with ``--normaliser token``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser
from trl import SFTConfig

from kpod_ops.data import DEFAULT_TEMPLATE, load_builtin, read_jsonl
from kpod_ops.integrations.config import KPODConfig
from kpod_ops.integrations.evaluation import answer_accuracy
from kpod_ops.integrations.sft import KPODSFTTrainer


@dataclass
class ScriptArguments:
    model: str = field(default="tiny", metadata={"help": "'tiny' (the tiny student, built in code) or a model name / path"})
    dataset: str = field(default="arith-cot", metadata={"help": "a built-in data set name or a JSONL file"})
    n_train: int = field(default=64, metadata={"help": "training examples"})
    n_eval: int = field(default=16, metadata={"help": "held-out examples (evaluation loss and answer accuracy)"})
    chat: bool = field(default=False, metadata={"help": "conversational rows (the tokenizer's chat template)"})
    max_new_tokens: int = field(default=128, metadata={"help": "generation length for the answer accuracy"})


def load_examples(source: str, split: str, n: int) -> list:
    if source.endswith(".jsonl"):
        return list(read_jsonl(source))[:n] if split == "train" else list(read_jsonl(source))[-n:]
    return load_builtin(source, split, n=n)


def as_rows(examples: list, chat: bool) -> list[dict]:
    """TRL rows with the rationale and the gold answer as fields."""
    if chat:
        return [{"id": e.id, "prompt": [{"role": "user", "content": e.question}], "rationale": e.rationale,
                 "answer": e.answer} for e in examples]
    return [{"id": e.id, "prompt": DEFAULT_TEMPLATE.format(question=e.question), "rationale": e.rationale,
             "answer": e.answer} for e in examples]


def main(argv: list[str] | None = None) -> dict:
    script, kpod, args = HfArgumentParser((ScriptArguments, KPODConfig, SFTConfig)).parse_args_into_dataclasses(argv)
    tokenizer = None
    model = script.model
    if script.model == "tiny":
        from kpod_ops.models import tiny_student, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        model = tiny_student(tokenizer)
    train = as_rows(load_examples(script.dataset, "train", script.n_train), script.chat)
    held_out = as_rows(load_examples(script.dataset, "test", script.n_eval), script.chat)
    trainer = KPODSFTTrainer(model, args, train_dataset=train, eval_dataset=held_out, processing_class=tokenizer,
                             **kpod.trainer_kwargs())
    trainer.train()
    metrics = trainer.evaluate()
    metrics.update(answer_accuracy(trainer.model, trainer.processing_class, list(trainer.eval_dataset),
                                   max_new_tokens=script.max_new_tokens,
                                   batch_size=args.per_device_eval_batch_size))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    return metrics


if __name__ == "__main__":
    main()
