-- Many audited events in one transaction (svc.h, apply_many): a commit
-- per event was most of the audit's work. Each event is claimed in the
-- inbox (keyed by the id's text, as the one-event path did) without
-- aborting the others when it is a duplicate: ON CONFLICT DO NOTHING, in
-- id order, so two batches that share ids cannot deadlock on them. What
-- was claimed is appended in the order given (a second copy of an id in
-- the same batch is not), queued for the chainer and applied to the
-- projections in that order. Returns the places (1-based) of the events
-- that were new here.
CREATE FUNCTION audit_append(p_batch jsonb, p_scope text, p_keep_s double precision)
RETURNS integer[] LANGUAGE plpgsql AS $$
DECLARE
  r record;
  applied integer[] := '{}';
BEGIN
  FOR r IN
    WITH x AS (
      SELECT e.ord::int AS i, e.v->>'id' AS id_text, (e.v->>'id')::uuid AS id,
             e.v->>'topic' AS topic, e.v->>'key' AS key, e.v->'payload' AS payload,
             (e.v->>'partition')::int AS part, (e.v->>'offset')::bigint AS off,
             (e.v->>'stored')::bigint AS stored, e.v->'headers' AS headers
      FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS e(v, ord)),
    c AS (
      INSERT INTO claims (scope, key, request_hash, status, response_body, created_at,
                          expires_at)
      SELECT p_scope, x.id_text, x.topic, 1, '', now(), now() + make_interval(secs => p_keep_s)
      FROM x ORDER BY x.id
      ON CONFLICT DO NOTHING
      RETURNING key),
    y AS (
      SELECT DISTINCT ON (x.id) x.* FROM x JOIN c ON c.key = x.id_text ORDER BY x.id, x.i),
    a AS (
      INSERT INTO audit_log (event_id, topic, key, payload, bus_partition, bus_offset,
                             stored_at, headers)
      SELECT y.id, y.topic, y.key, y.payload, y.part, y.off, to_timestamp(y.stored / 1000.0),
             y.headers
      FROM y ORDER BY y.i
      RETURNING seq, event_id, received_at),
    q AS (INSERT INTO audit_unchained (audit_seq) SELECT a.seq FROM a)
    SELECT y.i AS place, y.topic, y.payload, a.received_at
    FROM a JOIN y ON y.id = a.event_id ORDER BY a.seq
  LOOP
    PERFORM proj_apply(NULL, r.topic, r.payload, r.received_at);
    applied := applied || r.place;
  END LOOP;
  RETURN applied;
END
$$;
