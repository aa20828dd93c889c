/*
 * The floor: a C server that writes back whatever it reads, one client at a
 * time, with blocking reads and writes. Usage: echo SOCKET
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: echo SOCKET\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(argv[1]) >= sizeof sa.sun_path) return 2;
  strcpy(sa.sun_path, argv[1]);
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 4) < 0) {
    perror("echo: listen");
    return 1;
  }
  static char buf[256 * 1024];
  for (;;) {
    int fd = accept(l, NULL, NULL);
    if (fd < 0) continue;
    for (;;) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      for (ssize_t at = 0; at < n;) {
        ssize_t w = write(fd, buf + at, (size_t)(n - at));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        at += w;
      }
    }
    close(fd);
  }
}
