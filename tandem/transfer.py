"""Collections to files and back: `tandem export`, `import`, `backup` and `restore`.

The file is Parquet (zstd), one row per stored row, readable by any Parquet reader (pyarrow, pandas, Polars,
DuckDB, Spark) without Tandem:

  id        string    the document's id (a chunked collection's passages share it)
  text      string    the document's text, or the passage's
  metadata  string    the metadata object as JSON text
  dense     fixed_size_list<float32>[dimension]   the stored dense vector
  chunk, of int32     chunked collections only: passage number and the document's passage count
  start     int64     chunked collections only: the passage's character offset in the document

The file's key-value metadata holds the collection record as JSON under the key "tandem": format, format_version,
collection, embedder, dimension, language, chunking, the counts when the export began, and when and from where.
See docs/export-format.md for why Parquet (measured against JSONL).

An export is written to FILE.partial and renamed to FILE only when complete, so a killed export never leaves a
partial file under the final name. An import sends the file in segments of whole documents, one Import call
each, and records after each acknowledged segment how far it got (a small state file in Tandem's cache folder):
run again after a kill, it resumes there; every write is an upsert by id, so re-sent rows change nothing.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tandem.client import Client
from tandem.errors import TandemError
from tandem.v1 import index_pb2

FORMAT, FORMAT_VERSION = "tandem-export", 1
BACKUP, MANIFEST = "tandem-backup", "manifest.json"
ROW_GROUP = 16384  # rows per Parquet row group: a page of vectors the reader holds at once
MESSAGE_BYTES = 2 * 1024 * 1024  # about this much per Import message
SEGMENT_ROWS = 8192  # rows per Import call: the resume granularity


class FileError(ValueError):
    """The file is not a complete Tandem export this version reads."""


def arrow_schema(dimension: int, chunked: bool, record: dict | None = None) -> pa.Schema:
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False),
              pa.field("metadata", pa.string(), nullable=False),
              pa.field("dense", pa.list_(pa.float32(), dimension), nullable=False)]
    if chunked:
        fields += [pa.field("chunk", pa.int32(), nullable=False), pa.field("of", pa.int32(), nullable=False),
                   pa.field("start", pa.int64(), nullable=False)]
    return pa.schema(fields, metadata={"tandem": json.dumps(record)} if record else None)


def _record_dict(r: index_pb2.CollectionRecord, source: str) -> dict:
    return {"format": FORMAT, "format_version": r.format_version, "collection": r.collection,
            "embedder": r.embedder, "dimension": r.dimension, "language": r.language,
            "chunking": [r.chunking.max_tokens, r.chunking.overlap_tokens] if r.HasField("chunking") else None,
            "documents": r.documents, "rows": r.rows, "source": source,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _record_pb(d: dict) -> index_pb2.CollectionRecord:
    c = d.get("chunking")
    return index_pb2.CollectionRecord(
        format_version=d["format_version"], collection=d["collection"], embedder=d["embedder"],
        dimension=d["dimension"], language=d.get("language", ""), documents=d.get("documents", 0),
        rows=d.get("rows", 0), chunking=index_pb2.Chunking(max_tokens=c[0], overlap_tokens=c[1]) if c else None)


def _bar(total: int, show: bool, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="row", disable=not show, file=sys.stderr, desc=what, leave=False)


def _out_of_space(exc: BaseException) -> bool:
    # pyarrow reports a full disk as an OSError whose text holds the errno, not always as errno itself
    return isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "No space left" in str(exc))


# -- export ------------------------------------------------------------------------------------------------------

def export_collection(client: Client, collection: str, path: str | Path, *, page_size: int = 1024,
                      progress: bool = True) -> dict:
    """Write every row of `collection` to `path` (Parquet). Returns a report."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    start = time.monotonic()
    record, pages = client.export(collection, page_size=page_size)
    meta = _record_dict(record, client.target)
    chunked = meta["chunking"] is not None
    schema = arrow_schema(record.dimension, chunked, meta)
    rows = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer, \
                _bar(record.rows, progress, f"export {collection}") as bar:
            buffered: list = []
            for page in pages:
                buffered.extend(page)
                if len(buffered) >= ROW_GROUP:
                    writer.write_table(_table(buffered, schema, chunked))
                    rows += len(buffered)
                    bar.update(len(buffered))
                    buffered = []
            if buffered or rows == 0:
                writer.write_table(_table(buffered, schema, chunked))
                rows += len(buffered)
                bar.update(len(buffered))
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)  # only a complete file takes the final name
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if _out_of_space(exc):
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"no space left on the disk that holds {path.parent} ({free / 1e6:.1f} MB "
                          f"free after removing the partial file) while writing row {rows}: nothing was written "
                          f"under {path.name}; free space there or export to another disk") from None
        raise
    return {"collection": collection, "file": str(path), "rows": rows, "documents": record.documents,
            "embedder": record.embedder, "dimension": record.dimension, "bytes": path.stat().st_size,
            "seconds": round(time.monotonic() - start, 3)}


