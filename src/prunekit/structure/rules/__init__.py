"""Channel rules, one module per op family; each registers itself in
:data:`prunekit.structure.propagate.RULES` with the op names it handles and examples."""

from ...registry import import_submodules

import_submodules(__name__, __path__)
