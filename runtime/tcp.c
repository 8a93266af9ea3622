/*
 * tcp.c - sockets, and the constructors of every I/O operation.
 *
 * Socket set-up (listen, bind) happens at start-up with ordinary system
 * calls; everything after that goes through the ring. An op constructor
 * fills the caller's rt_op_t and hands it to the loop. It fails (and the
 * callback is then never called) only when the op is already in flight.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>

#include "loop_internal.h"

static int set_int_opt(int fd, int level, int name, int value) {
  if (setsockopt(fd, level, name, &value, sizeof value) < 0) return -errno;
  return 0;
}

int rt_tcp_addr(const char *host, uint16_t port, struct sockaddr_storage *addr,
                socklen_t *addr_len) {
  memset(addr, 0, sizeof *addr);
  if (host == NULL || strcmp(host, "localhost") == 0) host = "127.0.0.1";
  struct sockaddr_in *in4 = (struct sockaddr_in *)addr;
  if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port);
    *addr_len = sizeof *in4;
    return 0;
  }
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
  if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    *addr_len = sizeof *in6;
    return 0;
  }
  return -EINVAL;
}

int rt_tcp_nodelay(int fd) { return set_int_opt(fd, IPPROTO_TCP, TCP_NODELAY, 1); }

int rt_tcp_socket(int family) {
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int rc = set_int_opt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  return fd;
}

int rt_tcp_listen(const char *host, uint16_t port, int backlog, bool reuseport) {
  struct sockaddr_storage addr;
  socklen_t addr_len;
  int rc = rt_tcp_addr(host, port, &addr, &addr_len);
  if (rc < 0) return rc;
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  rc = set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
  if (rc == 0 && reuseport) rc = set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
  if (rc == 0 && bind(fd, (struct sockaddr *)&addr, addr_len) < 0) rc = -errno;
  if (rc == 0 && listen(fd, backlog) < 0) rc = -errno;
  if (rc < 0) {
    close(fd);
    return rc;
  }
  return fd;
}

int rt_tcp_local_port(int fd) {
  struct sockaddr_storage addr;
  socklen_t len = sizeof addr;
  if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0) return -errno;
  if (addr.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
  return -EAFNOSUPPORT;
}

/* Fills the common fields and submits. */
static int start(rt_loop_t *loop, rt_op_t *op, uint8_t opcode, int fd,
                 rt_op_cb cb, void *ctx) {
  if (op->in_flight) return -EBUSY;
  op->cb = cb;
  op->ctx = ctx;
  op->opcode = opcode;
  op->fd = fd;
  op->done = 0;
  rt__submit(loop, op);
  return 0;
}

int rt_accept_multishot(rt_loop_t *loop, rt_op_t *op, int listen_fd,
                        rt_op_cb cb, void *ctx) {
  return start(loop, op, RT_OPC_ACCEPT_MULTI, listen_fd, cb, ctx);
}

int rt_recv_multishot(rt_loop_t *loop, rt_op_t *op, int fd, rt_op_cb cb,
                      void *ctx) {
  return start(loop, op, RT_OPC_RECV_MULTI, fd, cb, ctx);
}

int rt_recv(rt_loop_t *loop, rt_op_t *op, int fd, void *buf, uint32_t len,
            rt_op_cb cb, void *ctx) {
  if (op->in_flight) return -EBUSY;
  op->buf = buf;
  op->len = len;
  return start(loop, op, RT_OPC_RECV, fd, cb, ctx);
}

int rt_send(rt_loop_t *loop, rt_op_t *op, int fd, const void *buf, uint32_t len,
            rt_op_cb cb, void *ctx) {
  if (op->in_flight) return -EBUSY;
  op->buf = (void *)buf;
  op->len = len;
  return start(loop, op, RT_OPC_SEND, fd, cb, ctx);
}

int rt_connect(rt_loop_t *loop, rt_op_t *op, int fd, const struct sockaddr *addr,
               socklen_t addr_len, rt_op_cb cb, void *ctx) {
  if (op->in_flight) return -EBUSY;
  op->addr = addr;
  op->arg = addr_len;
  return start(loop, op, RT_OPC_CONNECT, fd, cb, ctx);
}

int rt_close(rt_loop_t *loop, rt_op_t *op, int fd, rt_op_cb cb, void *ctx) {
  return start(loop, op, RT_OPC_CLOSE, fd, cb, ctx);
}

int rt_poll(rt_loop_t *loop, rt_op_t *op, int fd, uint32_t events, rt_op_cb cb,
            void *ctx) {
  if (op->in_flight) return -EBUSY;
  op->arg = events;
  return start(loop, op, RT_OPC_POLL, fd, cb, ctx);
}

int rt_read(rt_loop_t *loop, rt_op_t *op, int fd, void *buf, uint32_t len,
            rt_op_cb cb, void *ctx) {
  if (op->in_flight) return -EBUSY;
  op->buf = buf;
  op->len = len;
  return start(loop, op, RT_OPC_READ, fd, cb, ctx);
}

int rt_write(rt_loop_t *loop, rt_op_t *op, int fd, const void *buf,
             uint32_t len, rt_op_cb cb, void *ctx) {
  if (op->in_flight) return -EBUSY;
  op->buf = (void *)buf;
  op->len = len;
  return start(loop, op, RT_OPC_WRITE, fd, cb, ctx);
}

int rt_cancel(rt_loop_t *loop, rt_op_t *op, rt_op_t *target, rt_op_cb cb,
              void *ctx) {
  if (op->in_flight) return -EBUSY;
  op->buf = target;
  return start(loop, op, RT_OPC_CANCEL, -1, cb, ctx);
}
