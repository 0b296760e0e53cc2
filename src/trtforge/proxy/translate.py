"""What the wire formats built on the chat core (Responses, Messages) share when they translate a request
(and the style of their object ids).

Each builds the fields of a `ChatCompletionRequest` from its own request, and the chat core's refusals speak
of chat's parameters (`response_format`, `max_tokens`); these helpers turn both into the format's own names.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from trtforge.proxy.errors import InvalidRequestError
from trtforge.proxy.protocol import ChatCompletionRequest


def new_id(prefix: str) -> str:
    """An object id in the formats' style: `resp_…`, `msg_…`, `toolu_…` and a random 32-digit hex."""
    return f"{prefix}_{uuid.uuid4().hex}"


# (chat's parameter, the format's parameter): longest chat name first, so a prefix never shadows it.
Renames = Sequence[tuple[str, str]]


def validated_chat_request(fields: dict[str, Any], *, param: str) -> ChatCompletionRequest:
    """The chat request of translated `fields`; a refusal is one 400 on the format's parameter `param`."""
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequestError(
            f"{param}: {first['msg'].removeprefix('Value error, ')}", param=param
        ) from None


def renamed(exc: InvalidRequestError, renames: Renames) -> InvalidRequestError:
    """A refusal of the chat core, in the format's own parameter names (message and `param`)."""
    param, message = exc.param, exc.message
    for chat, ours in renames:
        message = message.replace(chat, ours)
    for chat, ours in renames:
        if param is not None and param.startswith(chat):
            param = ours + param[len(chat) :]
            break
    return InvalidRequestError(message, param=param, code=exc.code)
