// What one thread hand-off costs on this machine: the floor under a decode step's per-layer
// overhead, which crosses several (the worker's task, the client's event loop, the memory
// node's event loop and back). Two threads pass a token back and forth through an eventfd
// (how an NIO event loop is woken) and through a loopback TCP socket with TCP_NODELAY (how a
// request reaches a memory node and its answer comes back), first free to run on any CPU,
// then both pinned to CPU 0; the last column is the same pair on any CPU while a spinning
// thread of the lowest priority (SCHED_IDLE) keeps every CPU from idling.
//
//   clang -O2 -pthread Benchmarks/c/handoff_bench.c -o /tmp/handoff_bench && /tmp/handoff_bench
//
// Each figure is a round trip (two hand-offs), median of 5 runs of 20,000.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { TRIPS = 20000, RUNS = 5 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void check(int ok, const char *what) {
  if (!ok) {
    perror(what);
    exit(1);
  }
}

static void pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  check(pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0, "pthread_setaffinity_np");
}

static void unpin(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c = 0; c < CPU_SETSIZE; c++) CPU_SET(c, &set);
  sched_setaffinity(0, sizeof set, &set);
}

typedef struct {
  int in, out, cpu, tcp;
} peer;

static void read_full(int fd, void *buf, size_t n) {
  for (size_t got = 0; got < n;) {
    ssize_t k = read(fd, (char *)buf + got, n - got);
    check(k > 0, "read");
    got += (size_t)k;
  }
}

static void *echo(void *arg) {
  peer *p = arg;
  pin(p->cpu);
  char buf[64];
  size_t n = p->tcp ? sizeof buf : 8;
  for (int i = 0; i < TRIPS; i++) {
    read_full(p->in, buf, n);
    check(write(p->out, buf, n) == (ssize_t)n, "write");
  }
  return NULL;
}

// One run's mean round trip in microseconds; cpu -1 leaves both threads free.
static double run_eventfd(int cpu) {
  int a = eventfd(0, 0), b = eventfd(0, 0);
  check(a >= 0 && b >= 0, "eventfd");
  peer p = {a, b, cpu, 0};
  pthread_t t;
  pthread_create(&t, NULL, echo, &p);
  pin(cpu);
  uint64_t v = 1;
  double start = now();
  for (int i = 0; i < TRIPS; i++) {
    check(write(a, &v, 8) == 8, "write");
    read_full(b, &v, 8);
  }
  double took = now() - start;
  pthread_join(t, NULL);
  unpin();
  close(a);
  close(b);
  return took / TRIPS * 1e6;
}

static double run_tcp(int cpu) {
  int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  check(bind(listener, (struct sockaddr *)&addr, sizeof addr) == 0, "bind");
  check(listen(listener, 1) == 0, "listen");
  check(getsockname(listener, (struct sockaddr *)&addr, &len) == 0, "getsockname");
  int client = socket(AF_INET, SOCK_STREAM, 0);
  check(connect(client, (struct sockaddr *)&addr, sizeof addr) == 0, "connect");
  int server = accept(listener, NULL, NULL);
  check(server >= 0, "accept");
  setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  peer p = {server, server, cpu, 1};
  pthread_t t;
  pthread_create(&t, NULL, echo, &p);
  pin(cpu);
  char buf[64] = {0};
  double start = now();
  for (int i = 0; i < TRIPS; i++) {
    check(write(client, buf, sizeof buf) == sizeof buf, "write");
    read_full(client, buf, sizeof buf);
  }
  double took = now() - start;
  pthread_join(t, NULL);
  unpin();
  close(client);
  close(server);
  close(listener);
  return took / TRIPS * 1e6;
}

static volatile int spinning = 1;

static void *spin(void *arg) {
  pin((int)(intptr_t)arg);
  struct sched_param none = {0};
  pthread_setschedparam(pthread_self(), SCHED_IDLE, &none);
  while (spinning) {
  }
  return NULL;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double (*run)(int), int cpu) {
  double t[RUNS];
  for (int r = 0; r < RUNS; r++) t[r] = run(cpu);
  qsort(t, RUNS, sizeof t[0], by_value);
  return t[RUNS / 2];
}

int main(void) {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  double free_efd = median(run_eventfd, -1), pinned_efd = median(run_eventfd, 0);
  double free_tcp = median(run_tcp, -1), pinned_tcp = median(run_tcp, 0);
  pthread_t spinners[64];
  int n = cpus < 64 ? (int)cpus : 64;
  for (int c = 0; c < n; c++) pthread_create(&spinners[c], NULL, spin, (void *)(intptr_t)c);
  double busy_efd = median(run_eventfd, -1), busy_tcp = median(run_tcp, -1);
  spinning = 0;
  for (int c = 0; c < n; c++) pthread_join(spinners[c], NULL);
  printf("%ld CPUs; round trip (two hand-offs), us, median of %d x %d\n", cpus, RUNS, TRIPS);
  printf("                  any CPU   one CPU   any CPU, none idle\n");
  printf("eventfd          %8.1f  %8.1f  %8.1f\n", free_efd, pinned_efd, busy_efd);
  printf("loopback TCP     %8.1f  %8.1f  %8.1f\n", free_tcp, pinned_tcp, busy_tcp);
  return 0;
}
