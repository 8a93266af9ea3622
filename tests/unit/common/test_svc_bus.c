/*
 * BUS_URL (svc_bus.h): which transport, where, and with what login. The
 * transports themselves are tested with real brokers: busd in
 * tests/integration, RabbitMQ in tests/chaos/test_rabbit_chaos.py.
 */
#include "svc_bus.h"
#include "t.h"

static void test_busd(void) {
  svc_bus_url_t u;
  T_CHECK_EQ_INT(svc_bus_url_parse("off", &u), 0);
  T_CHECK_EQ_INT(u.kind, SVC_BUS_OFF);
  /* BUS_ADDR's form, as before. */
  T_CHECK_EQ_INT(svc_bus_url_parse("127.0.0.1:7400", &u), 0);
  T_CHECK_EQ_INT(u.kind, SVC_BUS_BUSD);
  T_CHECK_STR(u.hosts[0].host, "127.0.0.1");
  T_CHECK_EQ_INT(u.hosts[0].port, 7400);
  T_CHECK_EQ_INT(svc_bus_url_parse("busd://localhost:7411", &u), 0);
  T_CHECK_EQ_INT(u.kind, SVC_BUS_BUSD);
  T_CHECK_STR(u.hosts[0].host, "localhost");
  T_CHECK_EQ_INT(u.hosts[0].port, 7411);
  T_CHECK_EQ_INT(svc_bus_url_parse("busd://127.0.0.1:7400/", &u), 0);
  /* No name look-ups, no port-less busd, nothing unknown. */
  T_CHECK(svc_bus_url_parse("busd://bus.example.com:7400", &u) < 0);
  T_CHECK(svc_bus_url_parse("busd://127.0.0.1", &u) < 0);
  T_CHECK(svc_bus_url_parse("127.0.0.1:0", &u) < 0);
  T_CHECK(svc_bus_url_parse("127.0.0.1:65536", &u) < 0);
  T_CHECK(svc_bus_url_parse("kafka://127.0.0.1:9092", &u) < 0);
  T_CHECK(svc_bus_url_parse("", &u) < 0);
}

static void test_amqp(void) {
  svc_bus_url_t u;
  T_CHECK_EQ_INT(svc_bus_url_parse("amqp://paycore:s%40cret@127.0.0.1:5672,127.0.0.1:5673,"
                                   "127.0.0.1/pay%2Fcore", &u), 0);
  T_CHECK_EQ_INT(u.kind, SVC_BUS_AMQP);
  T_CHECK_STR(u.user, "paycore");
  T_CHECK_STR(u.pass, "s@cret");
  T_CHECK_STR(u.vhost, "pay/core");
  T_CHECK_EQ_INT(u.hosts_count, 3);
  T_CHECK_EQ_INT(u.hosts[1].port, 5673);
  T_CHECK_EQ_INT(u.hosts[2].port, 5672); /* the default */
  char text[256];
  svc_bus_url_format(&u, text, sizeof text);
  T_CHECK(strstr(text, "cret") == NULL);  /* never the password in logs */
  T_CHECK_STR(text, "amqp://paycore:***@127.0.0.1:5672,127.0.0.1:5673,127.0.0.1:5672/pay/core");
  /* Defaults: guest, vhost "/". */
  T_CHECK_EQ_INT(svc_bus_url_parse("amqp://localhost", &u), 0);
  T_CHECK_STR(u.user, "guest");
  T_CHECK_STR(u.vhost, "/");
  T_CHECK_EQ_INT(u.hosts[0].port, 5672);
  T_CHECK(svc_bus_url_parse("amqp://u:p@/vh", &u) < 0);                 /* no host */
  T_CHECK(svc_bus_url_parse("amqp://u:p@rabbit.local/vh", &u) < 0);     /* a name */
  T_CHECK(svc_bus_url_parse("amqp://u:p%4@127.0.0.1/vh", &u) < 0);      /* bad escape */
  T_CHECK(svc_bus_url_parse("amqp://u:p%00@127.0.0.1/vh", &u) < 0);     /* NUL */
  T_CHECK(svc_bus_url_parse("amqp://127.0.0.1,,127.0.0.2/", &u) < 0);   /* empty host */
  T_CHECK(svc_bus_url_parse("amqp://1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4,1.1.1.5,1.1.1.6,1.1.1.7,"
                            "1.1.1.8,1.1.1.9/", &u) < 0);                /* too many */
}

int main(void) {
  test_busd();
  test_amqp();
  return t_done();
}
