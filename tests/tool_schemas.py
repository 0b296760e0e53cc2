"""The tools and schemas the chat, Responses and Messages tests share, each API's tool shape made from one
parameter schema (tiny's trained weather call; a mood tool tiny never learned, so guided decoding alone makes it)."""

from __future__ import annotations

from typing import Any

from trtforge.reference.tiny import WEATHER_TOOL

WEATHER_NAME: str = WEATHER_TOOL["function"]["name"]
WEATHER_DESCRIPTION = "Get the current weather for a city."  # the agent-API tests' wording (chat's says "in")
WEATHER_PARAMETERS: dict[str, Any] = WEATHER_TOOL["function"]["parameters"]
MOOD_NAME = "set_mood"
MOOD_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "mood": {"type": "string", "enum": ["happy", "calm"]},
        "level": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["mood", "level"],
    "additionalProperties": False,
}
FORECAST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "sunny": {"type": "boolean"},
        "celsius": {"type": "integer", "minimum": -40, "maximum": 50},
    },
    "required": ["city", "sunny", "celsius"],
    "additionalProperties": False,
}

# Chat Completions: the function nested under "function".
CHAT_MOOD_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": MOOD_NAME, "parameters": MOOD_PARAMETERS},
}
# Responses: function tools are flat.
RESPONSES_WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": WEATHER_NAME,
    "description": WEATHER_DESCRIPTION,
    "parameters": WEATHER_PARAMETERS,
    "strict": None,
}
RESPONSES_MOOD_TOOL: dict[str, Any] = {
    "type": "function",
    "name": MOOD_NAME,
    "parameters": MOOD_PARAMETERS,
    "strict": True,
}
# Messages: `input_schema`, no type.
MESSAGES_WEATHER_TOOL: dict[str, Any] = {
    "name": WEATHER_NAME,
    "description": WEATHER_DESCRIPTION,
    "input_schema": WEATHER_PARAMETERS,
}
MESSAGES_MOOD_TOOL: dict[str, Any] = {"name": MOOD_NAME, "input_schema": MOOD_PARAMETERS}
