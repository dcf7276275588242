"""The one way to build the project's judge from a base URL, a model name and the name of the API-key variable.

`reward-edit annotate`, `reward-edit evaluate` (the benchmark's judge) and the ComfyUI ``RewardJudge`` node call
`make_judge`, so the three check their settings, and read the key, the same way. The key itself is only ever read
from the environment (never passed, stored or logged).
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_JUDGE_MODEL = "gpt-4o"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


def normalize_base_url(base_url: str | None, name: str = "base_url") -> str | None:
    """``None``/blank → ``None`` (OpenAI's API); otherwise the stripped URL, which must start with http(s)://."""
    if base_url is None:
        return None
    if not isinstance(base_url, str):
        raise TypeError(f"`{name}` must be a URL string or None, got {type(base_url).__name__}")
    base_url = base_url.strip()
    if not base_url:
        return None
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"`{name}` must start with http:// or https://, got {base_url!r} (leave it empty for OpenAI's API)"
        )
    return base_url


def make_judge(
    model: str = DEFAULT_JUDGE_MODEL,
    base_url: str | None = None,
    api_key_env: str = DEFAULT_API_KEY_ENV,
    require_key: bool = True,
    **options: Any,
):
    """Build an `OpenAIJudge` for an OpenAI-compatible server.

    Args:
        model: the judge model name (e.g. ``"gpt-4o"``); surrounding whitespace is removed.
        base_url: API root of an OpenAI-compatible server; ``None`` or blank for OpenAI's API.
        api_key_env: the environment variable holding the key (any non-empty value for servers that need none).
        require_key: check now that `api_key_env` is set, so a missing key fails before any work (`ValueError`).
        options: the other `OpenAIJudge` settings (prompt version, temperature, timeout, ...).

    Raises:
        `ValueError` naming the argument (``model``, ``base_url``, ``api_key_env``) and what is accepted.
    """
    from .openai_judge import OpenAIJudge

    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"`model` must name the judge model, e.g. {DEFAULT_JUDGE_MODEL!r}, got {model!r}")
    if not isinstance(api_key_env, str) or not api_key_env.strip():
        raise ValueError(f"`api_key_env` must name an environment variable, got {api_key_env!r}")
    api_key_env = api_key_env.strip()
    if require_key and not os.environ.get(api_key_env):
        raise ValueError(
            f"`api_key_env`: the environment variable {api_key_env} is not set; set it to the judge's API key "
            "(any non-empty value for a local server that needs none)"
        )
    return OpenAIJudge(model=model.strip(), base_url=normalize_base_url(base_url), api_key_env=api_key_env, **options)
