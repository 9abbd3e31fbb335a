"""Embedding Gateway: one OpenAI-compatible embeddings endpoint over Ollama, TEI and vLLM."""
