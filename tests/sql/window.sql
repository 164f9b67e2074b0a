-- Window functions
CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT);
INSERT INTO trades VALUES
  ('2024-01-02T10:00:03Z', 'A', 12.0, 3),
  ('2024-01-02T10:00:01Z', 'A', 10.0, 1),
  ('2024-01-02T10:00:02Z', 'A', 11.0, 2),
  ('2024-01-02T10:00:04Z', 'A', 11.0, NULL),
  ('2024-01-02T10:00:05Z', 'A', 14.0, 5),
  ('2024-01-02T10:00:01Z', 'B', 20.0, 1),
  ('2024-01-02T10:00:02Z', 'B', 18.0, 2),
  ('2024-01-02T10:00:03Z', 'B', 18.0, 3);
SELECT symbol, ts, price, row_number() OVER (PARTITION BY symbol ORDER BY ts) AS rn, rank() OVER (PARTITION BY symbol ORDER BY price) AS rk, dense_rank() OVER (PARTITION BY symbol ORDER BY price) AS drk FROM trades ORDER BY symbol, ts;
SELECT symbol, ts, price, lag(price) OVER (PARTITION BY symbol ORDER BY ts) AS prev, lead(price) OVER (PARTITION BY symbol ORDER BY ts) AS nxt, lag(price, 2) OVER (PARTITION BY symbol ORDER BY ts) AS prev2, lag(symbol) OVER (ORDER BY ts, symbol) AS prev_sym FROM trades ORDER BY symbol, ts;
SELECT symbol, ts, price, ema(price, 0.5) OVER (PARTITION BY symbol ORDER BY ts) AS e, mavg(price, 2) OVER (PARTITION BY symbol ORDER BY ts) AS ma2, msum(size, 3) OVER (PARTITION BY symbol ORDER BY ts) AS ms3, delta(price) OVER (PARTITION BY symbol ORDER BY ts) AS d FROM trades ORDER BY symbol, ts;
SELECT symbol, ts, sum(size) OVER (PARTITION BY symbol ORDER BY ts) AS running, count(size) OVER (PARTITION BY symbol ORDER BY ts) AS c, avg(price) OVER (PARTITION BY symbol) AS avg_all, min(price) OVER (PARTITION BY symbol ORDER BY ts) AS runmin, max(price) OVER (PARTITION BY symbol ORDER BY price) AS peers FROM trades ORDER BY symbol, ts;
SELECT symbol, ts, row_number() OVER (ORDER BY ts DESC, symbol) AS rn FROM trades ORDER BY rn LIMIT 3;
SELECT symbol, sum(size) AS vol, rank() OVER (ORDER BY sum(size) DESC) AS r FROM trades GROUP BY symbol ORDER BY r;
SELECT * FROM (SELECT symbol, ts, price, row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM trades) x WHERE rn = 1 ORDER BY symbol;
SELECT mavg(price, 0) OVER (ORDER BY ts) FROM trades;
SELECT ema(symbol, 0.5) OVER (ORDER BY ts) FROM trades;
-- explicit ROWS frames
SELECT symbol, ts, size, sum(size) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS s2, avg(price) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS a3, min(price) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS m2, count(size) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS c, max(price) OVER (PARTITION BY symbol ORDER BY price ROWS UNBOUNDED PRECEDING) AS runmax FROM trades ORDER BY symbol, ts;
SELECT sum(price) OVER (ORDER BY ts ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) FROM trades;
SELECT lag(price) OVER (ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM trades;
