"""Layer-wise numerical solvers (OBS, least squares): pure tensor maths, no plugin imports."""
