-- A fraud-style rule: card payments over 500 outside the card's home country, counted per
-- card in 10-minute windows advancing every minute; cards with 2 or more in a window are
-- flagged into a topic that an alerting service can read.
--
--   quiver shell -f examples/sql/fraud_rule.sql

SET 'auto.offset.reset' = 'earliest';

CREATE STREAM payments (card_id STRING KEY, amount DOUBLE, country STRING, home STRING, paid_at BIGINT)
  WITH (KAFKA_TOPIC = 'payments', VALUE_FORMAT = 'JSON', PARTITIONS = 2, TIMESTAMP = 'paid_at');

CREATE TABLE suspicious_cards WITH (KAFKA_TOPIC = 'suspicious_cards') AS
  SELECT card_id, COUNT(*) AS risky_payments, SUM(amount) AS total
  FROM payments
  WINDOW HOPPING (SIZE 10 MINUTES, ADVANCE BY 1 MINUTE)
  WHERE amount > 500 AND country <> home
  GROUP BY card_id
  HAVING COUNT(*) >= 2
  EMIT CHANGES;

INSERT INTO payments (card_id, amount, country, home, paid_at) VALUES
  ('card-1',  620.0, 'BR', 'DE', 1767225600000),
  ('card-1',  800.0, 'BR', 'DE', 1767225900000),
  ('card-2', 1200.0, 'DE', 'DE', 1767225600000),
  ('card-3',   40.0, 'US', 'FR', 1767225600000),
  ('card-3',  990.0, 'US', 'FR', 1767225660000);

-- The flagged cards' windows as they are written to the topic.
PRINT suspicious_cards FROM BEGINNING LIMIT 5;
