"""Framework adapters: Hugging Face Trainer / PEFT (``hf``), TRL (``sft``), the shared curriculum stage
(``stage``). Import the submodule you need; importing this package pulls in no framework."""
