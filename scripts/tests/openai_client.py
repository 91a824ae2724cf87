#!/usr/bin/env python3
"""Drives a Kernelize server's `/v1/chat/completions` with the unmodified `openai`
client library from PyPI (pinned in requirements-openai.txt, installed into a throwaway
venv by kzvenv) and prints one JSON object with what it got back.

    scripts/tests/openai_client.py --base-url http://127.0.0.1:PORT/v1 --api-key kz_… \
        [--venv DIR]

Three calls: a plain completion, a streamed one (chunks joined; the usage chunk asked
for with stream_options), and one under a json_schema response format. The caller
(crates/server/tests/it/openai_client.rs) asserts the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import kzvenv  # noqa: E402

REQUIREMENTS = os.path.join(HERE, "requirements-openai.txt")


def log(msg: str) -> None:
    print(f"[openai_client] {msg}", file=sys.stderr)


def run(base_url: str, api_key: str) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    out: dict = {"openai_version": openai.__version__}

    models = client.models.list()
    model = models.data[0].id
    out["models"] = [m.id for m in models.data]

    plain = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name one colour of the rainbow."},
        ],
        temperature=0,
        max_tokens=16,
        seed=7,
    )
    out["plain"] = {
        "id": plain.id,
        "object": plain.object,
        "content": plain.choices[0].message.content,
        "role": plain.choices[0].message.role,
        "finish_reason": plain.choices[0].finish_reason,
        "usage": plain.usage.model_dump() if plain.usage else None,
    }

    chunks = []
    usage = None
    finish = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count from one to five."}],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    n = 0
    for chunk in stream:
        n += 1
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                chunks.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    out["stream"] = {"chunks": n, "content": "".join(chunks), "finish_reason": finish, "usage": usage}

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "population_millions": {"type": "number"},
        },
        "required": ["city", "country", "population_millions"],
        "additionalProperties": False,
    }
    structured = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give a large city, its country and population in millions."}],
        temperature=0,
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    )
    content = structured.choices[0].message.content
    out["json_schema"] = {"content": content, "parsed": json.loads(content)}

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        out["unknown_model"] = None
    except openai.NotFoundError as e:
        out["unknown_model"] = e.status_code

    bad = openai.OpenAI(base_url=base_url, api_key="kz_nobody_wrong", max_retries=0)
    try:
        bad.models.list()
        out["bad_key"] = None
    except openai.AuthenticationError as e:
        out["bad_key"] = e.status_code
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url")
    ap.add_argument("--api-key")
    ap.add_argument("--prepare", action="store_true", help="only create the venv (idempotent), then exit")
    kzvenv.add_arguments(ap, os.environ.get("KZ_OPENAI_VENV", os.path.expanduser("~/.cache/kz-venv-openai")))
    args = ap.parse_args()
    if kzvenv.should_reexec(args):
        py = kzvenv.ensure(args.venv, REQUIREMENTS, args.fresh_venv, log)
        if args.prepare:
            return
        os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])
    if args.prepare:
        return
    if not args.base_url or not args.api_key:
        ap.error("--base-url and --api-key are required")
    print(json.dumps(run(args.base_url, args.api_key)))


if __name__ == "__main__":
    main()