def _table(rows: list, schema: pa.Schema, chunked: bool) -> pa.Table:
    dim = schema.field("dense").type.list_size
    dense = np.frombuffer(b"".join(r.dense for r in rows), dtype="<f4")
    cols = [pa.array([r.id for r in rows], pa.string()), pa.array([r.text for r in rows], pa.string()),
            pa.array([r.metadata_json or "{}" for r in rows], pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(dense, pa.float32()), dim)]
    if chunked:
        cols += [pa.array([r.chunk for r in rows], pa.int32()), pa.array([r.of for r in rows], pa.int32()),
                 pa.array([r.start for r in rows], pa.int64())]
    return pa.Table.from_arrays(cols, schema=schema)


# -- import ------------------------------------------------------------------------------------------------------

def read_record(path: str | Path) -> tuple[dict, int, pq.ParquetFile]:
    """(record, rows, open file), or FileError saying what is wrong with it."""
    path = Path(path)
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise FileError(f"{path} is not a complete Parquet file ({exc}); export the collection again") from None
    raw = (f.schema_arrow.metadata or {}).get(b"tandem")
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise FileError(f"{path} is a Parquet file but not a Tandem export (no 'tandem' record in its metadata)")
    if record.get("format_version") != FORMAT_VERSION:
        raise FileError(f"{path} is export format version {record.get('format_version')}; this Tandem reads "
                        f"version {FORMAT_VERSION}")
    want = arrow_schema(int(record["dimension"]), record.get("chunking") is not None)
    got = f.schema_arrow
    for field in want:
        if field.name not in got.names or not got.field(field.name).type.equals(field.type):
            raise FileError(f"{path}: column {field.name!r} should be {field.type}, found "
                            f"{got.field(field.name).type if field.name in got.names else 'nothing'}")
    return record, f.metadata.num_rows, f


def _segments(f: pq.ParquetFile, record: dict, skip: int, message_rows: int,
              segment_rows: int) -> Iterator[tuple[int, list[list]]]:
    """(rows read so far, messages of Rows) per segment. A segment ends only where no document is open (all of
    its passages are in), so an import that re-embeds can join each document's passages within one call."""
    chunked, dim = record.get("chunking") is not None, int(record["dimension"])
    done, segment, messages, open_docs = 0, 0, [], {}
    for batch in f.iter_batches(batch_size=message_rows):
        if done + batch.num_rows <= skip:
            done += batch.num_rows
            continue
        if done < skip:
            batch = batch.slice(skip - done)
            done = skip
        ids, texts, metas = (batch.column(n).to_pylist() for n in ("id", "text", "metadata"))
        dense = np.ascontiguousarray(batch.column("dense").flatten().to_numpy(zero_copy_only=False),
                                     dtype="<f4").reshape(-1, dim)
        if chunked:
            chunks, ofs, starts = (batch.column(n).to_pylist() for n in ("chunk", "of", "start"))
            rows = [index_pb2.Row(id=i, text=t, metadata_json=m, dense=v.tobytes(), chunk=c, of=o, start=s)
                    for i, t, m, v, c, o, s in zip(ids, texts, metas, dense, chunks, ofs, starts)]
            for i, c, o in zip(ids, chunks, ofs):
                seen = open_docs.get(i, 0) + 1
                if seen >= o:
                    open_docs.pop(i, None)
                else:
                    open_docs[i] = seen
        else:
            rows = [index_pb2.Row(id=i, text=t, metadata_json=m, dense=v.tobytes())
                    for i, t, m, v in zip(ids, texts, metas, dense)]
        messages.append(rows)
        done += len(rows)
        segment += len(rows)
        if segment >= segment_rows and not open_docs:
            yield done, messages
            segment, messages = 0, []
    if messages:
        yield done, messages


