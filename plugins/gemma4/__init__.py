"""imp_gemma4: placeholder; the family lands with its own issue."""
