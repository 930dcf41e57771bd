"""Which attention implementation to ask transformers for, and which one a loaded model ended up with.

Asking for ``sdpa`` by name is not safe: transformers raises for a model class that does not declare
``_supports_sdpa`` (Gemma 2 and gpt-oss, whose attention logit soft-capping or sinks SDPA cannot express), and
where a version lets it through, the soft-cap is dropped. Left to itself (``attn_implementation=None``),
transformers takes SDPA where the class supports it and eager attention otherwise: transformers 5.23
modeling_utils.py ``PreTrainedModel.get_correct_attn_implementation`` ("Sdpa is the default, so we try it and
fallback to eager otherwise"), which only re-raises the SDPA refusal when sdpa was requested explicitly. So the
only kernel named here is FlashAttention-2, and only for a class that declares it (``_supports_flash_attn``) and
does not restrict itself to other flash kernels (``_compatible_flash_implementations``, which
``_check_and_adjust_attn_implementation`` swaps a plain ``flash_attention_2`` request for: gpt-oss lists only
Hub kernels).

Left to itself, though, an older transformers still takes SDPA for a model whose attention logits are
soft-capped: transformers 5.17 declares ``_supports_sdpa = True`` on Gemma 2 and its SDPA path ignores the
``softcap`` argument (integrations/sdpa_attention.py), so the model would train and be evaluated as another model
than the one pretrained. 5.23 refuses SDPA for it instead. Such a model (its text config sets
``attn_logit_softcapping``) is asked for ``eager`` by name unless FlashAttention-2, which applies the soft-cap,
is chosen.
"""

from __future__ import annotations

from pathlib import Path

FLASH = "flash_attention_2"
EAGER = "eager"
AUTO = "auto"  # transformers picks: sdpa where the class supports it, eager otherwise


def _model_class(config):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:  # remote-code or unknown architectures: nothing known about their kernels
        return None


def supports_flash(config) -> bool:
    cls = _model_class(config)
    if cls is None or not getattr(cls, "_supports_flash_attn", False):
        return False
    compatible = getattr(cls, "_compatible_flash_implementations", None)
    return compatible is None or FLASH in compatible


def request(model: str | Path | object, preferred: str | None) -> str | None:
    """The ``attn_implementation`` to pass for ``model`` (a model folder or its config): FlashAttention-2 where
    ``preferred`` and the class supports it, eager for soft-capped attention, else None (transformers' own
    choice). Any other explicit kernel name
    is passed through: the caller asked for it by name."""
    if preferred not in (None, AUTO, FLASH):
        return preferred
    if isinstance(model, (str, Path)):
        from transformers import AutoConfig

        model = AutoConfig.from_pretrained(model)
    if preferred == FLASH and supports_flash(model):
        return FLASH
    return EAGER if soft_capped(model) else None


def soft_capped(config) -> bool:
    """Whether the model's attention logits are soft-capped (the text config of a multimodal one)."""
    return getattr(config.get_text_config(), "attn_logit_softcapping", None) is not None


def resolved(model) -> str:
    """The implementation a loaded model runs (a PEFT wrapper forwards ``config`` to its base model)."""
    return model.config._attn_implementation
