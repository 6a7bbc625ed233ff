"""Training: base LLM loading, conversation data, collator, trainer, synthetic tasks."""
