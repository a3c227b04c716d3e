"""Runs a SQL query with DuckDB over a Parquet tree written by Quiver's Parquet sink, read as a
Hive-partitioned table named `lake`, and prints its rows as one JSON list (an empty list while
the tree has no file yet).

    lake_query.py --root DIR --sql "SELECT region, COUNT(*) FROM lake GROUP BY region"
"""

import argparse
import glob
import json
import os

import duckdb


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--sql", required=True)
    args = parser.parse_args()
    pattern = os.path.join(args.root, "**", "*.parquet")
    if not glob.glob(pattern, recursive=True):
        print("[]")
        return
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW lake AS SELECT * FROM read_parquet('{pattern}', hive_partitioning = true)"
    )
    rows = con.execute(args.sql).fetchall()
    print(json.dumps([list(r) for r in rows]))


if __name__ == "__main__":
    main()
