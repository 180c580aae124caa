"""Training pieces without Ray: data URIs and splits, per-task loops, evaluation."""
