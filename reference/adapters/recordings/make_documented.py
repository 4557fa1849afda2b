"""Write the transcripts of engines that cannot run here (llama.cpp's native server, TGI, Triton)
in each engine's documented wire framing, carrying real SmolLM2 tokens.

The token texts and ids come from the real model (llama-cpp-python in-process, seed fixed), so the
content is what a real engine would stream; the framing (field names, final event, error forms,
metadata endpoints) follows each engine's documentation, cited in README.md. Usage::

    python -m llorch.reference.adapters.recordings.make_documented MODEL.gguf OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is"
LONG_PROMPT = "Once upon a time, in a small village by the sea, there lived"


def real_tokens(model_path: str, prompt: str, n: int, seed: int) -> list[tuple[int, str]]:
    """(id, text) of each token the real model generates for ``prompt``."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model_path, n_ctx=512, seed=seed, verbose=False)
    out: list[tuple[int, str]] = []
    chunks: Any = llm.create_completion(prompt, max_tokens=n, temperature=0.8, top_p=0.95, top_k=40,
                                        repeat_penalty=1.0, seed=seed, stream=True)
    for chunk in chunks:
        text = chunk["choices"][0]["text"]
        if text:
            ids = llm.tokenize(text.encode(), add_bos=False, special=False)
            out.append((ids[0] if len(ids) == 1 else -1, text))
    return out


JSON = "application/json"


def sse(objs: list[Any], field: str = "data") -> list[str]:
    return [f"{field}: {json.dumps(o, separators=(',', ':'))}\n\n" for o in objs]


def exchange(note: str, method: str, path: str, status: int, chunks: list[str], body: Any = None,
             content_type: str = "text/event-stream") -> dict[str, Any]:
    req: dict[str, Any] = {"method": method, "path": path}
    if body is not None:
        req["json"] = body
    return {"note": note, "request": req,
            "response": {"status": status, "headers": {"content-type": content_type}, "chunks": chunks}}


def js(obj: Any) -> list[str]:
    return [json.dumps(obj)]


