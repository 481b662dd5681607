"""Training-framework integrations, each an optional extra imported only when used:
:mod:`prunekit.integrations.hf` (transformers ``Trainer``) and
:mod:`prunekit.integrations.lightning` (Lightning ``Trainer``)."""
