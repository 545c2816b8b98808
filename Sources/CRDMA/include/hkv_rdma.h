#ifndef HKV_RDMA_H
#define HKV_RDMA_H
// The slice of librdmacm (rsockets) and libibverbs (device list) that the RDMA data-plane
// transport uses, resolved at run time with dlopen. The build needs no RDMA headers or
// libraries; where the shared libraries are missing every call fails with ENOSYS and
// hkv_rdma_load says why, so the transport falls back to TCP with that message.

#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/// An RDMA device as libibverbs lists it; opaque here (only its name is read).
typedef struct hkv_ibv_device hkv_ibv_device;

/// Loads librdmacm and libibverbs once (thread-safe). Returns 0 when every symbol resolved;
/// otherwise -1, and `reason` (when non-NULL) receives a sentence naming what was missing.
int hkv_rdma_load(char *reason, size_t capacity);

// rsockets: the BSD socket calls carried by RDMA reliable connections (librdmacm).
int hkv_rsocket(int domain, int type, int protocol);
int hkv_rbind(int socket, const struct sockaddr *addr, socklen_t addrlen);
int hkv_rlisten(int socket, int backlog);
int hkv_raccept(int socket, struct sockaddr *addr, socklen_t *addrlen);
int hkv_rconnect(int socket, const struct sockaddr *addr, socklen_t addrlen);
int hkv_rshutdown(int socket, int how);
int hkv_rclose(int socket);
long hkv_rrecv(int socket, void *buf, size_t len, int flags);
long hkv_rsend(int socket, const void *buf, size_t len, int flags);
int hkv_rsetsockopt(int socket, int level, int optname, const void *optval, socklen_t optlen);
int hkv_rgetsockname(int socket, struct sockaddr *addr, socklen_t *addrlen);
int hkv_rpoll(struct pollfd *fds, nfds_t nfds, int timeout);

// libibverbs' device list, used to tell whether this host has an RDMA device at all.
hkv_ibv_device **hkv_ibv_get_device_list(int *num_devices);
void hkv_ibv_free_device_list(hkv_ibv_device **list);
const char *hkv_ibv_get_device_name(hkv_ibv_device *device);

#ifdef __cplusplus
}
#endif
#endif
