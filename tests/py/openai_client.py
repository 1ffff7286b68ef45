"""The official OpenAI SDK as a client of the end-to-end proxy tests.

    openai_client.py BASE_URL MODE [MODE ...]

Runs each mode against BASE_URL (e.g. http://198.18.2.2:8000/v1) and prints one JSON object
per mode on its own line, for the Rust test to check against the simulator's records:

    chat             non-streaming chat completion: content and usage
    stream           streaming chat, usage not asked for: content, chunks, usage chunks seen
    stream-usage     streaming chat with stream_options.include_usage: content and usage
    responses        streaming Responses API: content, usage, event types
    abort:N          streaming chat, read N content deltas, then close the stream

No retries and a bounded timeout, so a failure shows as it happened.
"""

import json
import sys
import time

import openai

MODEL = "llama-3-8b"
MESSAGES = [{"role": "user", "content": "tell me a short story"}]


def chat(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=9)
    return {
        "content": r.choices[0].message.content,
        "usage": {"prompt": r.usage.prompt_tokens, "completion": r.usage.completion_tokens},
    }


def stream(client, include_usage):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    content, chunks, usage_chunks, usage = "", 0, 0, None
    with client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=11, stream=True, **kwargs
    ) as s:
        for chunk in s:
            chunks += 1
            if chunk.usage is not None:
                usage_chunks += 1
                usage = {"prompt": chunk.usage.prompt_tokens, "completion": chunk.usage.completion_tokens}
            for choice in chunk.choices:
                content += choice.delta.content or ""
    return {"content": content, "chunks": chunks, "usage_chunks": usage_chunks, "usage": usage}


def responses(client):
    content, usage, types = "", None, []
    with client.responses.create(
        model=MODEL, input="tell me a short story", max_output_tokens=13, stream=True
    ) as s:
        for event in s:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                content += event.delta
            if event.type == "response.completed":
                u = event.response.usage
                usage = {"input": u.input_tokens, "output": u.output_tokens}
    return {"content": content, "usage": usage, "types": types}


def abort(client, n):
    deltas, content = 0, ""
    s = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=400,
        stream=True,
        extra_headers={"x-sim-tps": "20"},
    )
    for chunk in s:
        for choice in chunk.choices:
            if choice.delta.content:
                deltas += 1
                content += choice.delta.content
        if deltas >= n:
            break
    # What "stop" in a chat UI does: close the response mid-stream.
    s.close()
    return {"deltas": deltas, "content": content}


def main():
    base_url, modes = sys.argv[1], sys.argv[2:]
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=20.0)
    for mode in modes:
        started = time.monotonic()
        if mode == "chat":
            out = chat(client)
        elif mode == "stream":
            out = stream(client, include_usage=False)
        elif mode == "stream-usage":
            out = stream(client, include_usage=True)
        elif mode == "responses":
            out = responses(client)
        elif mode.startswith("abort:"):
            out = abort(client, int(mode.split(":", 1)[1]))
        else:
            sys.exit(f"unknown mode {mode}")
        out["mode"] = mode
        out["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
