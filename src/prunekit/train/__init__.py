"""Training-time helpers (recovery, regularisers)."""
