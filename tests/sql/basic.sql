-- Statements: CREATE / SHOW / DESCRIBE / INSERT / SELECT / DROP
CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT, venue STRING, qty INT, ok BOOLEAN);
CREATE TABLE IF NOT EXISTS trades (ts TIMESTAMP, symbol SYMBOL);
CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL);
SHOW TABLES;
DESCRIBE trades;
INSERT INTO trades VALUES
  ('2024-01-02T10:00:00Z', 'AAPL', 100.0, 10, 'X', 1, true),
  ('2024-01-02T10:00:30Z', 'AAPL', 101.0, 20, 'Y', 2, false),
  ('2024-01-02T10:01:10Z', 'AAPL', 102.0, 30, NULL, 3, true),
  ('2024-01-02T10:00:10Z', 'MSFT', 200.0, 5, 'X', NULL, NULL),
  ('2024-01-02T10:02:00Z', 'MSFT', 202.0, 15, 'Z', 5, true),
  ('2024-01-02T09:59:00Z', 'GOOG', 50.0, NULL, 'Y', 6, false);
SELECT * FROM trades ORDER BY ts;
SELECT symbol, price FROM trades WHERE symbol = 'AAPL' ORDER BY ts;
SELECT count(*) FROM trades;
SELECT symbol, count(*) AS n, sum(size) AS s, avg(price) AS a, min(price), max(price) FROM trades GROUP BY symbol ORDER BY symbol;
SELECT symbol, first(price), last(price), vwap(price, size) FROM trades GROUP BY symbol ORDER BY symbol;
SELECT price / 0 AS d, size % 0 AS m, -price AS neg, price * 2 + 1 AS e FROM trades WHERE symbol = 'GOOG';
DROP TABLE trades;
DROP TABLE trades;
DROP TABLE IF EXISTS trades;
SHOW TABLES;
