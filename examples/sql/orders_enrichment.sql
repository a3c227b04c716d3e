-- Orders enriched with their customer: a stream joined with a table. Each order meets the
-- customer row as it was at the order's time, so a customer who moves changes the orders
-- placed after the move, not the ones before. The enriched orders are a stream in a topic,
-- and the revenue per region a table over them.
--
--   quiver shell -f examples/sql/orders_enrichment.sql

SET 'auto.offset.reset' = 'earliest';

CREATE TABLE customers (id STRING PRIMARY KEY, name STRING, region STRING)
  WITH (KAFKA_TOPIC = 'customers', VALUE_FORMAT = 'JSON', PARTITIONS = 2);

CREATE STREAM orders (order_id STRING KEY, customer_id STRING, amount DOUBLE, placed_at BIGINT)
  WITH (KAFKA_TOPIC = 'orders', VALUE_FORMAT = 'JSON', PARTITIONS = 2, TIMESTAMP = 'placed_at');

-- Customer rows carry their own time (ROWTIME): Ada moves from eu to us at 09:30.
INSERT INTO customers (ROWTIME, id, name, region) VALUES
  (1767258000000, 'c-1', 'Ada', 'eu'),
  (1767258000000, 'c-2', 'Bo', 'us'),
  (1767259800000, 'c-1', 'Ada', 'us');

CREATE STREAM orders_enriched WITH (KAFKA_TOPIC = 'orders_enriched') AS
  SELECT o.order_id, o.amount, c.name AS customer, c.region
  FROM orders o
  LEFT JOIN customers c ON o.customer_id = c.id
  EMIT CHANGES;

CREATE TABLE revenue_per_region AS
  SELECT c.region, COUNT(*) AS orders, SUM(o.amount) AS revenue
  FROM orders o
  JOIN customers c ON o.customer_id = c.id
  GROUP BY c.region
  EMIT CHANGES;

-- 09:10 Ada (eu), 09:20 Bo, 09:25 someone unknown, 09:40 Ada again (now us), 10:00 Bo.
INSERT INTO orders (order_id, customer_id, amount, placed_at) VALUES
  ('o-1', 'c-1', 25.0, 1767258600000),
  ('o-2', 'c-2', 40.0, 1767259200000),
  ('o-3', 'c-9', 99.0, 1767259500000),
  ('o-4', 'c-1', 15.0, 1767260400000),
  ('o-5', 'c-2', 10.0, 1767261600000);

-- The enriched orders as they are written. An order waits until event time has passed it
-- on both inputs (or they are idle), so that the customer row as of its time is known.
SELECT order_id, amount, customer, region FROM orders_enriched EMIT CHANGES LIMIT 5;
