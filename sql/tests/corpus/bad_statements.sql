-- Statements Quiver SQL must refuse, each with a clear message and its position; one case per
-- block, blocks separated by blank lines. The errors they get are in bad_statements.expected
-- (QUIVER_BLESS=1 cargo test -p quiver-sql --test corpus writes it anew, to review).

SELEC * FROM pageviews;

SELECT * FRM pageviews;

SELECT * FROM pageviews WHERE;

SELECT * FROM pageviews GROUP;

SELECT COUNT(* FROM pageviews;

SELECT 'unterminated FROM pageviews;

CREATE STREAM;

CREATE STREAM s1 (a INT WITH (KAFKA_TOPIC='s1');

CREATE STREAM s1 (a INT) WITH KAFKA_TOPIC='s1';

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='s1', PARTITIONS=);

CREATE TABLE t1 AS SELECT;

CREATE VIEW v AS SELECT * FROM pageviews;

INSERT INTO pageviews VALUES;

INSERT INTO pageviews (user_id, page VALUES ('a', 'b');

DROP STREAM;

DROP pageviews;

TERMINATE;

SHOW EVERYTHING;

DESCRIBE;

PRINT;

PRINT pageviews LIMIT x;

SELECT * FROM pageviews EMIT SOMETIMES;

SELECT * FROM pageviews EMIT CHANGES EMIT CHANGES;

SELECT * FROM pageviews LIMIT 'ten' EMIT CHANGES;

SELECT * FROM pageviews EMIT CHANGES LIMIT 1.5;

SELECT * FROM pageview;

SELECT * FROM pageviews p JOIN user u ON p.user_id = u.id EMIT CHANGES;

SELECT nope FROM pageviews;

SELECT user_id FROM pageviews
  WHERE bogus > 1;

SELECT pageviews.nope FROM pageviews;

SELECT p.page FROM pageviews;

SELECT page FROM pageviews GROUP BY nope;

SELECT user_id, COUNT(*) FROM pageviews GROUP BY user_id HAVING nothing > 1;

SELECT * FROM pageviews ORDER BY nope;

INSERT INTO nowhere VALUES (1);

INSERT INTO pageviews (user_id, nope) VALUES ('a', 'b');

INSERT INTO nowhere SELECT * FROM pageviews EMIT CHANGES;

DROP STREAM nothing;

DROP TABLE pageviews;

DROP STREAM users;

DESCRIBE nothing;

TERMINATE CSAS_NOTHING_1;

PRINT 'no_such_topic';

SELECT nosuchfunction(page) FROM pageviews;

SELECT COUNT(page) FROM pageviews GROUP BY nosuchcolumn;

SELECT page + 1 FROM pageviews;

SELECT * FROM pageviews WHERE page > 5 AND page;

SELECT SUM(page) FROM pageviews;

SELECT * FROM pageviews WHERE ms = 'soon';

SELECT CAST(page AS NOSUCHTYPE) FROM pageviews;

SELECT ABS(page) FROM pageviews;

SELECT UPPER(ms, ms) FROM pageviews;

SELECT * FROM pageviews WHERE page;

INSERT INTO pageviews (user_id, page, ms) VALUES ('a', 'b', 'not a number');

INSERT INTO pageviews (user_id, page, ms) VALUES ('a', 'b');

INSERT INTO pageviews (user_id, page, ms) VALUES ('a', 'b', 1), ('c');

CREATE STREAM s1 (a NOSUCHTYPE) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='JSON');

CREATE STREAM s1 (a INT, a INT) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='JSON');

CREATE TABLE t1 (a INT, b STRING) WITH (KAFKA_TOPIC='t1', VALUE_FORMAT='JSON');

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 0 SECONDS) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 FORTNIGHT) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (1 MINUTE) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING SIZE 1 MINUTE GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW HOPPING (SIZE 1 MINUTE) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 0 SECONDS) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 2 MINUTES) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW SESSION (SIZE 1 MINUTE) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW SLIDING (SIZE 1 MINUTE) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE, GRACE 1 MINUTE) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) WINDOW TUMBLING (SIZE 2 MINUTES) GROUP BY user_id EMIT CHANGES;

