"""Register the tuned model (file registry locally, Vertex AI Model Registry on Vertex)."""

from components.register.core import RegisteredModel, register_model

__all__ = ["RegisteredModel", "register_model"]
