"""POST /v1/completions (OpenAI's legacy text completions): one job per prompt (and per ``n``),
each metered and receipted as a chat job is, the prompt tokenized without a chat template."""
