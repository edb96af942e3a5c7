"""mdx: a JAX/Flax research codebase for AI medical diagnosis."""

__version__ = "0.1.0"
