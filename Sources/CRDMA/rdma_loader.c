// Run-time binding of librdmacm and libibverbs: see include/hkv_rdma.h.
#include "hkv_rdma.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef int (*socket_fn)(int, int, int);
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*int_int_fn)(int, int);
typedef int (*close_fn)(int);
typedef long (*recv_fn)(int, void *, size_t, int);
typedef long (*send_fn)(int, const void *, size_t, int);
typedef int (*setsockopt_fn)(int, int, int, const void *, socklen_t);
typedef int (*poll_fn)(struct pollfd *, nfds_t, int);
typedef hkv_ibv_device **(*device_list_fn)(int *);
typedef void (*free_list_fn)(hkv_ibv_device **);
typedef const char *(*device_name_fn)(hkv_ibv_device *);

static struct {
  socket_fn rsocket;
  bind_fn rbind;
  listen_fn rlisten;
  accept_fn raccept;
  bind_fn rconnect;
  int_int_fn rshutdown;
  close_fn rclose;
  recv_fn rrecv;
  send_fn rsend;
  setsockopt_fn rsetsockopt;
  accept_fn rgetsockname;
  poll_fn rpoll;
  device_list_fn ibv_get_device_list;
  free_list_fn ibv_free_device_list;
  device_name_fn ibv_get_device_name;
} table;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int load_status = -1;
static char load_reason[512];

// Opens the first of `names` that loads; otherwise records why the first (the soname, the
// one a runtime package installs) failed: a missing dependency or a wrong architecture shows
// there, not in the development symlink tried after it.
static void *open_first(const char *const *names, size_t count) {
  char first_error[256] = "not found";
  for (size_t i = 0; i < count; i++) {
    void *handle = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (handle != NULL) return handle;
    const char *why = dlerror();
    if (i == 0 && why != NULL) snprintf(first_error, sizeof first_error, "%s", why);
  }
  snprintf(load_reason, sizeof load_reason, "%s cannot be loaded (%s); install %s", names[0],
           first_error, strstr(names[0], "rdmacm") != NULL ? "librdmacm1" : "libibverbs1");
  return NULL;
}

#define RESOLVE(handle, field, symbol)                                                    \
  do {                                                                                    \
    *(void **)(&table.field) = dlsym(handle, symbol);                                     \
    if (table.field == NULL) {                                                            \
      snprintf(load_reason, sizeof load_reason, "symbol %s missing from the RDMA libraries", \
               symbol);                                                                   \
      return;                                                                             \
    }                                                                                     \
  } while (0)

static void load_libraries(void) {
  static const char *const verbs_names[] = {"libibverbs.so.1", "libibverbs.so"};
  static const char *const rdmacm_names[] = {"librdmacm.so.1", "librdmacm.so"};
  void *verbs = open_first(verbs_names, 2);
  if (verbs == NULL) return;
  void *rdmacm = open_first(rdmacm_names, 2);
  if (rdmacm == NULL) return;
  RESOLVE(rdmacm, rsocket, "rsocket");
  RESOLVE(rdmacm, rbind, "rbind");
  RESOLVE(rdmacm, rlisten, "rlisten");
  RESOLVE(rdmacm, raccept, "raccept");
  RESOLVE(rdmacm, rconnect, "rconnect");
  RESOLVE(rdmacm, rshutdown, "rshutdown");
  RESOLVE(rdmacm, rclose, "rclose");
  RESOLVE(rdmacm, rrecv, "rrecv");
  RESOLVE(rdmacm, rsend, "rsend");
  RESOLVE(rdmacm, rsetsockopt, "rsetsockopt");
  RESOLVE(rdmacm, rgetsockname, "rgetsockname");
  RESOLVE(rdmacm, rpoll, "rpoll");
  RESOLVE(verbs, ibv_get_device_list, "ibv_get_device_list");
  RESOLVE(verbs, ibv_free_device_list, "ibv_free_device_list");
  RESOLVE(verbs, ibv_get_device_name, "ibv_get_device_name");
  load_status = 0;
  load_reason[0] = '\0';
}

int hkv_rdma_load(char *reason, size_t capacity) {
  pthread_once(&load_once, load_libraries);
  if (reason != NULL && capacity > 0) snprintf(reason, capacity, "%s", load_reason);
  return load_status;
}

// Every wrapper fails with ENOSYS until the libraries are loaded, as a kernel without the
// call would.
#define REQUIRE_LOADED(failure)                         \
  do {                                                  \
    if (hkv_rdma_load(NULL, 0) != 0) {                  \
      errno = ENOSYS;                                   \
      return failure;                                   \
    }                                                   \
  } while (0)

int hkv_rsocket(int domain, int type, int protocol) {
  REQUIRE_LOADED(-1);
  return table.rsocket(domain, type, protocol);
}
int hkv_rbind(int socket, const struct sockaddr *addr, socklen_t addrlen) {
  REQUIRE_LOADED(-1);
  return table.rbind(socket, addr, addrlen);
}
int hkv_rlisten(int socket, int backlog) {
  REQUIRE_LOADED(-1);
  return table.rlisten(socket, backlog);
}
int hkv_raccept(int socket, struct sockaddr *addr, socklen_t *addrlen) {
  REQUIRE_LOADED(-1);
  return table.raccept(socket, addr, addrlen);
}
int hkv_rconnect(int socket, const struct sockaddr *addr, socklen_t addrlen) {
  REQUIRE_LOADED(-1);
  return table.rconnect(socket, addr, addrlen);
}
int hkv_rshutdown(int socket, int how) {
  REQUIRE_LOADED(-1);
  return table.rshutdown(socket, how);
}
int hkv_rclose(int socket) {
  REQUIRE_LOADED(-1);
  return table.rclose(socket);
}
long hkv_rrecv(int socket, void *buf, size_t len, int flags) {
  REQUIRE_LOADED(-1);
  return table.rrecv(socket, buf, len, flags);
}
long hkv_rsend(int socket, const void *buf, size_t len, int flags) {
  REQUIRE_LOADED(-1);
  return table.rsend(socket, buf, len, flags);
}
int hkv_rsetsockopt(int socket, int level, int optname, const void *optval, socklen_t optlen) {
  REQUIRE_LOADED(-1);
  return table.rsetsockopt(socket, level, optname, optval, optlen);
}
int hkv_rgetsockname(int socket, struct sockaddr *addr, socklen_t *addrlen) {
  REQUIRE_LOADED(-1);
  return table.rgetsockname(socket, addr, addrlen);
}
int hkv_rpoll(struct pollfd *fds, nfds_t nfds, int timeout) {
  REQUIRE_LOADED(-1);
  return table.rpoll(fds, nfds, timeout);
}
hkv_ibv_device **hkv_ibv_get_device_list(int *num_devices) {
  REQUIRE_LOADED(NULL);
  return table.ibv_get_device_list(num_devices);
}
void hkv_ibv_free_device_list(hkv_ibv_device **list) {
  if (hkv_rdma_load(NULL, 0) == 0) table.ibv_free_device_list(list);
}
const char *hkv_ibv_get_device_name(hkv_ibv_device *device) {
  REQUIRE_LOADED(NULL);
  return table.ibv_get_device_name(device);
}
