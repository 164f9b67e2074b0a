-- EXPLAIN shows the plan and the pruning storage did; limits fail with typed errors
CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT);
INSERT INTO trades VALUES
  ('2024-01-02T10:00:00Z', 'AAPL', 100.0, 10),
  ('2024-01-02T11:30:00Z', 'AAPL', 101.0, 20),
  ('2024-01-02T12:10:00Z', 'AAPL', 102.0, 30),
  ('2024-01-02T10:20:00Z', 'MSFT', 200.0, 5),
  ('2024-01-02T13:00:00Z', 'MSFT', 202.0, 15),
  ('2024-01-02T09:59:00Z', 'GOOG', 50.0, 1);
EXPLAIN SELECT count(*) FROM trades;
EXPLAIN SELECT vwap(price, size) FROM trades WHERE symbol = 'AAPL';
EXPLAIN SELECT symbol, avg(price) FROM trades WHERE symbol IN ('AAPL', 'MSFT') AND ts >= '2024-01-02T11:00:00Z' AND ts < '2024-01-02T12:00:00Z' GROUP BY symbol;
EXPLAIN SELECT * FROM trades WHERE ts BETWEEN '2024-01-02T10:00:00Z' AND '2024-01-02T10:59:59Z' ORDER BY price DESC LIMIT 1;
EXPLAIN SELECT * FROM trades WHERE symbol = 'AAPL' AND symbol = 'MSFT';
EXPLAIN SELECT t.price, q.price FROM trades t ASOF JOIN trades q ON t.symbol = q.symbol AND t.ts >= q.ts WHERE t.symbol = 'GOOG';
EXPLAIN ANALYZE SELECT symbol FROM trades WHERE price > 100;
SELECT vwap(price, size) FROM trades WHERE symbol = 'AAPL' AND ts >= '2024-01-02T11:00:00Z';
-- memory budget
-- settings: memory_limit=300
SELECT * FROM trades ORDER BY price;
-- settings: memory_limit=100
SELECT symbol, count(*) FROM trades GROUP BY symbol;
-- timeout
-- settings: timeout_ms=0
SELECT count(*) FROM trades;
SELECT count(*) FROM trades;