def llama_server(toks: list[tuple[int, str]], long: list[tuple[int, str]], model: str) -> dict[str, Any]:
    def stream(ts: list[tuple[int, str]], n_prompt: int, stop_type: str) -> list[str]:
        lines = [{"content": t, "tokens": [i], "stop": False, "id_slot": 0, "tokens_predicted": k + 1,
                  "tokens_evaluated": n_prompt} for k, (i, t) in enumerate(ts)]
        lines.append({"content": "", "tokens": [], "id_slot": 0, "stop": True, "model": model,
                      "tokens_predicted": len(ts), "tokens_evaluated": n_prompt, "stop_type": stop_type,
                      "stopping_word": "", "tokens_cached": n_prompt + len(ts) - 1,
                      "timings": {"prompt_n": n_prompt, "prompt_ms": 41.2, "predicted_n": len(ts),
                                  "predicted_ms": 80.0 * len(ts) / 8}})
        return sse(lines)

    return {"engine": "llama.cpp server (llama-server)", "source": "documented", "exchanges": [
        exchange("health once loaded", "GET", "/health", 200, js({"status": "ok"}), content_type=JSON),
        exchange("props: slots, model path, build", "GET", "/props", 200, js({
            "default_generation_settings": {"n_ctx": 2048, "params": {"seed": 4294967295}},
            "total_slots": 1, "model_path": model, "chat_template": "{{ messages }}",
            "build_info": "b6612-d8359f5f"}), content_type="application/json"),
        exchange("tokenizer", "POST", "/tokenize", 200, js({"tokens": [504, 3575, 282, 4649, 314]}),
                 {"content": PROMPT}, content_type="application/json"),
        exchange("seeded stream, stopped at n_predict", "POST", "/completion", 200,
                 stream(toks, 5, "limit"), {"prompt": PROMPT}),
        exchange("a longer stream, for cancel tests", "POST", "/completion", 200,
                 stream(long, 14, "limit"), {"prompt": LONG_PROMPT}),
        exchange("failure after the headers: a non-standard `error:` SSE field", "POST", "/completion", 200,
                 [*sse([{"content": toks[0][1], "tokens": [toks[0][0]], "stop": False, "id_slot": 0}]),
                  *sse([{"code": 500, "message": "failed to decode the batch", "type": "server_error"}],
                       field="error")], {"prompt": "error"}),
        exchange("malformed request", "POST", "/completion", 400, js(
            {"error": {"code": 400, "message": "\"prompt\" must be a string, or a list of tokens",
                       "type": "invalid_request_error"}}), {"prompt": 1}, content_type="application/json"),
        exchange("still loading the model", "GET", "/health", 503, js(
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
            content_type="application/json"),
    ]}


def tgi(toks: list[tuple[int, str]], long: list[tuple[int, str]]) -> dict[str, Any]:
    def stream(ts: list[tuple[int, str]], finish: str) -> list[str]:
        lines: list[dict[str, Any]] = []
        for k, (i, t) in enumerate(ts):
            last = k == len(ts) - 1
            lines.append({"index": k + 1, "token": {"id": i, "text": t, "logprob": -0.25, "special": False},
                          "generated_text": "".join(x for _, x in ts) if last else None,
                          "details": {"finish_reason": finish, "generated_tokens": len(ts), "seed": 42,
                                      "input_length": 5} if last else None})
        return [f"data:{json.dumps(o, separators=(',', ':'))}\n\n" for o in lines]

    return {"engine": "Hugging Face TGI 3.3.x (native API)", "source": "documented", "exchanges": [
        exchange("health", "GET", "/health", 200, [""], content_type="application/json"),
        exchange("info", "GET", "/info", 200, js({
            "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "model_sha": "12fd25f77366fa6b3b4b768ec3050bf629380bac",
            "model_pipeline_tag": "text-generation", "max_concurrent_requests": 128, "max_best_of": 2,
            "max_stop_sequences": 4, "max_input_tokens": 4095, "max_total_tokens": 4096,
            "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
            "version": "3.3.4", "sha": "9f38d9305143ac2d6a4fa66cb8d2e9a1a4dbd6fa"}), content_type=JSON),
        exchange("seeded stream with details", "POST", "/generate_stream", 200, stream(toks, "length"),
                 {"inputs": PROMPT}),
        exchange("a longer stream, for cancel tests", "POST", "/generate_stream", 200, stream(long, "length"),
                 {"inputs": LONG_PROMPT}),
        exchange("validation error", "POST", "/generate_stream", 422, js(
            {"error": "Input validation error: `temperature` must be strictly positive",
             "error_type": "validation"}), {"inputs": "bad"}, content_type="application/json"),
        exchange("overloaded", "POST", "/generate_stream", 429, js(
            {"error": "Model is overloaded", "error_type": "overloaded"}), {"inputs": "busy"},
            content_type="application/json"),
        exchange("failure mid-stream", "POST", "/generate_stream", 200,
                 [*stream([*toks[:1], (-1, "")], "length")[:1],
                  'data:{"error":"Request failed during generation: Server error: CUDA out of memory",'
                  '"error_type":"generation"}\n\n'], {"inputs": "error"}),
    ]}


def triton(toks: list[tuple[int, str]], long: list[tuple[int, str]]) -> dict[str, Any]:
    def stream(ts: list[tuple[int, str]]) -> list[str]:
        return sse([{"model_name": "ensemble", "model_version": "1", "sequence_end": False,
                     "sequence_id": 0, "sequence_start": False, "text_output": t} for _, t in ts])

    gen = "/v2/models/ensemble/generate_stream"
    return {"engine": "NVIDIA Triton 2.59 (generate extension, TensorRT-LLM ensemble)",
            "source": "documented", "exchanges": [
        exchange("server metadata", "GET", "/v2", 200, js({"name": "triton", "version": "2.59.0",
                                                           "extensions": [
            "classification", "sequence", "model_repository", "schedule_policy", "model_configuration",
            "system_shared_memory", "cuda_shared_memory", "binary_tensor_data", "parameters", "statistics",
            "trace", "logging"]}), content_type="application/json"),
        exchange("model metadata", "GET", "/v2/models/ensemble", 200, js({
            "name": "ensemble", "versions": ["1"], "platform": "ensemble",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [-1, 1]},
                       {"name": "max_tokens", "datatype": "INT32", "shape": [-1, 1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1, -1]}]}),
            content_type="application/json"),
        exchange("model ready", "GET", "/v2/models/ensemble/ready", 200, [""], content_type="text/plain"),
        exchange("streamed generation, one response per token", "POST", gen, 200,
                 stream(toks), {"text_input": PROMPT}),
        exchange("a longer stream, for cancel tests", "POST", gen, 200,
                 stream(long), {"text_input": LONG_PROMPT}),
        exchange("bad request", "POST", gen, 400, js(
            {"error": "Unable to parse 'max_tokens': value out of range"}), {"text_input": "bad"},
            content_type="application/json"),
        exchange("inference error mid-stream", "POST", gen, 200,
                 [*stream(toks[:1]),
                  *sse([{"error": "Encountered error for requestId 7: out of KV cache blocks"}])],
                 {"text_input": "error"}),
    ]}


def main(argv: list[str]) -> int:
    model, out = argv
    toks = real_tokens(model, PROMPT, 8, 42)
    long = real_tokens(model, LONG_PROMPT, 48, 7)
    name = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    for fname, doc in (("llama_server_native.json", llama_server(toks, long, name)),
                       ("tgi_native.json", tgi(toks, long)), ("triton_generate.json", triton(toks, long))):
        Path(out, fname).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
