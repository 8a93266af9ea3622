-- bench/payment/hops.sql - where a payment's time goes, hop by hop, from
-- the event service's audit log (database `event`).
--
-- A completed payment's saga is five events, each written to its
-- producer's outbox in the transaction of its state change, relayed to
-- the bus, delivered to the next service:
--
--   1 payment.requested        (payment, POST /v1/payments)
--   2 account.funds_reserved   (account)
--   3 payment.authorized       (payment)
--   4 account.payment_settled  (account)
--   5 payment.completed        (payment)
--
-- Every event is keyed by its payment id. Per event, two spans:
--   occurred -> stored   headers->>'occurred-at' (the producing handler
--                        prepared the event, just before its transaction)
--                        to stored_at (the bus appended it): the rest of
--                        the producing transaction, its commit, the outbox
--                        relay's wake-up, scan and publish.
--   stored -> next       stored_at to the next event's occurred-at: the
--                        bus's fsync and delivery, the consumer's start
--                        (none after payment.completed).
-- and the chain: payment.requested's occurred-at to payment.completed's
-- occurred-at, per payment (POST-to-final also holds the POST before
-- the first and the last commit and long-poll answer after the last).
--
-- Both timestamps are whole milliseconds (occurred-at is written with ms,
-- busd stores Unix ms), so every span is off by up to 1 ms either way; the
-- percentiles are observed values (percentile_disc), in ms.
--
-- The payments: those whose payment.requested occurred in
-- [since_ms, until_ms) (Unix ms). bench/compare payment passes its
-- measured run's window. By hand, against the development PostgreSQL:
--
--   eval "$(deploy/pg env)"
--   psql "$EVENT_DB_URL" -X -f bench/payment/hops.sql \
--     -v since_ms="$(date -d '-10 min' +%s%3N)" -v until_ms="$(date +%s%3N)"
--
-- Without since_ms / until_ms: every payment in the audit log.

\if :{?since_ms}
\else
\set since_ms 0
\endif
\if :{?until_ms}
\else
\set until_ms 9223372036854775807
\endif

WITH saga(pos, topic) AS (
  VALUES (1, 'payment.requested'), (2, 'account.funds_reserved'), (3, 'payment.authorized'),
         (4, 'account.payment_settled'), (5, 'payment.completed')
),
-- stored_at >= occurred-at >= since: the stored_at index narrows the scan.
pay AS (
  SELECT DISTINCT a.key
  FROM audit_log a
  WHERE a.topic = 'payment.requested'
    AND a.stored_at >= to_timestamp(:since_ms / 1000.0) - interval '1 second'
    AND round(extract(epoch FROM (a.headers->>'occurred-at')::timestamptz) * 1000)
        >= :since_ms
    AND round(extract(epoch FROM (a.headers->>'occurred-at')::timestamptz) * 1000)
        < :until_ms
),
-- One row per payment and event (the first, should one ever repeat), in ms.
ev AS (
  SELECT DISTINCT ON (a.key, s.pos) a.key, s.pos,
    round(extract(epoch FROM (a.headers->>'occurred-at')::timestamptz) * 1000)::bigint AS occ,
    round(extract(epoch FROM a.stored_at) * 1000)::bigint AS stored
  FROM pay p
  JOIN audit_log a ON a.key = p.key
  JOIN saga s ON s.topic = a.topic
  WHERE a.stored_at >= to_timestamp(:since_ms / 1000.0) - interval '1 second'
  ORDER BY a.key, s.pos, a.seq
),
spans AS (
  SELECT e.pos, 1 AS part, e.stored - e.occ AS ms FROM ev e
  UNION ALL
  SELECT e.pos, 2, n.occ - e.stored FROM ev e JOIN ev n ON n.key = e.key AND n.pos = e.pos + 1
  UNION ALL
  SELECT 6, 3, l.occ - f.occ FROM ev f JOIN ev l ON l.key = f.key AND l.pos = 5 WHERE f.pos = 1
)
SELECT x.pos AS pos, x.part AS part,
  CASE x.part
    WHEN 1 THEN s.topic || ': occurred -> stored'
    WHEN 2 THEN s.topic || ': stored -> ' || nx.topic || ' occurred'
    ELSE 'chain: payment.requested occurred -> payment.completed occurred'
  END AS span,
  count(*) AS n,
  percentile_disc(0.5) WITHIN GROUP (ORDER BY x.ms) AS p50_ms,
  percentile_disc(0.99) WITHIN GROUP (ORDER BY x.ms) AS p99_ms,
  max(x.ms) AS max_ms
FROM spans x
LEFT JOIN saga s ON s.pos = x.pos
LEFT JOIN saga nx ON nx.pos = x.pos + 1
GROUP BY x.pos, x.part, s.topic, nx.topic
ORDER BY x.pos, x.part;