SELECT user_id FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY user_id;

SELECT user_id, WINDOWSTART FROM pageviews EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews GROUP BY user_id EMIT FINAL;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY ROLLUP (user_id) EMIT CHANGES;

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='JSON', NOSUCH='x');

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPC='s1', VALUE_FORMAT='JSON');

CREATE STREAM s1 (a INT) WITH (VALUE_FORMAT='JSON');

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='XML');

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='JSON', PARTITIONS=0);

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='JSON', PARTITIONS='many');

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='JSON', TIMESTAMP='nope');

CREATE STREAM s1 (a STRING) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='JSON', TIMESTAMP='a');

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='JSON', KEY_FORMAT='XML');

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='s1', VALUE_FORMAT='KAFKA');

CREATE STREAM s1 (a INT) WITH (KAFKA_TOPIC='no_topic_yet', VALUE_FORMAT='JSON');

CREATE STREAM pageviews (a INT) WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON');

CREATE STREAM s2 WITH (KAFKA_TOPIC='s2', NOSUCH=1) AS SELECT * FROM pageviews EMIT CHANGES;

CREATE STREAM s2 WITH (VALUE_FORMAT='XML') AS SELECT * FROM pageviews EMIT CHANGES;

CREATE STREAM s2 WITH (PARTITIONS=-1) AS SELECT * FROM pageviews EMIT CHANGES;

CREATE TABLE t2 AS SELECT * FROM pageviews EMIT CHANGES;

CREATE STREAM s2 AS SELECT user_id, COUNT(*) AS n FROM pageviews GROUP BY user_id EMIT CHANGES;

CREATE TABLE t2 AS SELECT COUNT(*) AS n FROM pageviews GROUP BY user_id EMIT CHANGES;

CREATE STREAM pageviews AS SELECT * FROM clicks EMIT CHANGES;

SELECT * FROM pageviews ORDER BY ms EMIT CHANGES;

SELECT page, ROW_NUMBER() OVER (ORDER BY ms) FROM pageviews EMIT CHANGES;

SELECT * FROM pageviews WHERE page IN (SELECT url FROM clicks) EMIT CHANGES;

SELECT * FROM pageviews p JOIN clicks c ON p.user_id = c.user_id EMIT CHANGES;

SELECT * FROM users u JOIN pageviews p ON p.user_id = u.id EMIT CHANGES;

SELECT * FROM pageviews p JOIN users u ON p.page = u.name EMIT CHANGES;

SELECT * FROM pageviews p
  JOIN users u WITHIN 1 HOUR ON p.user_id = u.id EMIT CHANGES;

SELECT * FROM pageviews p JOIN clicks c WITHIN (1 HOUR 2 HOURS) ON p.user_id = c.user_id EMIT CHANGES;

SELECT * FROM pageviews p JOIN clicks c WITHIN 1 LIGHTYEAR ON p.user_id = c.user_id EMIT CHANGES;

SELECT * FROM pageviews p JOIN clicks c WITHIN 1 HOUR ON p.ms < c.ms EMIT CHANGES;

SELECT * FROM pageviews p FULL JOIN users u ON p.user_id = u.id EMIT CHANGES;

SELECT * FROM pageviews WITHIN 1 HOUR EMIT CHANGES;

SELECT * FROM pageviews p CROSS JOIN clicks c EMIT CHANGES;

SELECT * FROM users a JOIN users b ON a.name = b.region EMIT CHANGES;

SELECT * FROM users a FULL JOIN users b ON a.name = b.id EMIT CHANGES;

SELECT * FROM users a JOIN users b ON a.name = b.id AND a.region = b.region EMIT CHANGES;

SELECT region, MAX(name) FROM users GROUP BY region EMIT CHANGES;

SELECT * FROM users a JOIN users b ON a.id = b.id AND a.name <> b.name EMIT CHANGES;

CREATE TABLE t2 AS SELECT a.name FROM users a JOIN users b ON a.id = b.id EMIT CHANGES;

