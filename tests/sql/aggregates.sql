-- Every aggregate, with NULLs, empty input and groups
CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT, qty INT, venue STRING);
INSERT INTO t VALUES
  ('2024-01-02T10:00:03Z', 'A', 3.0, 30, 3, 'b'),
  ('2024-01-02T10:00:01Z', 'A', 1.0, 10, 1, 'a'),
  ('2024-01-02T10:00:04Z', 'A', 4.0, NULL, NULL, NULL),
  ('2024-01-02T10:00:02Z', 'A', 2.0, 20, 2, 'c'),
  ('2024-01-02T10:00:05Z', 'B', 10.0, 5, 7, 'a'),
  ('2024-01-02T10:00:06Z', 'B', NULL, 5, 8, 'a'),
  ('2024-01-02T10:00:07Z', 'C', 7.0, 0, 9, 'z');
SELECT count(*), count(price), count(size), count(DISTINCT venue), count(DISTINCT symbol), count(DISTINCT size) FROM t;
SELECT sum(price), sum(size), sum(qty), avg(price), avg(size), min(price), max(price), min(qty), max(size), min(ts), max(ts), min(venue), max(symbol) FROM t;
SELECT first(price), last(price), first(venue), last(symbol), first(ts), last(size) FROM t;
SELECT vwap(price, size), stddev(price), variance(price), median(price), percentile(price, 0.9), percentile(size, 0), percentile(size, 1) FROM t;
SELECT symbol, count(*), sum(size), avg(price), first(price), last(price), vwap(price, size), stddev(price), median(price), percentile(price, 0.25), count(DISTINCT venue) FROM t GROUP BY symbol ORDER BY symbol;
-- empty input: one row without GROUP BY, no rows with it
SELECT count(*), sum(price), avg(price), min(price), first(price), vwap(price, size), stddev(price), median(price), count(DISTINCT venue) FROM t WHERE price > 100;
SELECT symbol, count(*) FROM t WHERE price > 100 GROUP BY symbol;
-- aggregates of expressions, expressions of aggregates
SELECT symbol, sum(price * size) / sum(size) AS manual_vwap, max(price) - min(price) AS spread, count(*) * 2 AS twice FROM t GROUP BY symbol ORDER BY symbol;
SELECT sum(CASE WHEN price > 2 THEN 1 ELSE 0 END) AS above2, avg(CASE WHEN symbol = 'A' THEN price END) AS avg_a FROM t;
-- group by expressions, multiple keys, a time bucket
SELECT symbol, venue, count(*) FROM t GROUP BY symbol, venue ORDER BY symbol, venue;
SELECT price > 2 AS big, count(*) FROM t GROUP BY price > 2 ORDER BY big;
SELECT xbar(ts, INTERVAL '2 seconds') AS b, count(*), sum(size) FROM t GROUP BY b ORDER BY b;
-- errors
SELECT sum(venue) FROM t;
SELECT avg(symbol) FROM t;
SELECT percentile(price, 1.5) FROM t;
SELECT percentile(price, size) FROM t;
SELECT sum(count(*)) FROM t;
SELECT symbol, price FROM t GROUP BY symbol;
SELECT count(*) FROM t WHERE sum(price) > 1;
SELECT vwap(price) FROM t;
SELECT sum(DISTINCT price) FROM t;
SELECT first(price) FROM (SELECT price FROM t) x;
SELECT first(price, ts) FROM (SELECT price, ts FROM t) x;
