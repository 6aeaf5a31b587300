"""imp_qwen36: placeholder; the family lands with its own issue."""
