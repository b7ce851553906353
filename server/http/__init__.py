"""The HTTP transport: adapters from the dialects RAG frameworks speak onto the engine, beside gRPC.

routes.py   the route table, and what every route gets from it (auth, the shared limit, body checks, metrics)
errors.py   HTTP statuses and each dialect's error envelope
calls.py    the engine call, cut short when the client goes away
rerank.py   Cohere v2, Cohere v1 / Jina, TEI and vLLM / Infinity rerank
embed.py    TEI /embed and OpenAI /v1/embeddings
info.py     TEI /info, /health, OpenAI /v1/models
connect.py  Tandem's own contract by the Connect protocol (every unary RPC)
server.py   uvicorn on the server's event loop
"""
