-- The catalog the bad statements of bad_statements.sql are run against.
CREATE STREAM pageviews (user_id STRING KEY, page STRING, ms BIGINT)
  WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON', PARTITIONS=2, TIMESTAMP='ms');
CREATE TABLE users (id STRING PRIMARY KEY, name STRING, region STRING)
  WITH (KAFKA_TOPIC='users', VALUE_FORMAT='JSON', PARTITIONS=2);
CREATE STREAM clicks (user_id STRING KEY, url STRING, ms BIGINT)
  WITH (KAFKA_TOPIC='clicks', VALUE_FORMAT='JSON', PARTITIONS=2, TIMESTAMP='ms');
