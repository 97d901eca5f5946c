"""tempa.sft."""
