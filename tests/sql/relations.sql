-- CTEs, subqueries, UNION ALL, joins, ASOF JOIN
CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT);
CREATE TABLE quotes (ts TIMESTAMP, symbol SYMBOL, bid DOUBLE, ask DOUBLE);
CREATE TABLE refdata (ts TIMESTAMP, symbol SYMBOL, sector STRING);
INSERT INTO trades VALUES
  ('2024-01-02T10:00:05Z', 'AAPL', 100.0, 10),
  ('2024-01-02T10:00:15Z', 'AAPL', 101.0, 20),
  ('2024-01-02T10:00:01Z', 'AAPL', 99.0, 5),
  ('2024-01-02T10:00:10Z', 'MSFT', 200.0, 5),
  ('2024-01-02T10:00:20Z', 'MSFT', 202.0, 15),
  ('2024-01-02T10:00:00Z', 'GOOG', 50.0, 1);
INSERT INTO quotes VALUES
  ('2024-01-02T10:00:02Z', 'AAPL', 99.5, 100.5),
  ('2024-01-02T10:00:05Z', 'AAPL', 99.8, 100.2),
  ('2024-01-02T10:00:12Z', 'AAPL', 100.5, 101.5),
  ('2024-01-02T10:00:09Z', 'MSFT', 199.0, 201.0),
  ('2024-01-02T10:00:30Z', 'MSFT', 201.0, 203.0);
INSERT INTO refdata VALUES
  ('2024-01-01T00:00:00Z', 'AAPL', 'tech'),
  ('2024-01-01T00:00:00Z', 'MSFT', 'tech'),
  ('2024-01-01T00:00:00Z', 'XOM', 'energy');
WITH s AS (SELECT symbol, sum(size) AS vol FROM trades GROUP BY symbol) SELECT * FROM s WHERE vol > 10 ORDER BY symbol;
WITH a AS (SELECT symbol, price FROM trades), b AS (SELECT symbol, max(price) AS mx FROM a GROUP BY symbol) SELECT b.symbol, b.mx FROM b ORDER BY b.mx;
WITH c (sym, n) AS (SELECT symbol, count(*) FROM trades GROUP BY symbol) SELECT sym, n FROM c ORDER BY sym;
SELECT sub.symbol, sub.n FROM (SELECT symbol, count(*) AS n FROM trades GROUP BY symbol) sub WHERE sub.n >= 2 ORDER BY sub.symbol;
SELECT symbol, price FROM trades WHERE price > (SELECT avg(price) FROM trades) ORDER BY price;
SELECT symbol, price FROM trades WHERE symbol IN (SELECT symbol FROM refdata WHERE sector = 'tech') ORDER BY ts;
SELECT symbol, price FROM trades WHERE symbol NOT IN (SELECT symbol FROM refdata) ORDER BY ts;
SELECT count(*) FROM trades WHERE EXISTS (SELECT 1 FROM refdata WHERE sector = 'energy');
SELECT (SELECT max(price) FROM trades) AS mx, (SELECT count(*) FROM quotes) AS nq;
SELECT symbol, price FROM trades WHERE symbol = 'GOOG' UNION ALL SELECT symbol, bid FROM quotes WHERE symbol = 'MSFT' ORDER BY price;
SELECT symbol FROM trades UNION SELECT symbol FROM refdata ORDER BY symbol;
SELECT 1 AS x UNION ALL SELECT 2 UNION ALL SELECT 3 ORDER BY x DESC;
SELECT t.symbol, t.price, r.sector FROM trades t JOIN refdata r ON t.symbol = r.symbol ORDER BY t.ts;
SELECT t.symbol, t.price, r.sector FROM trades t LEFT JOIN refdata r ON t.symbol = r.symbol ORDER BY t.ts;
SELECT r.symbol, count(t.price) AS n FROM refdata r LEFT JOIN trades t ON t.symbol = r.symbol GROUP BY r.symbol ORDER BY r.symbol;
SELECT t.symbol, t.price, q.bid FROM trades t JOIN quotes q ON t.symbol = q.symbol AND q.bid < t.price - 0.6 ORDER BY t.ts, q.ts;
SELECT t.symbol, t.price, q.bid FROM trades t LEFT JOIN quotes q ON t.symbol = q.symbol AND q.bid > t.price ORDER BY t.ts, q.ts;
SELECT count(*) FROM trades, refdata;
SELECT r.sector, sum(t.size) AS vol FROM trades t INNER JOIN refdata r USING (symbol) GROUP BY r.sector;
-- ASOF JOIN: latest quote at or before each trade, same symbol
SELECT t.ts, t.symbol, t.price, q.ts AS qts, q.bid, q.ask FROM trades t ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts ORDER BY t.symbol, t.ts;
SELECT t.ts, t.price, q.bid, t.price - q.bid AS edge FROM trades t ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts WHERE t.symbol = 'AAPL' ORDER BY t.ts;
SELECT t.ts, q.ts AS qts FROM trades t ASOF JOIN quotes q ON q.ts <= t.ts AND q.symbol = t.symbol WHERE t.symbol = 'MSFT' ORDER BY t.ts;
SELECT count(*) AS n, count(q.bid) AS matched FROM trades t ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts;
SELECT t.ts, q.ts AS qts FROM trades t ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts > q.ts ORDER BY t.ts;
SELECT * FROM trades t SEMI JOIN quotes q ON t.symbol = q.symbol;
EXPLAIN SELECT t.symbol, r.sector FROM trades t LEFT JOIN refdata r ON t.symbol = r.symbol AND r.ts < t.ts;
EXPLAIN SELECT t.price, q.bid FROM trades t ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts > q.ts WHERE t.symbol = 'AAPL';
