-- Time functions: literals, now(), INTERVAL, xbar, date_trunc, date_bin, extract
CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT);
INSERT INTO t VALUES
  ('2024-01-02T10:00:00Z', 'A', 1.0, 1),
  ('2024-01-02T10:00:59.5Z', 'A', 2.0, 2),
  ('2024-01-02T10:01:00Z', 'A', 3.0, 3),
  ('2024-01-02T10:04:59Z', 'A', 4.0, 4),
  ('2024-01-02T10:05:00Z', 'A', 5.0, 5),
  ('2024-01-02T11:30:00Z', 'B', 6.0, 6),
  ('2024-03-15T23:59:59Z', 'B', 7.0, 7);
SELECT now(), current_timestamp, now() - INTERVAL '1 hour' AS an_hour_ago;
SELECT INTERVAL '1 minute' AS one_min_ns, INTERVAL '5' MINUTE AS five, INTERVAL '1 hour 30 minutes' AS h, INTERVAL '250ms' AS ms;
SELECT TIMESTAMP '2024-01-02 10:00:00' AS lit, CAST('2024-01-02T10:00:00+02:00' AS TIMESTAMP) AS with_offset, CAST(0 AS TIMESTAMP) AS epoch;
SELECT ts, xbar(ts, INTERVAL '1 minute') AS m1, xbar(ts, 300000000000) AS m5 FROM t ORDER BY ts;
SELECT ts, date_trunc('minute', ts) AS mi, date_trunc('hour', ts) AS h, date_trunc('day', ts) AS d, date_trunc('week', ts) AS w, date_trunc('month', ts) AS mo, date_trunc('year', ts) AS y FROM t ORDER BY ts;
SELECT ts, date_bin(INTERVAL '15 minutes', ts) AS b15, date_bin(INTERVAL '1 hour', ts, TIMESTAMP '2024-01-01 00:30:00') AS b_off FROM t ORDER BY ts;
SELECT ts, extract(year FROM ts) AS y, extract(month FROM ts) AS mo, extract(day FROM ts) AS d, extract(hour FROM ts) AS h, extract(minute FROM ts) AS mi, extract(second FROM ts) AS s, date_part('month', ts) AS dp FROM t ORDER BY ts;
SELECT xbar(price, 2) AS p2, xbar(size, 4) AS s4 FROM t ORDER BY ts;
-- ISO strings and integer nanoseconds in predicates (and the chunk pruning they give)
SELECT count(*) FROM t WHERE ts >= '2024-01-02T10:01:00Z' AND ts < '2024-01-02T10:05:00Z';
SELECT count(*) FROM t WHERE ts BETWEEN '2024-01-02T10:00:00Z' AND '2024-01-02T10:05:00Z';
SELECT count(*) FROM t WHERE ts > 1704189600000000000;
SELECT count(*) FROM t WHERE ts <= TIMESTAMP '2024-01-02 10:00:59.5';
SELECT count(*) FROM t WHERE ts > now() - INTERVAL '1 hour';
SELECT ts + INTERVAL '1 day' AS tomorrow, ts - TIMESTAMP '2024-01-02 10:00:00' AS ns_since FROM t WHERE symbol = 'A' ORDER BY ts LIMIT 2;
-- 1-minute OHLC bars
SELECT xbar(ts, INTERVAL '1 minute') AS bar, first(price) AS open, max(price) AS high, min(price) AS low, last(price) AS close, sum(size) AS volume FROM t WHERE symbol = 'A' GROUP BY bar ORDER BY bar;
-- errors
SELECT CAST('yesterday' AS TIMESTAMP);
SELECT count(*) FROM t WHERE ts > '2024-13-45';
SELECT date_trunc('fortnight', ts) FROM t;
SELECT xbar(ts, price) FROM t;
SELECT INTERVAL '1 month';
