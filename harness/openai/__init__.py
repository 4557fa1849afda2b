"""The OpenAI-compatible conformance suite (profiles ``openai``, ``openai-strict``, ``openai-tools``).

Target-agnostic: it talks HTTP to a base URL and never imports the reference, so
``llorch conform openai URL`` certifies any OpenAI-compatible server (issue 7).
"""
