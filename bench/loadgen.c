/*
 * Load generator for the benchmarks: a vfio-user client in C that negotiates
 * VERSION, then sends 4-byte REGION_READs with `window` of them outstanding,
 * or (--echo) the same 32-byte messages to an echo server, the floor.
 *
 *   loadgen --socket PATH [--echo] [--region N] [--offset N] [--window N]
 *           (--count N | --seconds S) [--latency | --rate N]
 *
 * Closed loop by default: a new request goes as soon as a reply comes. With
 * --rate, open loop: requests leave on a fixed schedule (N per second, at
 * most `window` outstanding) and each one's latency counts from when it was
 * due, so a stalled server delays every request due during the stall.
 *
 * Prints one JSON line: requests, elapsed ns, this process's CPU µs, and with
 * --latency (window 1) or --rate the p50/p99/max latency in ns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { HEADER = 16, VERSION = 1, REGION_READ = 9, REPLY = 1, ERROR = 0x10 };
enum { REQUEST = HEADER + 16 };

static void die(const char *what) {
  fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v); put16(p + 2, v >> 16); }
static uint32_t get32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static void write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) die("write");
    p += w;
    n -= (size_t)w;
  }
}

static void read_all(int fd, uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) errno = ECONNRESET;
    if (r <= 0) die("read");
    p += r;
    n -= (size_t)r;
  }
}

static void header(uint8_t *p, uint16_t id, uint16_t command, uint32_t size) {
  put16(p, id);
  put16(p + 2, command);
  put32(p + 4, size);
  put32(p + 8, 0);
  put32(p + 12, 0);
}

/* VERSION 0.2 with the capabilities QEMU proposes; the reply must not be an error. */
static void negotiate(int fd) {
  static const char json[] = "{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,"
                             "\"pgsizes\":4096,\"max_dma_maps\":65535}}";
  uint8_t msg[HEADER + 4 + sizeof json];
  header(msg, 0, VERSION, sizeof msg);
  put16(msg + HEADER, 0);
  put16(msg + HEADER + 2, 2);
  memcpy(msg + HEADER + 4, json, sizeof json);
  write_all(fd, msg, sizeof msg);
  uint8_t reply[HEADER];
  read_all(fd, reply, HEADER);
  uint32_t size = get32(reply + 4);
  if (get32(reply + 8) & ERROR || size < HEADER + 4 || size > 65536) {
    fprintf(stderr, "loadgen: VERSION refused (errno %u)\n", get32(reply + 12));
    exit(1);
  }
  uint8_t rest[65536];
  read_all(fd, rest, size - HEADER);
}

static uint16_t get16(const uint8_t *p) { return p[0] | p[1] << 8; }

