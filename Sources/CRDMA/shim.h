#ifndef HKV_CRDMA_SHIM_H
#define HKV_CRDMA_SHIM_H
// rsockets: a socket API over RDMA connections (librdmacm), and the verbs device list used
// to tell whether this host has an RDMA device at all.
#include <rdma/rsocket.h>
#include <infiniband/verbs.h>
#include <poll.h>
#endif
