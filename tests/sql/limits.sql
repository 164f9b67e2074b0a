-- Limits on bigger data: 100k rows built with cross joins
CREATE TABLE big (ts TIMESTAMP, symbol SYMBOL, v DOUBLE);
INSERT INTO big SELECT CAST(1704189600000000000 + (a.x * 10000 + b.x * 1000 + c.x * 100 + d.x * 10 + e.x) * 1000000000 AS TIMESTAMP), CASE WHEN e.x % 2 = 0 THEN 'EVEN' ELSE 'ODD' END, (a.x * 10000 + b.x * 1000 + c.x * 100 + d.x * 10 + e.x) * 0.5 FROM (VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)) a(x), (VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)) b(x), (VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)) c(x), (VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)) d(x), (VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)) e(x);
SELECT count(*), sum(v), min(ts), max(ts) FROM big;
SELECT symbol, count(*), avg(v) FROM big GROUP BY symbol ORDER BY symbol;
-- a full sort over the budget fails; a top-N under the same budget works
-- settings: memory_limit=1000000
SELECT * FROM big ORDER BY v DESC;
-- settings: memory_limit=1000000
SELECT ts, v FROM big ORDER BY v DESC LIMIT 3;
-- settings: memory_limit=1000000
SELECT a.v FROM big a JOIN big b ON a.symbol = b.symbol;
-- a many-to-many join past its deadline
-- settings: timeout_ms=300
SELECT count(*) FROM big a, big b;
-- nothing changed
SELECT count(*) FROM big;
