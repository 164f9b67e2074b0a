-- Assorted shapes: ordering by aggregates, nested aggregates, constant predicates
CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT, flag BOOLEAN);
INSERT INTO t VALUES
  ('2024-01-02T10:00:00Z', 'A', 10.0, 1, true),
  ('2024-01-02T10:00:01Z', 'A', 11.0, 2, false),
  ('2024-01-02T10:00:02Z', 'B', 20.0, 3, true),
  ('2024-01-02T10:00:03Z', 'C', 30.0, 4, NULL),
  ('2024-01-02T10:00:04Z', 'C', 31.0, 5, true),
  ('2024-01-02T10:00:05Z', 'C', 32.0, 6, false);
SELECT symbol FROM t GROUP BY symbol ORDER BY sum(size) DESC;
SELECT symbol, count(*) AS n FROM t GROUP BY symbol ORDER BY count(*), symbol;
SELECT max(n), min(n), avg(n) FROM (SELECT symbol, count(*) AS n FROM t GROUP BY symbol) x;
SELECT * FROM (SELECT symbol, max(price) AS mx FROM t GROUP BY symbol) ORDER BY 2 DESC;
SELECT flag, count(*) FROM t GROUP BY flag ORDER BY flag;
SELECT count(*) FROM t WHERE false;
SELECT count(*) FROM t WHERE NULL;
SELECT 1 AS one WHERE 1 = 0;
SELECT 1 AS one WHERE 1 = 1;
SELECT DISTINCT symbol FROM t ORDER BY symbol LIMIT 2;
SELECT symbol, last(price) FROM t WHERE ts < now() GROUP BY symbol ORDER BY symbol;
SELECT symbol, sum(size) AS s, row_number() OVER (ORDER BY sum(size) DESC) AS pos FROM t GROUP BY symbol ORDER BY pos;
SELECT CAST(ts AS BIGINT) AS ns, CAST(size AS STRING) AS s, CAST(flag AS INT) AS f FROM t WHERE symbol = 'A' ORDER BY ts;
SELECT symbol, price FROM t WHERE symbol <> 'C' AND NOT flag IS NULL ORDER BY ts DESC;
SELECT symbol, price, size FROM t ORDER BY symbol DESC, size DESC LIMIT 2 OFFSET 1;
VALUES (1, 'a'), (2, 'b');
SELECT column2, column1 * 10 FROM (VALUES (1, 'a'), (2, 'b')) v ORDER BY column1 DESC;
SELECT * FROM t WHERE price IN (10, 20.0, 32) ORDER BY ts;
SELECT * FROM t WHERE ts IN ('2024-01-02T10:00:00Z', '2024-01-02T10:00:05Z') ORDER BY ts;
SELECT count(*) FROM t WHERE symbol IN ('A', 'ZZZ');
EXPLAIN SELECT count(*) FROM t WHERE symbol IN ('A', 'ZZZ');
SELECT count(*) FROM t WHERE symbol = 'nope';
SELECT price, size FROM t WHERE price > size * 5 AND size BETWEEN 2 AND 5 ORDER BY ts;
SELECT symbol || '-' || CAST(size AS STRING) AS tag, 'x' || NULL AS n, symbol || size AS auto_cast FROM t WHERE symbol = 'A' ORDER BY ts;
