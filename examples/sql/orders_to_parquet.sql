-- A query's rows to a Parquet lake in one statement: the big orders, with their tax, in one
-- directory per region (Hive style), which DuckDB, Spark, pyarrow and DataFusion read as a
-- partitioned table. The sink writes each order once, also across restarts and crashes.
--
--   quiver server &
--   quiver shell --server http://127.0.0.1:8088 -f examples/sql/orders_to_parquet.sql
--   duckdb -c "SELECT region, COUNT(*), SUM(amount) FROM read_parquet(
--     '/tmp/quiver-lake/topics/big_orders/**/*.parquet', hive_partitioning = true) GROUP BY region"

SET 'auto.offset.reset' = 'earliest';

CREATE STREAM shop_orders (order_id STRING KEY, region STRING, amount DOUBLE)
  WITH (KAFKA_TOPIC = 'shop_orders', VALUE_FORMAT = 'JSON', PARTITIONS = 2);

INSERT INTO shop_orders (order_id, region, amount) VALUES
  ('o-1', 'eu', 120.0),
  ('o-2', 'us', 35.5),
  ('o-3', 'eu', 410.0),
  ('o-4', 'ap', 99.9),
  ('o-5', 'us', 250.0),
  ('o-6', 'ap', 180.0);

-- The WITH keys are a Parquet sink connector's (as in its config files); the query's columns
-- become the files' columns. A file completes at 1,000 orders, or after a second.
CREATE SINK big_orders WITH (
    'store.url' = 'file:///tmp/quiver-lake',
    'partitioner.class' = 'field', 'partition.field.name' = 'region',
    'flush.size' = 1000, 'rotate.schedule.interval.ms' = 1000)
  AS SELECT order_id, region, amount, ROUND(amount * 0.2, 2) AS tax
  FROM shop_orders
  WHERE amount >= 100
  EMIT CHANGES;

SHOW CONNECTORS;
