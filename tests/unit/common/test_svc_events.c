/*
 * The event registry (events.def, svc_events.c) and the headers every
 * event carries.
 */
#include "svc.h"
#include "t.h"

static void test_registry(void) {
  static const char *const producers[] = {"profile", "account", "payment", "event"};
  for (int i = 0; i < SVC_EV_COUNT; i++) {
    const svc_event_def_t *d = svc_event_def((svc_event_type_t)i);
    T_CHECK_EQ_INT(d->type, i);
    T_CHECK(bus_name_valid((const uint8_t *)d->topic, strlen(d->topic)));
    T_CHECK(strlen(d->key_field) > 0);
    T_CHECK(d->version >= 1);
    /* The topic is "<entity>.<what happened>". */
    const char *dot = strchr(d->topic, '.');
    T_CHECK(dot != NULL && dot > d->topic && dot[1] != '\0' && strchr(dot + 1, '.') == NULL);
    bool known = false;
    for (size_t k = 0; k < sizeof producers / sizeof producers[0]; k++)
      known = known || strcmp(producers[k], d->producer) == 0;
    T_CHECK(known);
    /* Unique, and found again by its topic. */
    for (int j = 0; j < i; j++) T_CHECK(strcmp(svc_event_def((svc_event_type_t)j)->topic, d->topic) != 0);
    T_CHECK(svc_event_by_topic(d->topic, strlen(d->topic)) == d);
    /* Leaves room for the dead-letter topic's suffix. */
    T_CHECK(strlen(d->topic) + 5 <= BUS_NAME_BYTES_MAX);
  }
  T_CHECK(svc_event_by_topic("payment.nope", 12) == NULL);
  T_CHECK(svc_event_by_topic("payment.requested", 9) == NULL); /* a prefix is not a topic */
  T_CHECK_STR(svc_event_def(SVC_EV_PAYMENT_REQUESTED)->key_field, "payment_id");
}

static void test_headers(void) {
  svc_trace_t tr = {.correlation_id = "req-abc_1.2", .causation_id = ""};
  snprintf(tr.causation_id, sizeof tr.causation_id, "0190c0de-0000-7000-8000-000000000001");
  svc_emit_t e;
  svc_emit_prepare(&e, SVC_EV_PAYMENT_AUTHORIZED, &tr);
  json_error_t je;
  json_t *h = json_loads(e.headers, JSON_REJECT_DUPLICATES, &je);
  T_REQUIRE(json_is_object(h));
  T_CHECK_STR(json_string_value(json_object_get(h, "event-id")), e.id);
  T_CHECK_STR(json_string_value(json_object_get(h, "type")), "payment.authorized");
  T_CHECK_STR(json_string_value(json_object_get(h, "schema-version")), "1");
  T_CHECK_STR(json_string_value(json_object_get(h, "correlation-id")), "req-abc_1.2");
  T_CHECK_STR(json_string_value(json_object_get(h, "causation-id")),
              "0190c0de-0000-7000-8000-000000000001");
  const char *at = json_string_value(json_object_get(h, "occurred-at"));
  T_CHECK(at != NULL && strlen(at) == 24 && at[23] == 'Z');
  T_CHECK_STR(e.topic, "payment.authorized");
  T_CHECK(svc_uuid_valid(e.id) && e.id[14] == '7');
  json_decref(h);
  /* A correlation id that could break the JSON or a log line is dropped. */
  snprintf(tr.correlation_id, sizeof tr.correlation_id, "x\",\"type\":\"evil");
  svc_emit_prepare(&e, SVC_EV_PAYMENT_AUTHORIZED, &tr);
  h = json_loads(e.headers, JSON_REJECT_DUPLICATES, &je);
  T_REQUIRE(json_is_object(h));
  T_CHECK_STR(json_string_value(json_object_get(h, "correlation-id")), "");
  T_CHECK_STR(json_string_value(json_object_get(h, "type")), "payment.authorized");
  json_decref(h);
  svc_emit_prepare(&e, SVC_EV_CUSTOMER_CREATED, NULL);
  h = json_loads(e.headers, JSON_REJECT_DUPLICATES, &je);
  T_CHECK(json_is_object(h));
  json_decref(h);
}

static void test_uuid7_order(void) {
  char prev[37] = "", cur[37];
  for (int i = 0; i < 10000; i++) {
    svc_uuid7(cur);
    T_CHECK(svc_uuid_valid(cur));
    if (i > 0 && strcmp(prev, cur) >= 0) {
      T_CHECK(strcmp(prev, cur) < 0);
      break;
    }
    memcpy(prev, cur, sizeof cur);
  }
}

int main(void) {
  T_RUN(test_registry);
  T_RUN(test_headers);
  T_RUN(test_uuid7_order);
  return t_done();
}
