"""Code for the tests, benchmarks and scripts, never for the pack at run time: the
stand-in weight generator (`testing.fixtures`) and the workflow converter
(`testing.workflows`). Nothing in `sonic_diffusion/` or `nodes/` imports it
(tests/test_layering.py holds that)."""
