// Tandem from Node.js: @grpc/grpc-js + @grpc/proto-loader, reading the contract from proto/.
// Usage: node client.js [host:port] [collection]
// Prints one JSON object with what each call returned; exits non-zero on any failure.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '../../proto');
const FILES = ['info', 'index', 'search', 'rerank', 'embed'].map((n) => `tandem/v1/${n}.proto`);

const definition = protoLoader.loadSync(FILES, {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names exactly as in the .proto (top_n, return_documents, ...)
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).tandem.v1;

const target = process.argv[2] || '127.0.0.1:50051';
const collection = process.argv[3] || 'node_example';
const creds = grpc.credentials.createInsecure();
const metadata = new grpc.Metadata();
if (process.env.TANDEM_TOKEN) metadata.add('authorization', `Bearer ${process.env.TANDEM_TOKEN}`);

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 60_000);
    client[method](request, metadata, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// google.protobuf.Struct from a plain object. Well-known types come from protobufjs's built-in
// definitions, whose field names are camelCase even with keepCase (numberValue, not number_value).
function toStruct(obj) {
  const toValue = (v) => {
    if (v === null) return { nullValue: 'NULL_VALUE' };
    if (typeof v === 'number') return { numberValue: v };
    if (typeof v === 'string') return { stringValue: v };
    if (typeof v === 'boolean') return { boolValue: v };
    if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
    return { structValue: toStruct(v) };
  };
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, toValue(v)])) };
}

async function main() {
  const info = new v1.InfoService(target, creds);
  const index = new v1.IndexService(target, creds);
  const search = new v1.SearchService(target, creds);
  const rerank = new v1.RerankService(target, creds);
  const out = {};

  const i = await call(info, 'Info', {});
  out.info = { version: i.version, models: i.models.map((m) => `${m.kind}:${m.name}`), limits: i.limits };

  try {
    await call(index, 'CreateCollection', { collection });
  } catch (err) {
    if (err.code !== grpc.status.ALREADY_EXISTS) throw err;
  }
  const docs = [
    { id: 'n1', text: 'Propeller slipstream effects on wing lift distribution', metadata: toStruct({ topic: 'aero', year: 1958 }) },
    { id: 'n2', text: 'Heat transfer to a flat plate in hypersonic flow', metadata: toStruct({ topic: 'heat', year: 1961 }) },
    { id: 'n3', text: 'Buckling of thin cylindrical shells under axial compression', metadata: toStruct({ topic: 'structures', year: 1960 }) },
  ];
  const up = await call(index, 'Upsert', { collection, documents: docs });
  out.upserted = up.upserted;

  const s = await call(search, 'Search', {
    collection,
    query: 'hypersonic heat transfer',
    top_n: 2,
    mode: 'SEARCH_MODE_HYBRID',
    filter: { all: [{ field: 'year', op: 'OPERATOR_GTE', value: { numberValue: 1959 } }] },
  });
  out.search = { reranked: s.reranked, hits: s.hits.map((h) => ({ id: h.id, score: h.score, recall_rank: h.recall_rank })) };

  if (i.default_reranker) {
    const r = await call(rerank, 'Rerank', { query: 'wing lift', documents: docs.map((d) => d.text), top_n: 2, return_documents: true });
    out.rerank = { model: r.model, results: r.results.map((x) => ({ index: x.index, relevance_score: x.relevance_score, document: x.document })) };
  } else {
    out.rerank = null;
  }
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(`tandem node client failed: ${err.code !== undefined ? grpc.status[err.code] : ''} ${err.details || err.message}`);
  process.exit(1);
});
