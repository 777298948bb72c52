"""An agent framework speaking the OpenAI API against a real ``plait`` server: LangChain's
``ChatOpenAI.bind_tools`` gets a tool call, runs the tool, and sends the result back."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

pytestmark = pytest.mark.slow

SMOL = "SmolLM2-135M-Instruct"


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny and 21 C in {city}"


def test_bind_tools_call_run_and_answer(plait_server):
    llm = ChatOpenAI(
        base_url=f"{plait_server}/v1",
        api_key="unused",
        model=SMOL,
        temperature=0,
        max_tokens=30,
        max_retries=0,
    )
    messages = [HumanMessage("What is the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    assert isinstance(ai, AIMessage) and len(ai.tool_calls) == 1
    call = ai.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    result = get_weather.invoke(call)  # a ToolMessage answering that call
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    answer = llm.bind_tools([get_weather]).invoke([*messages, ai, result])
    assert isinstance(answer, AIMessage)
    assert answer.content or answer.tool_calls
    streamed = llm.bind_tools([get_weather], tool_choice="get_weather").stream(messages)
    chunks = list(streamed)
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(call["name"], call["args"])]
