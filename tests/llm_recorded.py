"""A hosted LLM over real HTTP for end-to-end tests: OpenAI chat completions and Bedrock Converse,
answering each language stage with recorded, realistic responses (the shapes and wording
gpt-4o-mini and Nova Pro gave for the demo brief; Nova wraps its JSON in a markdown fence).

The worker processes reach it through ONBRAND_OPENAI_BASE_URL / ONBRAND_BEDROCK_ENDPOINT_URL.
It also plays the failure modes: the first call of a run is throttled (429), a brief containing
"ACCESS-DENIED" gets the provider's auth error, and an image stage called without images is a 400.
The reviewer fails the brand's shadow rule until the caption mentions a contact shadow, so a
campaign goes through the revise loop.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHADOW_RULE = "The product must cast a soft shadow on the ground."
STAGE_MARKERS = {  # a phrase of each prompt template's system text
    "split an advertising brief": "decompose",
    "complete a caption": "caption",
    "photo editor planning": "scale",
    "brand and quality reviewer": "guideline",
    "revise captions": "revise",
}
BASELINE_REASONS = {
    "duplicated_product": "Exactly one shoe is visible.",
    "extra_objects": "Only the shoe and the street scene from the caption are present.",
    "floating_product": "The shoe sits on the pavement with a shadow under the sole.",
    "text_artefacts": "No lettering or watermark appears in the image.",
    "distorted_product": "The shoe matches the reference in shape, colour and logo.",
}


@dataclass
class Seen:
    stage: str
    api: str  # openai | bedrock
    system: str
    user: str
    images: int


@dataclass
class RecordedLLM:
    throttle_first: bool = True
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def stages(self) -> list[str]:
        return [s.stage for s in self.seen]

    def reply(self, api: str, system: str, user: str, images: int) -> tuple[int, dict[str, str], Any]:
        stage = next((v for k, v in STAGE_MARKERS.items() if k in system), "unknown")
        with self.lock:
            first = not self.seen
            self.seen.append(Seen(stage, api, system, user, images))
        if first and self.throttle_first:
            return _throttled(api)
        if "ACCESS-DENIED" in user:
            return _denied(api)
        if stage in ("scale", "guideline") and images < 2:
            return _bad_request(api, f"{stage} needs the candidate and product images, got {images}")
        text = json.dumps(ANSWERS[stage](user))
        return 200, {}, _completion(api, f"```json\n{text}\n```" if api == "bedrock" else text, system + user)


def _decompose(user: str) -> dict[str, Any]:
    return {
        "english": None,
        "products": ["running shoe"],
        "backgrounds": ["urban street"],
        "themes": ["sunset"],
        "mood": None,
        "season": None,
        "audience": None,
    }


def _caption(user: str) -> dict[str, Any]:
    return {
        "pose": "standing on its sole, angled toward the camera",
        "lighting": "warm golden sunset light",
        "camera": "low angle close-up shot",
        "style": "vibrant lifestyle sports advertising photo",
    }


def _scale(user: str) -> dict[str, Any]:
    return {
        "share": 0.42,
        "reason": "A running shoe is about 30 cm long; in a low close-up of a street it should "
        "fill a good part of the frame while the street stays readable.",
    }


def _guideline(user: str) -> dict[str, Any]:
    caption = re.search(r"Caption the candidate was made from: (.*)", user)
    grounded = bool(caption and "contact shadow" in caption.group(1))
    verdicts = []
    for rule_id, text in re.findall(r"^(\w+): (.*)$", user.split("Rules:", 1)[1], re.M):
        if rule_id in BASELINE_REASONS:
            verdicts.append({"id": rule_id, "passed": True, "reason": BASELINE_REASONS[rule_id]})
        elif text.rstrip(".") == SHADOW_RULE.rstrip(".") and not grounded:
            verdicts.append(
                {
                    "id": rule_id,
                    "passed": False,
                    "reason": "The shoe casts no visible shadow on the pavement; it looks pasted on.",
                }
            )
        else:
            verdicts.append({"id": rule_id, "passed": True, "reason": "The image follows this guideline."})
    return {"verdicts": verdicts}


def _revise(user: str) -> dict[str, Any]:
    caption = re.search(r"^Caption: (.*)$", user, re.M)
    assert caption, user
    return {
        "caption": f"{caption.group(1)}, resting on the pavement with a soft contact shadow beneath it",
        "negative_terms": ["floating shoe", "missing shadow"],
        "change": "Grounded the shoe with a contact shadow on the pavement, as the reviewer asked.",
    }


ANSWERS = {"decompose": _decompose, "caption": _caption, "scale": _scale, "guideline": _guideline, "revise": _revise}


def _completion(api: str, text: str, prompt: str) -> Any:
    tokens_in, tokens_out = max(1, len(prompt) // 4), max(1, len(text) // 4)
    if api == "bedrock":
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": tokens_in, "outputTokens": tokens_out, "totalTokens": tokens_in + tokens_out},
            "metrics": {"latencyMs": 840},
        }
    return {
        "id": "chatcmpl-9x2Rk7",
        "object": "chat.completion",
        "created": 1732180000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
    }


def _throttled(api: str) -> tuple[int, dict[str, str], Any]:
    if api == "bedrock":
        return (
            429,
            {"x-amzn-ErrorType": "ThrottlingException"},
            {"message": "Too many requests, please wait before trying again."},
        )
    return (
        429,
        {"Retry-After": "1"},
        {
            "error": {
                "message": "Rate limit reached for gpt-4o-mini on requests per min "
                "(RPM): Limit 500. Please try again in 120ms.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
    )


def _denied(api: str) -> tuple[int, dict[str, str], Any]:
    if api == "bedrock":
        return (
            403,
            {"x-amzn-ErrorType": "AccessDeniedException"},
            {"message": "You don't have access to the model with the specified model ID."},
        )
    return (
        401,
        {},
        {
            "error": {
                "message": "Incorrect API key provided: sk-test***. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )


def _bad_request(api: str, message: str) -> tuple[int, dict[str, str], Any]:
    if api == "bedrock":
        return 400, {"x-amzn-ErrorType": "ValidationException"}, {"message": message}
    return 400, {}, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


def _openai_turns(body: dict[str, Any]) -> tuple[str, str, int]:
    system = " ".join(m["content"] for m in body["messages"] if m["role"] == "system")
    last = body["messages"][-1]["content"]
    parts = last if isinstance(last, list) else [{"type": "text", "text": last}]
    text = " ".join(p.get("text", "") for p in parts if p["type"] == "text")
    return system, text, sum(p["type"] == "image_url" for p in parts)


def _bedrock_turns(body: dict[str, Any]) -> tuple[str, str, int]:
    system = " ".join(b["text"] for b in body.get("system", []))
    blocks = body["messages"][-1]["content"]
    return system, " ".join(b.get("text", "") for b in blocks), sum("image" in b for b in blocks)


def _handler(llm: RecordedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            api = "bedrock" if self.path.endswith("/converse") else "openai"
            turns = _bedrock_turns(body) if api == "bedrock" else _openai_turns(body)
            status, headers, payload = llm.reply(api, *turns)
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
            pass

    return Handler


@contextmanager
def recorded_llm(**options: Any) -> Iterator[RecordedLLM]:
    llm = RecordedLLM(**options)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(llm))
    llm.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield llm
    finally:
        server.shutdown()
        server.server_close()
