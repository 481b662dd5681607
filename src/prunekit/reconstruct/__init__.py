"""Numerical solvers (OBS, least squares, mask refinement; pure tensor maths) and the block
reconstruction stage (:mod:`.block`, the ``reconstruct=`` plugins)."""