SELECT user_id, TOPK(ms, 0) FROM pageviews GROUP BY user_id;

SELECT EXTRACTJSONFIELD(page, 'no.dollar') FROM pageviews;

SELECT TIMESTAMPTOSTRING(ms, 'yyyy QQ') FROM pageviews;

SELECT STRINGTOTIMESTAMP(page, 'yyyy', 'Mars/Olympus') FROM pageviews;

SELECT LATEST_BY_OFFSET(page, 'yes') FROM pageviews GROUP BY user_id;

SELECT TOPK(ms) FROM pageviews GROUP BY user_id;

SET 'auto.offset.reset' = 'sometime';

INSERT INTO pageviews SELECT user_id, page FROM clicks EMIT CHANGES;

INSERT INTO pageviews SELECT user_id, url AS nope, ms FROM clicks EMIT CHANGES;

INSERT INTO pageviews SELECT user_id, COUNT(*) AS page FROM clicks GROUP BY user_id EMIT CHANGES;

SELECT * FROM pageviews WHERE user_id IN (SELECT id FROM users) EMIT CHANGES;

SELECT *, (SELECT COUNT(*) FROM clicks) FROM pageviews EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW SLIDING (SIZE 1 MINUTE) GROUP BY user_id EMIT CHANGES;

SELECT EXTRACTJSONFIELD(page, page) FROM pageviews;

SELECT TIMESTAMPTOSTRING(ms, 'yyyy-MM-dd', 'Nowhere/Town') FROM pageviews EMIT CHANGES;

SELECT user_id, EARLIEST_BY_OFFSET(page, 1) FROM pageviews GROUP BY user_id EMIT CHANGES;

SELECT user_id, TOPK(ms, ms) FROM pageviews GROUP BY user_id EMIT CHANGES;

INSERT INTO users VALUES ('u1', 'Ann', 'eu', 'extra');

INSERT INTO users SELECT * FROM pageviews EMIT CHANGES;

INSERT INTO pageviews (user_id, page, ms) VALUES ('a', 'b', 1.5e400);

CREATE STREAM s1 (a INT KEY, a STRING) WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON');

CREATE TABLE t1 (id INT PRIMARY KEY, v STRING) WITH (KAFKA_TOPIC='users', VALUE_FORMAT='JSON', TIMESTAMP_FORMAT='yyyy');

CREATE STREAM s1 (a ARRAY<NOSUCH>) WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON');

CREATE STREAM s1 (a MAP<INT, STRING>) WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON');

CREATE STREAM s1 (a DECIMAL(50, 2)) WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON');

DROP STREAM IF EXISTS;

DESCRIBE EXTENDED nothing;

EXPLAIN SELECT nope FROM pageviews;

EXPLAIN;

SHOW QUERIES EXTENDED;

PRINT pageviews FROM;

PRINT pageviews LIMIT -1;

UNSET;

SELECT * FROM pageviews EMIT CHANGES LIMIT;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE, RETENTION) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 99999999999999999999 DAYS) GROUP BY user_id EMIT CHANGES;

SELECT user_id, COUNT(*) FROM pageviews WINDOW SESSION (0 SECONDS) GROUP BY user_id EMIT CHANGES;

SELECT p.user_id, COUNT(*) FROM pageviews p JOIN users u ON p.user_id = u.id WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY p.user_id HAVING nope > 1 EMIT CHANGES;

SELECT * FROM pageviews p LEFT SEMI JOIN users u ON p.user_id = u.id EMIT CHANGES;

SELECT * FROM pageviews p JOIN users u USING (nope) EMIT CHANGES;

SELECT * FROM pageviews p JOIN clicks c WITHIN 1 HOUR GRACE 5 MINUTES ON p.user_id = c.user_id EMIT CHANGES;

CREATE TABLE t2 WITH (KEY_FORMAT='XML') AS SELECT user_id, COUNT(*) AS n FROM pageviews GROUP BY user_id EMIT CHANGES;

CREATE STREAM s2 AS SELECT * FROM nothing EMIT CHANGES;

