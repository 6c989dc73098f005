"""The one-layer transformer on the fact task (SPEC §11): configuration, fixed instance parts, the batched model,
and one model as a torch module (for the trainers of frd-train).
Loss, accuracy and the success count are models.memory.metrics' (written once)."""
from models.transformer.config import TransformerConfig, transformer_parameter_count
from models.transformer.instance import embeddings, eval_sequences, init_params, task_of
from models.transformer.model import attention_weights, residual_stream, stack_transformer_params, transformer_logits
from models.transformer.module import TransformerModule

__all__ = ["TransformerConfig", "transformer_parameter_count", "embeddings", "eval_sequences", "init_params",
           "task_of", "attention_weights", "residual_stream", "stack_transformer_params", "transformer_logits",
           "TransformerModule"]
