"""The trainer's fast path: `plan` (what runs, resolved once per run), `model` (the fast forward over
the reference model's parameters), `loss` (the fused classifier loss)."""
