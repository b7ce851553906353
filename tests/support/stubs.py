"""Every tandem.v1 service stub over one channel."""

from __future__ import annotations

import grpc

from tandem.v1 import embed_pb2_grpc, index_pb2_grpc, info_pb2_grpc, rerank_pb2_grpc, search_pb2_grpc


class Stubs:
    def __init__(self, ch: grpc.Channel):
        self.channel = ch
        self.rerank = rerank_pb2_grpc.RerankServiceStub(ch)
        self.info = info_pb2_grpc.InfoServiceStub(ch)
        self.index = index_pb2_grpc.IndexServiceStub(ch)
        self.search = search_pb2_grpc.SearchServiceStub(ch)
        self.embed = embed_pb2_grpc.EmbedServiceStub(ch)
