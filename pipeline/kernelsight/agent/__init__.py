"""ks-agent: anomalies -> observations and diagnoses, offline (no LLM, no network)."""
