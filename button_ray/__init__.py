"""button_ray: distributed BUTTON multi-turn function-calling data generation on Ray + vLLM."""

__version__ = "0.1.0"
