"""Reads a Parquet tree written by Quiver's Parquet sink with independent readers (pyarrow and
DuckDB) and prints what each found as one JSON line, for tests/connect.rs.

The tree is read as a Hive-partitioned table (the directory names give the partition columns).
With --expect N it waits (up to --timeout seconds) until pyarrow sees N rows.

    check_lake.py --root DIR [--expect N]
    check_lake.py --s3-endpoint http://127.0.0.1:PORT --root BUCKET/PREFIX [--expect N]
"""

import argparse
import json
import os
import tempfile
import time

import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs


def filesystem(args):
    if args.s3_endpoint:
        scheme, host = args.s3_endpoint.split("://", 1)
        return pafs.S3FileSystem(
            endpoint_override=host,
            scheme=scheme,
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
        )
    return pafs.LocalFileSystem()


def summary(table):
    columns = table.column_names
    rows = table.num_rows
    ids = table.column("id").to_pylist() if "id" in columns else []
    regions = {}
    if "region" in columns:
        for r in table.column("region").to_pylist():
            regions[str(r)] = regions.get(str(r), 0) + 1
    pairs = list(zip(table.column("rowpartition").to_pylist(), table.column("rowoffset").to_pylist()))
    return {
        "rows": rows,
        "id_sum": sum(i for i in ids if i is not None),
        "by_region": regions,
        "duplicates": len(pairs) - len(set(pairs)),
        "columns": sorted(columns),
    }


def read_pyarrow(fs, root):
    try:
        dataset = ds.dataset(root, filesystem=fs, format="parquet", partitioning="hive")
    except (FileNotFoundError, OSError):
        return None
    return dataset.to_table()


def read_duckdb(fs, root, s3):
    local = root
    if s3:
        # DuckDB's S3 support is an extension it downloads; read a copy of the tree instead.
        local = tempfile.mkdtemp()
        selector = pafs.FileSelector(root, recursive=True)
        for info in fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            target = os.path.join(local, os.path.relpath(info.path, root))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
                dst.write(src.read())
    pattern = os.path.join(local, "**", "*.parquet")
    table = duckdb.sql(
        f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true)"
    ).arrow()
    if hasattr(table, "read_all"):
        table = table.read_all()
    return table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--s3-endpoint")
    parser.add_argument("--expect", type=int)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    fs = filesystem(args)
    deadline = time.time() + args.timeout
    while True:
        # No retry on a read error: files are written under hidden names and renamed when
        # complete, so a reader never meets a partial one, even beside a crashed run's leftovers.
        table = read_pyarrow(fs, args.root)
        have = 0 if table is None else table.num_rows
        if args.expect is None or have >= args.expect or time.time() > deadline:
            break
        time.sleep(0.5)
    if table is None:
        print(json.dumps({"pyarrow": None, "duckdb": None}))
        return
    out = {"pyarrow": summary(table), "duckdb": summary(read_duckdb(fs, args.root, bool(args.s3_endpoint)))}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
