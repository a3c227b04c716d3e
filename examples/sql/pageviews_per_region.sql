-- Page views per region and minute: a stream over a topic of JSON views, a table of counts per
-- region in one-minute tumbling windows (a persistent query writing to a topic), and a push
-- query that shows the counts as they change.
--
--   quiver shell -f examples/sql/pageviews_per_region.sql

SET 'auto.offset.reset' = 'earliest';

CREATE STREAM pageviews (user_id STRING KEY, region STRING, page STRING, viewtime BIGINT)
  WITH (KAFKA_TOPIC = 'pageviews', VALUE_FORMAT = 'JSON', PARTITIONS = 3, TIMESTAMP = 'viewtime');

-- Views as any Kafka producer would write them (here, from SQL).
INSERT INTO pageviews (user_id, region, page, viewtime) VALUES
  ('alice', 'eu', '/home',    1767225600000),
  ('bob',   'us', '/home',    1767225610000),
  ('alice', 'eu', '/cart',    1767225620000),
  ('carol', 'eu', '/home',    1767225650000),
  ('dave',  'us', '/pricing', 1767225670000),
  ('bob',   'us', '/cart',    1767225690000);

CREATE TABLE views_per_region AS
  SELECT region, COUNT(*) AS views, COUNT(DISTINCT user_id) AS users
  FROM pageviews
  WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 10 SECONDS)
  GROUP BY region
  EMIT CHANGES;

-- The whole history of the stream, as one batch query.
SELECT region, COUNT(*) AS views FROM pageviews GROUP BY region ORDER BY region;

-- Each window's final count, once it has closed: the views so far close the first minute
-- of both regions (the second closes when a view of the third minute arrives).
SELECT region, WINDOWSTART AS window_start, COUNT(*) AS views
  FROM pageviews
  WINDOW TUMBLING (SIZE 1 MINUTE)
  GROUP BY region
  EMIT FINAL
  LIMIT 2;
