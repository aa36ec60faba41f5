"""Benchmarks of button_ray: each module is a script, see benchmarks/README.md."""
