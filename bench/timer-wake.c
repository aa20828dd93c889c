/*
 * The floor for an idle watch's CPU: a process that only wakes every
 * N microseconds (timerfd + epoll, as the addon's poller does when backed
 * off) for S seconds, then prints how many times it woke and the CPU it used.
 *
 *   timer-wake N S  ->  {"wakes": W, "cpu_ns": C}
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static uint64_t ns(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: timer-wake MICROSECONDS SECONDS\n");
    return 2;
  }
  uint64_t delay = strtoull(argv[1], NULL, 10) * 1000u;
  uint64_t end = ns(CLOCK_MONOTONIC) + strtoull(argv[2], NULL, 10) * 1000000000u;
  int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN};
  if (timer < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, timer, &ev) < 0) {
    perror("timer-wake");
    return 1;
  }
  uint64_t wakes = 0;
  for (uint64_t now = ns(CLOCK_MONOTONIC); now < end; now = ns(CLOCK_MONOTONIC)) {
    uint64_t at = now + delay;
    struct itimerspec when = {.it_value = {.tv_sec = (time_t)(at / 1000000000u), .tv_nsec = (long)(at % 1000000000u)}};
    uint64_t expirations;
    if (timerfd_settime(timer, TFD_TIMER_ABSTIME, &when, NULL) < 0 || epoll_wait(ep, &ev, 1, -1) < 0 ||
        read(timer, &expirations, sizeof expirations) < 0) {
      perror("timer-wake");
      return 1;
    }
    wakes++;
  }
  printf("{\"wakes\": %llu, \"cpu_ns\": %llu}\n", (unsigned long long)wakes, (unsigned long long)ns(CLOCK_PROCESS_CPUTIME_ID));
  return 0;
}
