"""Hand-written fast paths of the frontend definitions (frontend.implementation: fast). Each module states its
contract (which definition it equals, and how closely); tests/test_frontend_kernels.py checks values, gradients
and gradcheck in float64 against the definitions. Why each exists and what it saves: docs/frontends.md."""
