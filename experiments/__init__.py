"""The papers' comparisons, one command per table (see experiments/README)."""