def _state_path(path: Path, target: str, collection: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tandem" / "imports"
    key = hashlib.sha256(f"{path.resolve()}\n{target}\n{collection}".encode()).hexdigest()[:24]
    return base / f"{key}.json"


def import_file(client: Client, path: str | Path, *, collection: str = "", into_existing: bool = False,
                re_embed: bool = False, embedder: str = "", language: str = "",
                chunking: tuple[int, int] | None = None, segment_rows: int = SEGMENT_ROWS,
                progress: bool = True, say=print) -> dict:
    """Import an export file into `collection` (default: the recorded name), resuming an earlier run of the same
    import that stopped part-way. `chunking`: None keeps the recorded one, (0, 0) stores whole documents."""
    path = Path(path)
    record, total, f = read_record(path)
    name = collection or record["collection"]
    stat = path.stat()
    identity = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "rows": total}
    state_file = _state_path(path, client.target, name)
    skip = 0
    if state_file.exists():
        try:
            state = json.loads(state_file.read_text())
        except ValueError:
            state = {}
        if state.get("file") == identity:
            skip = int(state.get("rows_done", 0))
            into_existing = True  # the earlier run made the collection
            say(f"resuming the import of {path} into {name!r} at row {skip} of {total} (an earlier run "
                f"stopped there; state in {state_file})")
    dim = int(record["dimension"])
    message_rows = max(16, min(4096, MESSAGE_BYTES // (4 * dim + 1024)))
    start, rows, documents, calls, embedded = time.monotonic(), 0, 0, 0, False
    tokens = 0
    state_file.parent.mkdir(parents=True, exist_ok=True)
    with _bar(total, progress, f"import {name}") as bar:
        bar.update(skip)
        for done, messages in _segments(f, record, skip, message_rows, segment_rows):
            _write_state(state_file, identity, name, skip, total)  # the collection may exist from here on
            try:
                r = client.import_rows(_record_pb(record), lambda m=messages: m, collection=name,
                                       into_existing=into_existing, re_embed=re_embed, embedder=embedder,
                                       language=language, chunking=chunking)
            except TandemError as exc:
                if exc.code == grpc.StatusCode.ALREADY_EXISTS:  # someone else's collection: nothing to resume
                    state_file.unlink(missing_ok=True)
                raise
            into_existing = True
            calls += 1
            rows, documents, embedded = rows + r.rows, documents + r.documents, embedded or r.re_embedded
            tokens += r.usage.tokens
            bar.update(done - skip)
            skip = done
            _write_state(state_file, identity, name, done, total)
        if calls == 0:  # an empty export still makes its collection
            client.import_rows(_record_pb(record), lambda: [], collection=name, into_existing=into_existing,
                               re_embed=re_embed, embedder=embedder, language=language, chunking=chunking)
    state_file.unlink(missing_ok=True)
    return {"collection": name, "file": str(path), "rows_in_file": total, "rows": rows, "documents": documents,
            "calls": calls, "re_embedded": embedded, "embedder_tokens": tokens,
            "seconds": round(time.monotonic() - start, 3)}


def _write_state(state_file: Path, identity: dict, collection: str, done: int, total: int) -> None:
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"file": identity, "collection": collection, "rows_done": done, "rows": total}))
    os.replace(tmp, state_file)


# -- backup and restore ----------------------------------------------------------------------------------------

def backup(client: Client, directory: str | Path, *, progress: bool = True, say=print) -> dict:
    """Export every collection of a running server into `directory`, with a manifest. Each collection is read
    consistently on its own (see `export_collection`); the server keeps serving and writing throughout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    entries = []
    for name in client.collections():
        try:
            r = export_collection(client, name, directory / f"{name}.parquet", progress=progress)
        except TandemError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            say(f"{name}: dropped during the backup, left out")
            continue
        say(f"{name}: {r['rows']} rows, {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.1f} s")
        entries.append({"collection": name, "file": f"{name}.parquet", "rows": r["rows"],
                        "documents": r["documents"], "embedder": r["embedder"]})
    manifest = {"format": BACKUP, "format_version": FORMAT_VERSION, "started_at": started, "source": client.target,
                "collections": entries}
    tmp = directory / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, directory / MANIFEST)  # the manifest marks a complete backup
    return manifest


def restore(client: Client, directory: str | Path, *, into_existing: bool = False, re_embed: bool = False,
            progress: bool = True, say=print) -> list[dict]:
    """Import every collection of a backup made by `backup` (each resumable, as `import_file`)."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise FileError(f"{directory} holds no {MANIFEST}: not a complete Tandem backup") from None
    if manifest.get("format") != BACKUP or manifest.get("format_version") != FORMAT_VERSION:
        raise FileError(f"{directory / MANIFEST} is not a Tandem backup this version reads")
    out = []
    for e in manifest["collections"]:
        r = import_file(client, directory / e["file"], collection=e["collection"], into_existing=into_existing,
                        re_embed=re_embed, progress=progress, say=say)
        say(f"{e['collection']}: {r['rows']} rows in {r['seconds']:.1f} s")
        out.append(r)
    return out