/* Open loop: requests due every 1/rate s, latency from when each was due. */
static uint64_t run_rate(int fd, uint8_t *tx, uint8_t *rx, size_t rx_size, size_t reply_size, unsigned window, double rate,
                         uint64_t limit, uint64_t deadline, uint64_t *lat, uint64_t cap) {
  static uint64_t due[65536];
  uint64_t interval = (uint64_t)(1e9 / rate), next = now_ns(), sent = 0, done = 0;
  uint16_t id = 1;
  size_t have = 0;
  for (;;) {
    uint64_t t = now_ns();
    while (next <= t && sent - done < window && sent < limit && next < deadline) {
      put16(tx, id);
      due[id++] = next;
      write_all(fd, tx, REQUEST);
      sent++;
      next += interval;
    }
    int more = sent < limit && next < deadline;
    if (!more && done == sent) return done;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    struct timespec wait = {0, 0}, *timeout = NULL;
    if (more && sent - done < window) {
      uint64_t ns = next > t ? next - t : 0;
      wait.tv_sec = (time_t)(ns / 1000000000u);
      wait.tv_nsec = (long)(ns % 1000000000u);
      timeout = &wait;
    }
    if (ppoll(&p, 1, timeout, NULL) < 0 && errno != EINTR) die("ppoll");
    if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
    ssize_t n = read(fd, rx + have, rx_size - have);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = ECONNRESET;
    if (n <= 0) die("read");
    have += (size_t)n;
    size_t at = 0;
    t = now_ns();
    for (; have - at >= reply_size; at += reply_size) {
      if (done < cap) lat[done] = t - due[get16(rx + at)];
      done++;
    }
    memmove(rx, rx + at, have - at);
    have -= at;
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  const char *path = NULL;
  int echo = 0, latency = 0;
  double rate = 0;
  unsigned region = 2, offset = 0, window = 1;
  uint64_t count = 0;
  double seconds = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--echo")) echo = 1;
    else if (!strcmp(a, "--latency")) latency = 1;
    else if (v && !strcmp(a, "--socket")) path = argv[++i];
    else if (v && !strcmp(a, "--region")) region = (unsigned)strtoul(argv[++i], NULL, 0);
    else if (v && !strcmp(a, "--offset")) offset = (unsigned)strtoul(argv[++i], NULL, 0);
    else if (v && !strcmp(a, "--window")) window = (unsigned)strtoul(argv[++i], NULL, 0);
    else if (v && !strcmp(a, "--count")) count = strtoull(argv[++i], NULL, 0);
    else if (v && !strcmp(a, "--seconds")) seconds = strtod(argv[++i], NULL);
    else if (v && !strcmp(a, "--rate")) rate = strtod(argv[++i], NULL);
    else {
      fprintf(stderr, "loadgen: unknown argument %s\n", a);
      return 2;
    }
  }
  if (!path || window < 1 || window > 1024 || (!count && seconds <= 0) || (latency && window != 1) || rate < 0) {
    fprintf(stderr, "usage: loadgen --socket PATH [--echo] [--region N] [--offset N] [--window 1..1024] (--count N | --seconds S) [--latency (window 1) | --rate N]\n");
    return 2;
  }

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (fd < 0) die("socket");
  if (strlen(path) >= sizeof sa.sun_path) { errno = ENAMETOOLONG; die(path); }
  strcpy(sa.sun_path, path);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die(path);
  if (!echo) negotiate(fd);

  /* Every request is the same 32 bytes but for its ID. */
  const size_t reply_size = echo ? REQUEST : REQUEST + 4;
  uint8_t *tx = malloc(REQUEST * window);
  uint8_t *rx = malloc(reply_size * window * 2 + 65536);
  if (rate > 0) latency = 1;
  uint64_t cap = latency ? (count ? count : 1u << 24) : 0;
  uint64_t *lat = latency ? malloc(sizeof *lat * cap) : NULL;
  if (!tx || !rx || (latency && !lat)) die("malloc");
  uint16_t next_id = 1;
  for (unsigned i = 0; i < window; i++) {
    uint8_t *p = tx + i * REQUEST;
    header(p, 0, REGION_READ, REQUEST);
    put32(p + HEADER, offset);
    put32(p + HEADER + 4, 0);
    put32(p + HEADER + 8, region);
    put32(p + HEADER + 12, 4);
  }
  for (unsigned i = 0; i < window; i++) put16(tx + i * REQUEST, next_id++);

  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  uint64_t start = now_ns(), deadline = seconds > 0 ? start + (uint64_t)(seconds * 1e9) : UINT64_MAX;
  uint64_t sent = 0, done = 0, sent_at = start;
  uint64_t limit = count ? count : UINT64_MAX;
  if (rate > 0) {
    done = run_rate(fd, tx, rx, reply_size * window * 2 + 65536, reply_size, window, rate, limit, deadline, lat, cap);
    goto report;
  }
  unsigned first = (uint64_t)window < limit ? window : (unsigned)limit;
  write_all(fd, tx, REQUEST * first);
  sent = first;
  size_t have = 0;
  for (;;) {
    ssize_t n = read(fd, rx + have, reply_size * window * 2 + 65536 - have);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = ECONNRESET;
    if (n <= 0) die("read");
    have += (size_t)n;
    size_t at = 0;
    unsigned replies = 0;
    while (have - at >= reply_size) {
      if (!echo && (get32(rx + at + 4) != reply_size || get32(rx + at + 8) & ERROR)) {
        fprintf(stderr, "loadgen: unexpected reply (size %u, flags 0x%x, errno %u)\n", get32(rx + at + 4), get32(rx + at + 8), get32(rx + at + 12));
        return 1;
      }
      at += reply_size;
      replies++;
    }
    memmove(rx, rx + at, have - at);
    have -= at;
    uint64_t t = now_ns();
    if (latency && replies > 0 && done < cap) lat[done] = t - sent_at;
    done += replies;
    if (done >= limit || (t >= deadline && done == sent)) break;
    uint64_t more = replies;
    if (t >= deadline) more = 0;
    if (sent + more > limit) more = limit - sent;
    if (more > 0) {
      for (unsigned i = 0; i < more; i++) put16(tx + i * REQUEST, next_id++);
      sent_at = t;
      write_all(fd, tx, REQUEST * more);
      sent += more;
    }
  }
report:;
  uint64_t elapsed = now_ns() - start;
  getrusage(RUSAGE_SELF, &r1);
  double cpu = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) * 1e6 + (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) +
               (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1e6 + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
  printf("{\"requests\":%llu,\"ns\":%llu,\"cpu_us\":%.0f", (unsigned long long)done, (unsigned long long)elapsed, cpu);
  if (latency) {
    uint64_t k = done < cap ? done : cap;
    qsort(lat, k, sizeof *lat, cmp_u64);
    printf(",\"p50_ns\":%llu,\"p99_ns\":%llu,\"max_ns\":%llu", (unsigned long long)lat[k / 2], (unsigned long long)lat[k * 99 / 100],
           (unsigned long long)lat[k - 1]);
  }
  printf("}\n");
  close(fd);
  return 0;
}
