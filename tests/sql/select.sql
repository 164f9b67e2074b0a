-- SELECT: expressions, WHERE, GROUP BY, HAVING, ORDER BY, LIMIT/OFFSET, DISTINCT
CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT, venue STRING, qty INT, ok BOOLEAN);
INSERT INTO trades VALUES
  ('2024-01-02T10:00:00Z', 'AAPL', 100.0, 10, 'X', 1, true),
  ('2024-01-02T10:00:30Z', 'AAPL', 101.0, 20, 'Y', 2, false),
  ('2024-01-02T10:01:10Z', 'AAPL', 102.0, 30, NULL, 3, true),
  ('2024-01-02T10:00:10Z', 'MSFT', 200.0, 5, 'X', NULL, NULL),
  ('2024-01-02T10:02:00Z', 'MSFT', 202.0, 15, 'Z', 5, true),
  ('2024-01-02T09:59:00Z', 'GOOG', 50.0, NULL, 'Y', 6, false);
SELECT 1 + 2 AS three, 7 / 2 AS half, 7 % 3 AS m, 2 * 3.5 AS f, -4 AS neg, 'a' AS s, NULL AS n, true AND NULL AS tn, false AND NULL AS fn, true OR NULL AS to_;
SELECT symbol, price, CASE WHEN price > 150 THEN 'high' WHEN price > 75 THEN 'mid' ELSE 'low' END AS band FROM trades ORDER BY ts;
SELECT symbol, CASE symbol WHEN 'AAPL' THEN 1 WHEN 'MSFT' THEN 2 END AS code FROM trades ORDER BY ts;
SELECT CAST(price AS BIGINT) AS i, CAST(size AS DOUBLE) AS d, CAST(qty AS STRING) AS s, CAST('42' AS INT) AS n, price::INT AS pi FROM trades ORDER BY ts;
SELECT symbol, venue FROM trades WHERE venue IN ('X', 'Z') ORDER BY ts;
SELECT symbol, venue FROM trades WHERE venue NOT IN ('X', 'Z') ORDER BY ts;
SELECT symbol FROM trades WHERE symbol IN ('AAPL', 'GOOG') ORDER BY ts;
SELECT symbol, price FROM trades WHERE price BETWEEN 100 AND 200 ORDER BY ts;
SELECT symbol, price FROM trades WHERE price NOT BETWEEN 100 AND 200 ORDER BY ts;
SELECT symbol FROM trades WHERE symbol LIKE 'A%' ORDER BY ts;
SELECT symbol FROM trades WHERE symbol NOT LIKE '%O%' ORDER BY ts;
SELECT venue FROM trades WHERE venue ILIKE 'x' ORDER BY ts;
SELECT symbol FROM trades WHERE symbol LIKE '_SFT' ORDER BY ts;
SELECT symbol, venue FROM trades WHERE venue IS NULL;
SELECT count(*) FROM trades WHERE qty IS NOT NULL;
SELECT symbol, ok FROM trades WHERE ok ORDER BY ts;
SELECT symbol, ok FROM trades WHERE NOT ok ORDER BY ts;
SELECT symbol, price FROM trades WHERE symbol = 'AAPL' OR price < 60 ORDER BY ts;
SELECT symbol, price FROM trades WHERE (symbol = 'AAPL' OR symbol = 'MSFT') AND price > 100.5 ORDER BY ts;
SELECT symbol, price FROM trades WHERE price <> 100 AND price >= 101 AND price <= 200 ORDER BY ts;
SELECT coalesce(venue, 'none') AS v, abs(-price) AS a, round(price / 3, 2) AS r, floor(price / 3) AS fl, ceil(price / 3) AS ce, sqrt(size) AS sq, upper(venue) AS u, lower(symbol) AS l, length(symbol) AS len FROM trades ORDER BY ts;
SELECT symbol, count(*) AS n FROM trades GROUP BY symbol HAVING count(*) > 1 ORDER BY n DESC, symbol;
SELECT symbol, sum(size) FROM trades GROUP BY 1 ORDER BY 2 DESC;
SELECT venue, count(*) FROM trades GROUP BY venue ORDER BY venue NULLS FIRST;
SELECT venue, count(*) FROM trades GROUP BY venue ORDER BY venue;
SELECT symbol, avg(price) * 2 AS dbl FROM trades GROUP BY symbol HAVING avg(price) > 60 ORDER BY symbol;
SELECT price FROM trades ORDER BY price DESC LIMIT 2;
SELECT price FROM trades ORDER BY price LIMIT 2 OFFSET 3;
SELECT price FROM trades ORDER BY price OFFSET 4;
SELECT price FROM trades ORDER BY price LIMIT 0;
SELECT DISTINCT symbol FROM trades ORDER BY symbol;
SELECT DISTINCT venue, ok FROM trades ORDER BY venue, ok;
SELECT count(DISTINCT symbol) AS syms, count(DISTINCT venue) AS venues, count(venue) AS nonnull FROM trades;
SELECT symbol, price FROM trades ORDER BY symbol DESC, price ASC;
SELECT symbol AS s, price FROM trades ORDER BY s, price DESC LIMIT 3;
SELECT price FROM trades ORDER BY size DESC NULLS LAST, price;
SELECT t.symbol, t.price FROM trades t WHERE t.price > 200;
SELECT trades.* FROM trades WHERE trades.symbol = 'GOOG';
SELECT qty + 1 AS q1, qty * size AS qs, qty / 2 AS qh FROM trades ORDER BY ts;
-- a nullable SYMBOL column that is not the partition key
CREATE TABLE s2 (ts TIMESTAMP, symbol SYMBOL, side SYMBOL, px DOUBLE);
INSERT INTO s2 VALUES ('2024-01-02T10:00:00Z', 'A', 'buy', 1.0), ('2024-01-02T10:00:01Z', 'A', NULL, 2.0), ('2024-01-02T10:00:02Z', 'B', 'sell', 3.0), ('2024-01-02T10:00:03Z', 'B', 'buy', 4.0);
SELECT side, count(*), sum(px) FROM s2 GROUP BY side ORDER BY side;
SELECT DISTINCT side FROM s2 ORDER BY side DESC;
SELECT symbol, side FROM s2 WHERE side = 'buy' OR side IS NULL ORDER BY ts;
SELECT a.symbol, a.side, b.px FROM s2 a JOIN s2 b ON a.side = b.side AND a.ts < b.ts ORDER BY a.ts;
