"""Activation functions by diffusers' names."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation diffusers calls `name`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r} (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]
