"""GPT-2 training and inference on llm.c-format data and checkpoints (needs the `gpu` extra: torch)."""
