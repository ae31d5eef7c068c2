"""One OpenAI chat-completions client for every endpoint the pipeline deploys to.

The request body (``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``) and the reading of the
answer (``choices[0].message.content``) are the same for both; only the transport differs:
- a local OpenAI-compatible server (``transformers serve``): POST ``{base_url}/v1/chat/completions``;
- Vertex AI with Model Garden's vLLM container: the same body as one predict instance marked
  ``"@requestFormat": "chatCompletions"``, which the container hands to vLLM's chat-completions handler; the
  prediction is the chat completion.
Errors are one line and never carry the request or the response text (they may hold patient questions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

CHAT_REQUEST_FORMAT = {"@requestFormat": "chatCompletions"}


class EndpointError(Exception):
    """The endpoint failed a request (HTTP error, timeout, or a reply that is not a chat completion)."""


@dataclass
class ChatAnswer:
    text: str
    finish_reason: str
    latency_s: float
    served_by: str = ""  # the deployed model that answered, where the endpoint says


class Transport(Protocol):
    def send(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """POST one chat-completions request; the chat completion and who served it."""


class OpenAIServer:
    """An OpenAI-compatible server (``transformers serve``, ``vllm serve``)."""

    def __init__(self, base_url: str, timeout_s: float = 120.0) -> None:
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.timeout_s = timeout_s

    def send(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        import requests

        try:
            response = requests.post(self.url, json=body, timeout=self.timeout_s)
        except requests.RequestException as err:
            raise EndpointError(f"{type(err).__name__} from {self.url}") from None
        if response.status_code != 200:
            raise EndpointError(f"HTTP {response.status_code} from {self.url}")
        try:
            return response.json(), ""
        except ValueError:
            raise EndpointError(f"a reply from {self.url} that is not JSON") from None


class VertexPredict:
    """A Vertex AI endpoint serving Model Garden's vLLM container (predict route ``/generate``)."""

    def __init__(self, endpoint: Any, timeout_s: float = 120.0) -> None:
        self.endpoint = endpoint  # an aiplatform.Endpoint
        self.timeout_s = timeout_s

    def send(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        import requests
        from google.api_core import exceptions
        from google.protobuf import json_format

        where = f"{self.endpoint.resource_name}:predict"
        try:
            prediction = self.endpoint.predict(instances=[{**CHAT_REQUEST_FORMAT, **body}], timeout=self.timeout_s)
        except exceptions.GoogleAPICallError as err:
            raise EndpointError(f"{type(err).__name__} ({err.code}) from {where}") from None
        except (requests.RequestException, json_format.ParseError) as err:
            raise EndpointError(f"{type(err).__name__} from {where}") from None
        predictions = prediction.predictions
        completion = predictions[0] if isinstance(predictions, list) and predictions else predictions
        return completion, str(prediction.deployed_model_id or "")


class ChatClient:
    """Sends chat prompts with fixed decoding settings and reads the answer text."""

    def __init__(self, transport: Transport, *, max_tokens: int, temperature: float, top_p: float, seed: int) -> None:
        self.transport = transport
        self.decoding = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}

    def request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {"messages": messages, **self.decoding}

    def complete(self, messages: list[dict[str, Any]]) -> ChatAnswer:
        started = time.perf_counter()
        completion, served_by = self.transport.send(self.request(messages))
        latency = time.perf_counter() - started
        text, finish_reason = read_completion(completion)
        return ChatAnswer(text=text, finish_reason=finish_reason, latency_s=latency, served_by=served_by)


def read_completion(completion: Any) -> tuple[str, str]:
    """``choices[0].message.content`` and its ``finish_reason`` from an OpenAI chat completion."""
    try:
        choice = completion["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EndpointError("a reply that is not a chat completion (no choices[0].message.content)") from None
    if not isinstance(text, str):
        raise EndpointError("a reply whose choices[0].message.content is not text")
    return text, str(choice.get("finish_reason") or "")
