// Tandem's own contract over HTTP from Node.js: a Connect client (@connectrpc/connect-node) with code that
// protoc-gen-es generates from proto/ (`make node-gen`). Usage: node examples/node/connect.mjs http://HOST:PORT
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InfoService } from "./gen/tandem/v1/info_pb.js";
import { RerankService } from "./gen/tandem/v1/rerank_pb.js";
import { IndexService } from "./gen/tandem/v1/index_pb.js";
import { SearchService } from "./gen/tandem/v1/search_pb.js";

const baseUrl = process.argv[2] ?? "http://127.0.0.1:8080";
const collection = process.argv[3] ?? "connect_client";
const transport = createConnectTransport({ baseUrl, httpVersion: "1.1" });

const info = await createClient(InfoService, transport).info({});
const rerank = await createClient(RerankService, transport).rerank({
  query: "wing stall",
  documents: ["the wing stalls at high angles of attack", "heat transfer in hypersonic flow", "buckling of shells"],
  topN: 2,
  returnDocuments: true,
});
const index = createClient(IndexService, transport);
await index.createCollection({ collection });
const upserted = await index.upsert({
  collection,
  documents: [
    { id: "a", text: "the wing stalls at high angles of attack" },
    { id: "b", text: "heat transfer in hypersonic flow" },
  ],
});
const search = await createClient(SearchService, transport).search({ collection, query: "wing stall", topN: 1, rerank: false });
// A server stream (Connect's streaming protocol over HTTP/1.1): the collection's rows, after the record.
const exported = [];
for await (const msg of index.export({ collection })) {
  if (msg.record) exported.push(`record:${msg.record.collection}`);
  for (const row of msg.rows) exported.push(row.id);
}
let exportError = null;
try {
  for await (const _ of index.export({ collection: "no_such_collection" })) { /* nothing arrives */ }
} catch (e) {
  exportError = { code: e.code, message: e.rawMessage };
}
let error = null;
try {
  await createClient(RerankService, transport).rerank({ query: "", documents: ["x"] });
} catch (e) {
  error = { code: e.code, message: e.rawMessage };
}
console.log(JSON.stringify({
  version: info.version,
  maxDocumentsPerRequest: info.limits.maxDocumentsPerRequest,
  rerank: rerank.results.map((r) => ({ index: r.index, score: r.relevanceScore, document: r.document })),
  upserted: upserted.upserted,
  search: search.hits.map((h) => h.id),
  exported,
  exportError,
  error,
}));
