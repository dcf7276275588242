"""`OpenAIJudge`: an LVLM judge speaking the OpenAI chat-completions protocol through the official ``openai`` SDK.

Works with OpenAI, Azure OpenAI and any OpenAI-compatible server (vLLM, Ollama, LM Studio, LiteLLM) via ``base_url``.
The SDK's own retries are switched off; this module retries 429/5xx/timeouts/connection errors itself with
exponential backoff and full jitter, waiting at least as long as the server's ``Retry-After`` asks.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..rewards import PERSPECTIVES
from .base import ImageInput, Judge, JudgeConfigurationError, JudgeResult, PerspectiveJudgment, check_perspectives
from .images import DETAIL_LEVELS, IMAGE_FORMATS, ImageLoadError, PreparedImage, prepare_image, vision_tokens
from .limits import CallLimiter
from .parsing import combined_judgments_from_reply, judgment_from_reply
from .prompts import PromptTemplate, combined_judgment_schema, load_judgment_schema, load_prompt_set

StructuredOutput = Literal["json_schema", "json_object", "none"]
STRUCTURED_OUTPUT_MODES: tuple[str, ...] = ("json_schema", "json_object", "none")
MAX_RETRY_AFTER_SECONDS = 600.0
EXPECTED_COMPLETION_TOKENS = 80  # typical reply length, for cost estimates (the limit is `max_tokens`)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date), if present."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _check_positive(name: str, value: Any, allow_none: bool = False, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        what = "a positive integer" if integer else "a positive number"
        raise ValueError(f"`{name}` must be {what}{' or None' if allow_none else ''}, got {value!r}")


class OpenAIJudge(Judge):
    """Grade edits with an LVLM behind an OpenAI-compatible chat-completions endpoint.

    Args:
        model (`str`, defaults to ``"gpt-4o"``): the model name sent with each request.
        base_url (`str`, *optional*): the API root (e.g. ``"http://localhost:8000/v1"`` for vLLM); OpenAI's by default.
        api_key_env (`str`, defaults to ``"OPENAI_API_KEY"``): the environment variable holding the API key (never
            the key itself). Servers that need no key still need it set to any non-empty value.
        azure_api_version (`str`, *optional*): talk to Azure OpenAI (``base_url`` is then the Azure endpoint).
        prompt_version (`str`, defaults to ``"v1"``) / prompt_dir (*optional*): which prompt files to use.
        combined (`bool`, defaults to `False`): one request per triplet with the combined prompt instead of one per
            perspective (the paper's way).
        structured_output (`str`, defaults to ``"json_schema"``): ``"json_schema"`` sends the judgment schema as
            ``response_format``; ``"json_object"`` asks for any JSON; ``"none"`` for servers without support (the
            tolerant parser reads the reply either way).
        temperature (`float`, defaults to 0) / seed (`int`, defaults to 0): sent with every request (``seed=None``
            omits it).
        max_tokens (`int`, defaults to 300): reply length limit.
        image_max_side (`int`, defaults to 512): images are downscaled so their longest side is at most this.
        image_format (`str`, defaults to ``"jpeg"``) / jpeg_quality (`int`, defaults to 90): data-URL encoding.
        image_detail (`str`, defaults to ``"auto"``): the ``detail`` field of image parts (``low``/``high``/``auto``).
        timeout (`float`, defaults to 60): seconds per request.
        max_retries (`int`, defaults to 5): retries after the first attempt for 429/5xx/timeouts/connection errors.
        backoff_base (`float`, defaults to 1) / backoff_max (`float`, defaults to 60): exponential backoff, with full
            jitter, in seconds; a ``Retry-After`` header sets the minimum wait.
        extra_body (`dict`, *optional*): extra request fields for servers that need them.
    """

    name = "openai"

    def __init__(
        self,
        model: str = "gpt-4o",
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        *,
        azure_api_version: str | None = None,
        prompt_version: str = "v1",
        prompt_dir: str | os.PathLike | None = None,
        combined: bool = False,
        structured_output: StructuredOutput = "json_schema",
        temperature: float = 0.0,
        seed: int | None = 0,
        max_tokens: int = 300,
        image_max_side: int | None = 512,
        image_format: str = "jpeg",
        jpeg_quality: int = 90,
        image_detail: str = "auto",
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"`model` must be a non-empty string, got {model!r}")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError(f"`api_key_env` must name an environment variable, got {api_key_env!r}")
        if structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(f"`structured_output` must be one of {STRUCTURED_OUTPUT_MODES}, got {structured_output!r}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"`image_format` must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if image_detail not in DETAIL_LEVELS:
            raise ValueError(f"`image_detail` must be one of {DETAIL_LEVELS}, got {image_detail!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ValueError(f"`temperature` must be a number in [0, 2], got {temperature!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an integer or None, got {seed!r}")
        if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 95:
            raise ValueError(f"`jpeg_quality` must be an integer in [1, 95], got {jpeg_quality!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be an integer >= 0, got {max_retries!r}")
        _check_positive("max_tokens", max_tokens, integer=True)
        _check_positive("image_max_side", image_max_side, allow_none=True, integer=True)
        _check_positive("timeout", timeout)
        _check_positive("backoff_base", backoff_base)
        _check_positive("backoff_max", backoff_max)

        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.azure_api_version = azure_api_version
        self.prompts: dict[str, PromptTemplate] = load_prompt_set(prompt_version, prompt_dir)
        if combined and "combined" not in self.prompts:
            raise FileNotFoundError(f"`combined=True` needs a combined_{prompt_version}.txt prompt file")
        self.combined = combined
        self.structured_output = structured_output
        self.temperature = float(temperature)
        self.seed = seed
        self.max_tokens = max_tokens
        self.image_max_side = image_max_side
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.image_detail = image_detail
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.extra_body = dict(extra_body or {})
        from ..extras import require

        # loaded with the judge (not with the package), not inside the first request; a clear error without it
        require("openai", extra="judge", feature="the OpenAI-compatible judge (OpenAIJudge)")

        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._sync_client: Any = None

    # ----------------------------------------------------------------------------------------------- configuration
    def _prompt_for(self, perspective: str) -> PromptTemplate:
        return self.prompts["combined"] if self.combined else self.prompts[perspective]

    def fingerprint(self, perspective: str) -> dict[str, Any]:
        prompt = self._prompt_for(perspective)
        return {
            "backend": "openai-chat",
            "prompt_id": prompt.id,
            "prompt_sha256": prompt.sha256,
            "model": self.model,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "structured_output": self.structured_output,
            "image_max_side": self.image_max_side,
            "image_format": self.image_format,
            "jpeg_quality": self.jpeg_quality if self.image_format == "jpeg" else None,
            "image_detail": self.image_detail,
            "extra_body": self.extra_body,
        }

    def images_seen(self, perspective: str) -> tuple[str, ...]:
        return self._prompt_for(perspective).images

    def api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise JudgeConfigurationError(
                f"the environment variable {self.api_key_env} (from `api_key_env`) is not set; set it to your API key "
                "(any non-empty value for local servers that need no key)"
            )
        return key

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"api_key": self.api_key(), "max_retries": 0, "timeout": self.timeout}
        if self.azure_api_version is not None:
            kwargs.update(azure_endpoint=self.base_url, api_version=self.azure_api_version)
        elif self.base_url is not None:
            kwargs["base_url"] = self.base_url
        return kwargs

    def async_client(self) -> Any:
        """The `openai.AsyncOpenAI` (or Azure) client of the running event loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import openai

            cls = openai.AsyncAzureOpenAI if self.azure_api_version is not None else openai.AsyncOpenAI
            client = cls(**self._client_kwargs())
            self._clients[loop] = client
        return client

    def sync_client(self) -> Any:
        """A synchronous `openai.OpenAI` (or Azure) client (used by Batch API mode)."""
        if self._sync_client is None:
            import openai

            cls = openai.AzureOpenAI if self.azure_api_version is not None else openai.OpenAI
            self._sync_client = cls(**self._client_kwargs())
        return self._sync_client

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None

    # --------------------------------------------------------------------------------------------------- requests
    def _response_format(self, combined: bool) -> dict[str, Any] | None:
        if self.structured_output == "json_schema":
            schema = combined_judgment_schema() if combined else load_judgment_schema()
            return {"type": "json_schema", "json_schema": schema}
        if self.structured_output == "json_object":
            return {"type": "json_object"}
        return None

    def request_body(self, perspective: str, instruction: str, images: Mapping[str, PreparedImage]) -> dict[str, Any]:
        """The chat-completions request body for one perspective (or the combined prompt)."""
        prompt = self._prompt_for(perspective)
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt.render(instruction)}]
        for role in prompt.images:
            content.append(
                {"type": "image_url", "image_url": {"url": images[role].data_url, "detail": self.image_detail}}
            )
        messages: list[dict[str, Any]] = []
        if prompt.system:
            messages.append({"role": "system", "content": prompt.system})
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        response_format = self._response_format(self.combined)
        if response_format is not None:
            body["response_format"] = response_format
        body.update(self.extra_body)
        return body

    def estimate_call(
        self, perspective: str, image_sizes: Mapping[str, tuple[int, int]], instruction: str
    ) -> tuple[int, int]:
        prompt = self._prompt_for(perspective)
        text_tokens = (len(prompt.system) + len(prompt.render(instruction))) // 4 + 12
        image_tokens = 0
        for role in prompt.images:
            width, height = image_sizes.get(role, (512, 512))
            scale = min(1.0, self.image_max_side / max(width, height)) if self.image_max_side else 1.0
            image_tokens += vision_tokens(
                max(1, round(width * scale)), max(1, round(height * scale)), self.image_detail
            )
        completion = EXPECTED_COMPLETION_TOKENS * (len(PERSPECTIVES) if self.combined else 1)
        return text_tokens + image_tokens, completion

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        jittered = random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))
        if retry_after is None:
            return jittered
        return min(retry_after, MAX_RETRY_AFTER_SECONDS) + random.uniform(0.0, 0.05 * self.backoff_base)

    async def _send(
        self, body: dict[str, Any], limiter: CallLimiter | None, estimated_tokens: int
    ) -> tuple[Any | None, str | None, str | None, int]:
        """POST one request with retries. Returns (completion, failure reason, message, attempts)."""
        import openai

        client = self.async_client()
        limiter = limiter or CallLimiter()
        reason: str | None = None
        message: str | None = None
        for attempt in range(1, self.max_retries + 2):
            retry_after: float | None = None
            retryable = True
            async with limiter.slot(estimated_tokens + self.max_tokens):
                try:
                    # The SDK's generic POST (documented for endpoints and fields it does not type) sends the body
                    # as built and hands back the bytes; `chat.completions.create` would re-walk every message
                    # part (base64 images included) and build pydantic models, the client's main CPU cost at scale.
                    raw = await client.post(
                        "/chat/completions",
                        cast_to=bytes,
                        body=body,
                        options={"security": {"bearer_auth": True}},
                    )
                    completion = json.loads(raw)
                    if not isinstance(completion, dict) or not completion.get("choices"):
                        raise ValueError(f"the response is not a chat completion with choices: {raw[:200]!r}")
                    usage = completion.get("usage")
                    actual = usage.get("total_tokens") if isinstance(usage, dict) else None
                    limiter.correct_tokens(estimated_tokens + self.max_tokens, actual if isinstance(actual, int) else 0)
                    return completion, None, None, attempt
                except openai.APIStatusError as error:
                    status = error.status_code
                    retry_after = parse_retry_after(error.response.headers)
                    message = f"HTTP {status}: {str(error)[:500]}"
                    if status == 429:
                        reason = "rate_limited"
                    elif status >= 500:
                        reason = "server_error"
                    elif status == 408:
                        reason = "timeout"
                    else:
                        reason, retryable = "http_error", False
                except openai.APITimeoutError:
                    reason, message = "timeout", f"no response within {self.timeout:g} s"
                except openai.APIConnectionError as error:
                    cause = error.__cause__ or error
                    reason, message = "connection_error", f"{type(cause).__name__}: {cause}"
                except (openai.APIResponseValidationError, ValueError) as error:  # incl. JSON decoding
                    reason, message = "malformed_response", f"{type(error).__name__}: {str(error)[:500]}"
            if not retryable or attempt > self.max_retries:
                return None, reason, message, attempt
            await asyncio.sleep(self._backoff(attempt, retry_after))
        return None, reason, message, self.max_retries + 1  # not reached

    def judgments_from_completion(
        self, perspectives: Sequence[str], completion: Any, attempts: int = 1
    ) -> list[PerspectiveJudgment]:
        """Parse a chat completion (an SDK object or the plain dict of a Batch API result line)."""
        if isinstance(completion, Mapping):
            choices = [
                _Namespace(choice) for choice in (completion.get("choices") or []) if isinstance(choice, Mapping)
            ]
            completion = _Namespace(completion)
        else:
            choices = completion.choices
        model = getattr(completion, "model", None)
        model = str(model) if model is not None else None
        usage = getattr(completion, "usage", None)
        usage = _Namespace(usage) if isinstance(usage, Mapping) else usage
        prompt_tokens = _count(getattr(usage, "prompt_tokens", 0))
        completion_tokens = _count(getattr(usage, "completion_tokens", 0))
        share = len(perspectives)
        common = {
            "model": model,
            "attempts": attempts,
            "prompt_tokens": prompt_tokens // share,
            "completion_tokens": completion_tokens // share,
        }
        prompt_ids = {p: self._prompt_for(p).id for p in perspectives}

        def failed(reason: str, text: str, raw: str | None) -> list[PerspectiveJudgment]:
            return [
                PerspectiveJudgment.failure(p, reason, text, raw_reply=raw, prompt_id=prompt_ids[p], **common)
                for p in perspectives
            ]

        if not choices:
            return failed("malformed_response", "the response has no choices", None)
        choice = choices[0]
        message = choice.message
        message = _Namespace(message) if isinstance(message, Mapping) else message
        content = getattr(message, "content", None)
        refusal = getattr(message, "refusal", None)
        if refusal:
            return failed("refusal", "the model refused to grade", refusal)
        finish_reason = getattr(choice, "finish_reason", None)
        if finish_reason == "length":
            return failed("truncated_reply", f"the reply hit max_tokens={self.max_tokens}", content)
        if finish_reason == "content_filter":
            return failed("content_filter", "the reply was blocked by a content filter", content)
        if isinstance(content, list) and all(isinstance(part, Mapping) for part in content):
            # some compatible servers answer with content parts: keep their text, in order
            content = "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
        if content is not None and not isinstance(content, str):
            return failed("malformed_response", f"message content is not text: {type(content).__name__}", str(content))
        if self.combined:
            judgments = combined_judgments_from_reply(tuple(PERSPECTIVES), content, **common)
            by_perspective = {j.perspective: j for j in judgments}
            return [_with_prompt(by_perspective[p], prompt_ids[p]) for p in perspectives]
        return [judgment_from_reply(p, content, prompt_id=prompt_ids[p], **common) for p in perspectives]

    async def prepare_images(
        self, original: ImageInput, edited: ImageInput, roles: Sequence[str]
    ) -> tuple[dict[str, PreparedImage], dict[str, ImageLoadError]]:
        """Prepare the images named in ``roles`` in a worker thread; errors are returned, not raised."""
        sources = {"original": original, "edited": edited}
        prepared: dict[str, PreparedImage] = {}
        errors: dict[str, ImageLoadError] = {}
        for role in roles:
            try:
                prepared[role] = await asyncio.to_thread(
                    prepare_image, sources[role], self.image_max_side, self.image_format, self.jpeg_quality
                )
            except ImageLoadError as error:
                errors[role] = error
        return prepared, errors

    async def ajudge(
        self,
        instruction: str,
        original: ImageInput,
        edited: ImageInput,
        *,
        perspectives: Sequence[str] | None = None,
        limiter: CallLimiter | None = None,
    ) -> JudgeResult:
        if not isinstance(instruction, str):
            raise TypeError(f"`instruction` must be a string, got {type(instruction).__name__}")
        wanted = check_perspectives(perspectives)
        roles = sorted({role for p in wanted for role in self.images_seen(p)})
        prepared, errors = await self.prepare_images(original, edited, roles)
        judgments: dict[str, PerspectiveJudgment] = {}
        runnable: list[str] = []
        for perspective in wanted:
            missing = [role for role in self.images_seen(perspective) if role in errors]
            if missing:
                error = errors[missing[0]]
                judgments[perspective] = PerspectiveJudgment.failure(
                    perspective,
                    error.reason,
                    f"{missing[0]} image: {error}",
                    prompt_id=self._prompt_for(perspective).id,
                    attempts=0,
                )
            else:
                runnable.append(perspective)
        sizes = {role: (image.width, image.height) for role, image in prepared.items()}
        groups = [tuple(runnable)] if (self.combined and runnable) else [(p,) for p in runnable]

        async def run_group(group: tuple[str, ...]) -> list[PerspectiveJudgment]:
            body = self.request_body(group[0], instruction, prepared)
            estimated_prompt, _ = self.estimate_call(group[0], sizes, instruction)
            completion, reason, message, attempts = await self._send(body, limiter, estimated_prompt)
            if completion is None:
                return [
                    PerspectiveJudgment.failure(
                        p, reason or "judge_error", message, prompt_id=self._prompt_for(p).id, attempts=attempts
                    )
                    for p in group
                ]
            return self.judgments_from_completion(group, completion, attempts)

        for group_judgments in await asyncio.gather(*(run_group(group) for group in groups)):
            for judgment in group_judgments:
                judgments[judgment.perspective] = judgment
        ordered = tuple(judgments[p] for p in wanted)
        return JudgeResult(ordered, f"{self.name}:{self.model}", {p: self._prompt_for(p).id for p in wanted})


def _count(value: Any) -> int:
    """A token count from a server's usage field (0 when absent or not a non-negative integer)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class _Namespace:
    """Attribute access over a dict (for Batch API result lines)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        value = self._data.get(name)
        return _Namespace(value) if isinstance(value, Mapping) else value


def _with_prompt(judgment: PerspectiveJudgment, prompt_id: str) -> PerspectiveJudgment:
    import dataclasses

    return dataclasses.replace(judgment, prompt_id=prompt_id)


def completion_json(completion: Any) -> str:
    """A compact JSON dump of an SDK completion, for debugging."""
    return json.dumps(completion.model_dump() if hasattr(completion, "model_dump") else completion, default=str)