CREATE OR REPLACE STREAM users AS SELECT * FROM pageviews EMIT CHANGES;

TERMINATE ALL ALL;

RUN;

CREATE STREAM s2 AS SELECT page FROM pageviews PARTITION BY user_id EMIT CHANGES;

CREATE TABLE t2 AS SELECT page, COUNT(*) AS n FROM pageviews GROUP BY page PARTITION BY page EMIT CHANGES;

SELECT page FROM pageviews PARTITION BY page EMIT CHANGES;

CREATE STREAM s2 AS SELECT page FROM pageviews PARTITION BY UPPER(page) EMIT CHANGES;

CREATE STREAM s2 AS SELECT page FROM pageviews PARTITION BY page PARTITION BY page EMIT CHANGES;

CREATE STREAM s2 AS SELECT page FROM pageviews PARTITION BY rowtime EMIT CHANGES;

SELECT page FROM pageviews LATE DATA TO 'late' EMIT CHANGES;

SELECT page, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY page LATE DATA 'late' EMIT CHANGES;

SELECT page, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY page LATE DATA TO EMIT CHANGES;

SELECT page, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY page LATE DATA TO 'a' LATE DATA TO 'b' EMIT CHANGES;

SELECT page, COUNT(*) FROM pageviews GROUP BY page LATE DATA TO 'late';

CREATE TABLE t2 AS SELECT page, COUNT(*) AS n FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY page LATE DATA TO 'bad topic name!' EMIT CHANGES;

CREATE SOURCE CONNECTOR g;

CREATE OR REPLACE SINK CONNECTOR g WITH ('connector.class' = 'ParquetSink');

CREATE SINK CONNECTOR g WITH ('connector.class' = 'DataGen', 'kafka.topic' = 't', 'fields' = 'id:uuid');

CREATE SOURCE CONNECTOR g WITH ('connector.class' = 'FileSource', 'topic' = 't');

CREATE SOURCE CONNECTOR g WITH ('connector.class' = 'DataGen', 'kafka.topic' = 't', 'fields' = 'id:sequense(1)');

CREATE SOURCE CONNECTOR g WITH ('connector.class' = 'DataGen', 'kafka.topic' = 't', 'fields' = 'id:uuid', 'name' = 'h');

CREATE SINK CONNECTOR lake WITH ('connector.class' = 'ParquetSink', 'topics' = 'pageviews', 'store.url' = 'ftp://x');

DESCRIBE CONNECTOR nope;

DROP CONNECTOR nope;

CREATE SINK lake WITH ('store.url' = 'file:///tmp/lake');

CREATE SINK lake WITH ('store.url' = 'file:///tmp/lake', 'value.format' = 'json') AS SELECT * FROM pageviews EMIT CHANGES;

CREATE SINK lake WITH ('store.url' = 'ftp://x') AS SELECT * FROM pageviews EMIT CHANGES;

CREATE SINK pageviews WITH ('store.url' = 'file:///tmp/lake') AS SELECT * FROM pageviews EMIT CHANGES;

CREATE SINK lake WITH ('store.url' = 'file:///tmp/lake') AS SELECT nope FROM pageviews EMIT CHANGES;

DROP SINK pageviews;

INSERT INTO pageviews SELECT user_id, page, ms FROM (SELECT user_id, page, ms, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ms DESC) AS rn FROM pageviews) WHERE rn = 1 EMIT CHANGES;

SELECT * FROM (SELECT user_id, ms, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ms, page) AS rn FROM pageviews) WHERE rn <= 2 EMIT CHANGES;

SELECT n FROM (SELECT user_id AS n FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE)) EMIT FINAL;

SELECT c FROM (SELECT COUNT(*) AS c FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 10 SECONDS)) EMIT FINAL;

SELECT WINDOWEND AS w, c FROM (SELECT COUNT(*) AS c FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE)) EMIT FINAL;

SELECT p.user_id FROM pageviews p JOIN (SELECT COUNT(*) AS c FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE)) m WITHIN 1 MINUTE ON p.ms = m.c EMIT FINAL;
