/*
 * muser native addon: the few Linux system calls the vfio-user transport
 * needs and Node does not expose (SCM_RIGHTS, memfd, eventfd, mmap,
 * preadv2/pwritev2 with RWF_NOWAIT), plus readiness polling of raw
 * descriptors on the Node event loop (uv_poll), and in the same poller,
 * watches of words in mapped memory that a client writes without a message
 * (doorbells).
 *
 * Conventions: every function is synchronous and runs on the JS thread.
 * Hot-path calls (accept, recvmsg, sendmsg, eventfdRead/Write, preadv,
 * pwritev) report failure as a negative errno return value; the rest throw
 * an Error with .code (errno name), .errno (positive number), .syscall and
 * maybe .path.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8

#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* The kernel's per-message limit on passed descriptors (include/net/scm.h,
 * not exported to user space). */
#define MUSER_SCM_MAX_FD 253

/* Largest integer a JS number represents exactly. */
#define MAX_SAFE_INTEGER 9007199254740991.0

/* Control buffer able to hold SCM_MAX_FD descriptors, plus room for an
 * SCM_CREDENTIALS message in case someone enables SO_PASSCRED on the socket
 * (otherwise that could truncate the descriptors). The union aligns it for
 * struct cmsghdr. */
union control_buffer {
  struct cmsghdr align;
  char buf[CMSG_SPACE(sizeof(int) * MUSER_SCM_MAX_FD) +
           CMSG_SPACE(sizeof(struct ucred))];
};

/* ---------------------------------------------------------------- errors */

#define ERRNO_LIST(X)                                                       \
  X(EPERM) X(ENOENT) X(ESRCH) X(EINTR) X(EIO) X(ENXIO) X(E2BIG) X(ENOEXEC) \
  X(EBADF) X(ECHILD) X(EAGAIN) X(ENOMEM) X(EACCES) X(EFAULT) X(EBUSY)      \
  X(EEXIST) X(EXDEV) X(ENODEV) X(ENOTDIR) X(EISDIR) X(EINVAL) X(ENFILE)    \
  X(EMFILE) X(ENOTTY) X(ETXTBSY) X(EFBIG) X(ENOSPC) X(ESPIPE) X(EROFS)     \
  X(EMLINK) X(EPIPE) X(EDOM) X(ERANGE) X(EDEADLK) X(ENAMETOOLONG)          \
  X(ENOLCK) X(ENOSYS) X(ENOTEMPTY) X(ELOOP) X(ENOMSG) X(EIDRM) X(ENODATA)  \
  X(ETIME) X(ENOLINK) X(EPROTO) X(EBADMSG) X(EOVERFLOW) X(EILSEQ)          \
  X(ENOTSOCK) X(EDESTADDRREQ) X(EMSGSIZE) X(EPROTOTYPE) X(ENOPROTOOPT)     \
  X(EPROTONOSUPPORT) X(ESOCKTNOSUPPORT) X(EOPNOTSUPP) X(EPFNOSUPPORT)      \
  X(EAFNOSUPPORT) X(EADDRINUSE) X(EADDRNOTAVAIL) X(ENETDOWN)               \
  X(ENETUNREACH) X(ENETRESET) X(ECONNABORTED) X(ECONNRESET) X(ENOBUFS)     \
  X(EISCONN) X(ENOTCONN) X(ESHUTDOWN) X(ETOOMANYREFS) X(ETIMEDOUT)         \
  X(ECONNREFUSED) X(EHOSTDOWN) X(EHOSTUNREACH) X(EALREADY) X(EINPROGRESS)  \
  X(ESTALE) X(EDQUOT) X(ECANCELED) X(EOWNERDEAD) X(ENOTRECOVERABLE)        \
  /* Aliases last, so that errno_name() finds the canonical name first. */ \
  X(EWOULDBLOCK) X(ENOTSUP) X(EDEADLOCK)

static const struct {
  const char *name;
  int value;
} errno_table[] = {
#define ERRNO_ENTRY(e) {#e, e},
    ERRNO_LIST(ERRNO_ENTRY)
#undef ERRNO_ENTRY
};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static const char *errno_name(int err) {
  for (size_t i = 0; i < COUNT_OF(errno_table); i++)
    if (errno_table[i].value == err) return errno_table[i].name;
  return "EUNKNOWN";
}

static void set_string(napi_env env, napi_value obj, const char *key,
                       const char *value) {
  napi_value v;
  if (napi_create_string_utf8(env, value, NAPI_AUTO_LENGTH, &v) == napi_ok)
    napi_set_named_property(env, obj, key, v);
}

/* Throw a system error in the style of Node's fs errors:
 * "ENOENT: No such file or directory, connect '/tmp/x.sock'". */
static void throw_errno(napi_env env, int err, const char *syscall,
                        const char *path) {
  char desc[128];
  char msg[512];
  const char *code = errno_name(err);
  /* GNU strerror_r: thread safe (addons may be loaded in workers). */
  const char *text = strerror_r(err, desc, sizeof desc);
  if (path != NULL)
    snprintf(msg, sizeof msg, "%s: %s, %s '%s'", code, text, syscall, path);
  else
    snprintf(msg, sizeof msg, "%s: %s, %s", code, text, syscall);

  napi_value js_code, js_msg, error, js_errno;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &js_code) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &js_msg) != napi_ok ||
      napi_create_error(env, js_code, js_msg, &error) != napi_ok)
    return;
  if (napi_create_int32(env, err, &js_errno) == napi_ok)
    napi_set_named_property(env, error, "errno", js_errno);
  set_string(env, error, "syscall", syscall);
  if (path != NULL) set_string(env, error, "path", path);
  napi_throw(env, error);
}

/* TypeError/RangeError with a Node-style code. */
static void throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
}
static void throw_range(napi_env env, const char *msg) {
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
}

/* A Node-API call failed for a reason other than bad input we checked
 * ourselves. Keep a pending JS exception if there is one (it is the real
 * cause), otherwise throw a generic error describing the failure. */
static void throw_napi_failure(napi_env env, const char *what) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  const napi_extended_error_info *info = NULL;
  char msg[256];
  napi_get_last_error_info(env, &info);
  snprintf(msg, sizeof msg, "muser: %s failed: %s", what,
           info != NULL && info->error_message != NULL ? info->error_message
                                                       : "unknown error");
  napi_throw_error(env, NULL, msg);
}

#define NAPI_OR_THROW(env, call)                                            \
  do {                                                                      \
    if ((call) != napi_ok) {                                                \
      throw_napi_failure((env), #call);                                     \
      return NULL;                                                          \
    }                                                                       \
  } while (0)

/* Fetch up to N arguments (missing ones read as undefined) and `this`. */
#define GET_ARGS(N)                                                         \
  size_t argc = (N);                                                        \
  napi_value argv[N];                                                       \
  napi_value this_arg;                                                      \
  NAPI_OR_THROW(env, napi_get_cb_info(env, info, &argc, argv, &this_arg, NULL))

/* ------------------------------------------------------ argument helpers */

static bool arg_int32(napi_env env, napi_value v, const char *name,
                      int32_t *out) {
  if (napi_get_value_int32(env, v, out) == napi_ok) return true;
  char msg[96];
  snprintf(msg, sizeof msg, "%s must be a number", name);
  throw_type(env, msg);
  return false;
}

/* A non-negative integer that may exceed 32 bits (sizes, file offsets). */
static bool arg_size(napi_env env, napi_value v, const char *name,
                     uint64_t *out) {
  double d;
  char msg[128];
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    snprintf(msg, sizeof msg, "%s must be a number", name);
    throw_type(env, msg);
    return false;
  }
  /* The comparisons are false for NaN, so NaN is rejected too. */
  if (!(d >= 0 && d <= MAX_SAFE_INTEGER) || d != (double)(uint64_t)d) {
    snprintf(msg, sizeof msg,
             "%s must be a non-negative safe integer, got %g", name, d);
    throw_range(env, msg);
    return false;
  }
  *out = (uint64_t)d;
  return true;
}

/* Data pointer and length of a Uint8Array (Buffers are Uint8Arrays). */
static bool arg_bytes(napi_env env, napi_value v, uint8_t **data,
                      size_t *length) {
  napi_typedarray_type type;
  void *p;
  if (napi_get_typedarray_info(env, v, &type, length, &p, NULL, NULL) !=
          napi_ok ||
      type != napi_uint8_array) {
    throw_type(env, "buf must be a Uint8Array");
    return false;
  }
  *data = p;
  return true;
}

/* buf[offset .. offset+length) must lie inside the array. offset and
 * length are read as int64 (cheap; fractions are truncated). */
static bool arg_range(napi_env env, napi_value v_off, napi_value v_len,
                      size_t buf_len, size_t *off, size_t *len) {
  int64_t o, l;
  if (napi_get_value_int64(env, v_off, &o) != napi_ok ||
      napi_get_value_int64(env, v_len, &l) != napi_ok) {
    throw_type(env, "offset and length must be numbers");
    return false;
  }
  if (o < 0 || l < 0 || (uint64_t)o > buf_len ||
      (uint64_t)l > buf_len - (uint64_t)o) {
    char msg[160];
    snprintf(msg, sizeof msg,
             "offset %lld + length %lld is outside the buffer (%zu bytes)",
             (long long)o, (long long)l, buf_len);
    throw_range(env, msg);
    return false;
  }
  *off = (size_t)o;
  *len = (size_t)l;
  return true;
}

/* A socket path as a sockaddr_un (no abstract namespace). The path is also
 * copied to `path` (sizeof sun_path bytes) for error messages. */
static bool arg_sockaddr(napi_env env, napi_value v, const char *syscall,
                         struct sockaddr_un *sa, socklen_t *sa_len,
                         char *path) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    throw_type(env, "path must be a string");
    return false;
  }
  if (len >= sizeof sa->sun_path) {
    /* Report the truncated path: the full one does not fit anyway. */
    napi_get_value_string_utf8(env, v, path, sizeof sa->sun_path, &len);
    throw_errno(env, ENAMETOOLONG, syscall, path);
    return false;
  }
  napi_get_value_string_utf8(env, v, path, sizeof sa->sun_path, &len);
  if (len == 0 || strlen(path) != len) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE",
                          "path must be a non-empty string without NUL bytes");
    return false;
  }
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, path, len + 1);
  *sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  return true;
}

static napi_value make_int(napi_env env, int64_t v) {
  napi_value r = NULL;
  if (v >= INT32_MIN && v <= INT32_MAX)
    napi_create_int32(env, (int32_t)v, &r);
  else
    napi_create_int64(env, v, &r);
  return r;
}

static napi_value undefined(napi_env env) {
  napi_value r = NULL;
  napi_get_undefined(env, &r);
  return r;
}

/* ------------------------------------------------------------ sockets */

/* listen(path, mode, backlog) -> fd */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  struct sockaddr_un sa;
  socklen_t sa_len;
  char path[sizeof sa.sun_path];
  uint32_t mode;
  int32_t backlog;
  if (!arg_sockaddr(env, argv[0], "bind", &sa, &sa_len, path)) return NULL;
  if (napi_get_value_uint32(env, argv[1], &mode) != napi_ok) {
    throw_type(env, "mode must be a number");
    return NULL;
  }
  if (mode > 07777) {
    throw_range(env, "mode must be between 0 and 0o7777");
    return NULL;
  }
  if (!arg_int32(env, argv[2], "backlog", &backlog)) return NULL;

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, errno, "socket", path);
    return NULL;
  }
  if (bind(fd, (struct sockaddr *)&sa, sa_len) < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, err, "bind", path);
    return NULL;
  }
  /* The mode is set before listen(): until then connect() is refused, so
   * no client can get in under the umask-derived mode. */
  const char *failed = NULL;
  if (chmod(path, (mode_t)mode) < 0)
    failed = "chmod";
  else if (listen(fd, backlog) < 0)
    failed = "listen";
  if (failed != NULL) {
    int err = errno;
    unlink(path); /* we created it in bind() above */
    close(fd);
    throw_errno(env, err, failed, path);
    return NULL;
  }
  return make_int(env, fd);
}

/* socketpair() -> [fd, fd]: a connected AF_UNIX stream pair, non-blocking and
 * CLOEXEC (a server's end and a client's end of a second channel). Throws. */
static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) <
      0) {
    throw_errno(env, errno, "socketpair", NULL);
    return NULL;
  }
  napi_value pair;
  NAPI_OR_THROW(env, napi_create_array_with_length(env, 2, &pair));
  NAPI_OR_THROW(env, napi_set_element(env, pair, 0, make_int(env, sv[0])));
  NAPI_OR_THROW(env, napi_set_element(env, pair, 1, make_int(env, sv[1])));
  return pair;
}

/* peerPid(fd) -> the pid of the process at the other end of a connected
 * AF_UNIX socket (SO_PEERCRED), or -errno. */
static napi_value js_peer_pid(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!arg_int32(env, argv[0], "fd", &fd)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    return make_int(env, -errno);
  return make_int(env, cred.pid);
}

/* accept(fd) -> new fd or -errno */
static napi_value js_accept(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!arg_int32(env, argv[0], "fd", &fd)) return NULL;
  int r;
  do
    r = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  while (r < 0 && errno == EINTR);
  return make_int(env, r < 0 ? -errno : r);
}

/* connect(path) -> fd (non-blocking once connected) */
static napi_value js_connect(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  struct sockaddr_un sa;
  socklen_t sa_len;
  char path[sizeof sa.sun_path];
  if (!arg_sockaddr(env, argv[0], "connect", &sa, &sa_len, path)) return NULL;

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, errno, "socket", path);
    return NULL;
  }
  /* Blocking connect: for AF_UNIX it only waits when the listener's backlog
   * is full. An interrupted AF_UNIX connect leaves the socket unconnected,
   * so retrying is right; EISCONN after a retry means it got through. */
  int r;
  bool retried = false;
  while ((r = connect(fd, (struct sockaddr *)&sa, sa_len)) < 0 &&
         errno == EINTR)
    retried = true;
  if (r < 0 && !(retried && errno == EISCONN)) {
    int err = errno;
    close(fd);
    throw_errno(env, err, "connect", path);
    return NULL;
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, err, "fcntl", path);
    return NULL;
  }
  return make_int(env, fd);
}

/* recvmsg(fd, buf, offset, length, fds) -> bytes, 0 on EOF, or -errno.
 * fds[0] = number of descriptors stored, fds[1..] = the descriptors. */
static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  int32_t fd;
  uint8_t *base;
  size_t buf_len, off, len;
  napi_typedarray_type type;
  size_t fds_len;
  void *fds_data;
  if (!arg_int32(env, argv[0], "fd", &fd) ||
      !arg_bytes(env, argv[1], &base, &buf_len) ||
      !arg_range(env, argv[2], argv[3], buf_len, &off, &len))
    return NULL;
  if (napi_get_typedarray_info(env, argv[4], &type, &fds_len, &fds_data, NULL,
                               NULL) != napi_ok ||
      type != napi_int32_array) {
    throw_type(env, "fds must be an Int32Array");
    return NULL;
  }
  if (fds_len < 1) {
    throw_range(env, "fds must have room for the count (length >= 1)");
    return NULL;
  }
  if (len == 0) { /* a 0-byte read would look like EOF */
    throw_range(env, "recvmsg length must be > 0");
    return NULL;
  }
  int32_t *fds = fds_data;
  size_t capacity = fds_len - 1;

  union control_buffer control;
  struct iovec iov = {.iov_base = base + off, .iov_len = len};
  struct msghdr msg = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = control.buf,
      .msg_controllen = sizeof control.buf,
  };
  ssize_t n;
  do
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    int err = errno;
    fds[0] = 0;
    return make_int(env, -err);
  }

  /* Every descriptor the kernel installed is either handed to the caller
   * or closed here: nothing may leak. (Descriptors that did not fit the
   * control buffer, flagged by MSG_CTRUNC, were never installed.) */
  size_t stored = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL;
       c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char *p = CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      int rfd;
      memcpy(&rfd, p + i * sizeof(int), sizeof rfd); /* may be unaligned */
      if (stored < capacity)
        fds[1 + stored++] = rfd;
      else
        close(rfd);
    }
  }
  fds[0] = (int32_t)stored;
  return make_int(env, n);
}

/* sendmsg(fd, buf, offset, length, fds?) -> bytes sent or -errno */
static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  int32_t fd;
  uint8_t *base;
  size_t buf_len, off, len;
  if (!arg_int32(env, argv[0], "fd", &fd) ||
      !arg_bytes(env, argv[1], &base, &buf_len) ||
      !arg_range(env, argv[2], argv[3], buf_len, &off, &len))
    return NULL;

  struct iovec iov = {.iov_base = base + off, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  union control_buffer control;

  napi_valuetype t;
  NAPI_OR_THROW(env, napi_typeof(env, argv[4], &t));
  if (t != napi_undefined && t != napi_null) {
    bool is_array = false;
    uint32_t nfds;
    if (napi_is_array(env, argv[4], &is_array) != napi_ok || !is_array) {
      throw_type(env, "fds must be an array of numbers");
      return NULL;
    }
    NAPI_OR_THROW(env, napi_get_array_length(env, argv[4], &nfds));
    if (nfds > MUSER_SCM_MAX_FD) {
      throw_range(env, "at most 253 descriptors can be sent in one message");
      return NULL;
    }
    if (nfds > 0) {
      /* On a stream socket the kernel silently drops descriptors sent
       * with no data, so that is a caller bug. */
      if (len == 0) {
        throw_range(env, "descriptors must be sent with at least one byte");
        return NULL;
      }
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
      memset(control.buf, 0, msg.msg_controllen); /* alignment padding */
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
      unsigned char *p = CMSG_DATA(c);
      for (uint32_t i = 0; i < nfds; i++) {
        napi_value e;
        int32_t v;
        NAPI_OR_THROW(env, napi_get_element(env, argv[4], i, &e));
        if (!arg_int32(env, e, "fds[i]", &v)) return NULL;
        memcpy(p + i * sizeof(int), &v, sizeof v);
      }
    }
  }

  ssize_t n;
  do
    n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  return make_int(env, n < 0 ? -errno : n);
}

/* close(fd); throws on failure. EINTR is not retried: on Linux the
 * descriptor is released even then, and a retry could close a descriptor
 * another thread just received. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!arg_int32(env, argv[0], "fd", &fd)) return NULL;
  if (close(fd) < 0 && errno != EINTR) {
    throw_errno(env, errno, "close", NULL);
    return NULL;
  }
  return undefined(env);
}

/* ------------------------------------------------------ memfd / eventfd */

/* memfd(name, size) -> fd */
static napi_value js_memfd(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  char name[256];
  size_t name_len;
  uint64_t size;
  if (napi_get_value_string_utf8(env, argv[0], NULL, 0, &name_len) !=
      napi_ok) {
    throw_type(env, "name must be a string");
    return NULL;
  }
  if (name_len >= sizeof name) { /* the kernel allows 249 bytes anyway */
    throw_errno(env, EINVAL, "memfd_create", NULL);
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[0], name, sizeof name, &name_len);
  if (!arg_size(env, argv[1], "size", &size)) return NULL;
  if (size > (uint64_t)INT64_MAX) {
    throw_errno(env, EFBIG, "ftruncate", NULL);
    return NULL;
  }

  bool sealed = false;
  napi_valuetype t;
  NAPI_OR_THROW(env, napi_typeof(env, argv[2], &t));
  if (t != napi_undefined &&
      napi_get_value_bool(env, argv[2], &sealed) != napi_ok) {
    throw_type(env, "sealed must be a boolean");
    return NULL;
  }

  int fd = memfd_create(name, MFD_CLOEXEC | (sealed ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) {
    throw_errno(env, errno, "memfd_create", NULL);
    return NULL;
  }
  int r;
  do
    r = ftruncate(fd, (off_t)size);
  while (r < 0 && errno == EINTR);
  /* Sealed: nobody holding the descriptor can resize it any more, so a
   * mapping of it can never lose pages under us (no SIGBUS). */
  if (r == 0 && sealed)
    r = fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  if (r < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, err, sealed ? "memfd seal" : "ftruncate", NULL);
    return NULL;
  }
  return make_int(env, fd);
}

/* eventfd(initval, nonblock) -> fd */
static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  uint32_t initval;
  bool nonblock = false;
  napi_value b;
  if (napi_get_value_uint32(env, argv[0], &initval) != napi_ok) {
    throw_type(env, "initval must be a number");
    return NULL;
  }
  NAPI_OR_THROW(env, napi_coerce_to_bool(env, argv[1], &b));
  NAPI_OR_THROW(env, napi_get_value_bool(env, b, &nonblock));
  int fd = eventfd(initval, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));
  if (fd < 0) {
    throw_errno(env, errno, "eventfd", NULL);
    return NULL;
  }
  return make_int(env, fd);
}

/* eventfdRead(fd) -> counter (a JS number: exact up to 2^53) or -errno */
static napi_value js_eventfd_read(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!arg_int32(env, argv[0], "fd", &fd)) return NULL;
  uint64_t value;
  ssize_t n;
  do
    n = read(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0) return make_int(env, -errno);
  if (n != sizeof value) return make_int(env, -EIO); /* not an eventfd */
  napi_value r;
  NAPI_OR_THROW(env, napi_create_double(env, (double)value, &r));
  return r;
}

/* eventfdWrite(fd, value, checkFirst) -> 0 or -errno.
 * With checkFirst, a descriptor that poll() does not find writable gets
 * -EAGAIN instead of a write: a blocking eventfd whose counter is full
 * would otherwise block this thread until its owner reads it. */
static napi_value js_eventfd_write(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t fd;
  uint64_t value;
  bool check_first = false;
  napi_value b;
  if (!arg_int32(env, argv[0], "fd", &fd) ||
      !arg_size(env, argv[1], "value", &value))
    return NULL;
  NAPI_OR_THROW(env, napi_coerce_to_bool(env, argv[2], &b));
  NAPI_OR_THROW(env, napi_get_value_bool(env, b, &check_first));
  if (check_first) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int r;
    do
      r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0) return make_int(env, -errno);
    if (r == 0 || !(p.revents & POLLOUT)) return make_int(env, -EAGAIN);
  }
  ssize_t n;
  do
    n = write(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0) return make_int(env, -errno);
  return make_int(env, n == sizeof value ? 0 : -EIO);
}

/* seals(fd) -> the F_GET_SEALS bits (F_SEAL_SHRINK = 2, ...) or -errno.
 * A file sealed against shrinking cannot be cut under a mapping of it, so
 * the server need not check its size before each access. */
static napi_value js_seals(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!arg_int32(env, argv[0], "fd", &fd)) return NULL;
  int seals = fcntl(fd, F_GET_SEALS);
  return make_int(env, seals < 0 ? -errno : seals);
}

/* ------------------------------------------------------------------ mmap */

typedef struct addon_state addon_state;

/* One per mapping; it is the finalize hint of the external ArrayBuffer and
 * is also attached to the ArrayBuffer with napi_wrap so munmap() can find
 * it. `unmapped` makes sure the range is unmapped exactly once: by munmap()
 * or, failing that, by the finalizer, which always frees the struct. */
typedef struct mapping {
  void *addr;
  size_t length;
  bool unmapped;
} mapping;

/* Marks ArrayBuffers made by mmap() (napi_unwrap alone cannot tell our
 * wraps from another addon's). */
static const napi_type_tag mapping_tag = {0x6d75736572206d6dULL,
                                          0x6170706e67210a01ULL};

static void finalize_mapping(napi_env env, void *data, void *hint) {
  mapping *m = hint;
  if (!m->unmapped) munmap(m->addr, m->length);
  free(m);
}

/* mmap(fd, offset, length, writable) -> ArrayBuffer */
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int32_t fd;
  uint64_t offset, length;
  bool writable = false;
  napi_value b;
  if (!arg_int32(env, argv[0], "fd", &fd) ||
      !arg_size(env, argv[1], "offset", &offset) ||
      !arg_size(env, argv[2], "length", &length))
    return NULL;
  NAPI_OR_THROW(env, napi_coerce_to_bool(env, argv[3], &b));
  NAPI_OR_THROW(env, napi_get_value_bool(env, b, &writable));

  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  if (length == 0 || offset % page != 0 || length > SIZE_MAX) {
    throw_errno(env, EINVAL, "mmap", NULL);
    return NULL;
  }
  mapping *m = malloc(sizeof *m);
  if (m == NULL) {
    throw_errno(env, ENOMEM, "mmap", NULL);
    return NULL;
  }
  void *addr = mmap(NULL, (size_t)length,
                    PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd,
                    (off_t)offset);
  if (addr == MAP_FAILED) {
    int err = errno;
    free(m);
    throw_errno(env, err, "mmap", NULL);
    return NULL;
  }
  m->addr = addr;
  m->length = (size_t)length;
  m->unmapped = false;

  napi_value ab;
  if (napi_create_external_arraybuffer(env, addr, (size_t)length,
                                       finalize_mapping, m, &ab) != napi_ok) {
    /* E.g. longer than the engine allows. Node may or may not still call
     * the finalizer (it does, later, for a too-long Buffer), so unmap now,
     * mark it done and leave the small struct to that finalizer (at worst
     * it leaks): never unmap or free twice. */
    munmap(addr, (size_t)length);
    m->unmapped = true;
    throw_napi_failure(env, "napi_create_external_arraybuffer");
    return NULL;
  }
  /* If these fail the ArrayBuffer is still valid and its finalizer unmaps;
   * only munmap() would not recognise it. */
  NAPI_OR_THROW(env, napi_type_tag_object(env, ab, &mapping_tag));
  NAPI_OR_THROW(env, napi_wrap(env, ab, m, NULL, NULL, NULL));
  return ab;
}

static void watches_forget_mapping(addon_state *s, mapping *m);

/* munmap(arrayBuffer): stop the watches of it, detach it and unmap now.
 * Idempotent. */
static napi_value js_munmap(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *data;
  NAPI_OR_THROW(env, napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  bool ok = false;
  if (napi_is_arraybuffer(env, argv[0], &ok) != napi_ok || !ok) {
    throw_type(env, "munmap() expects an ArrayBuffer returned by mmap()");
    return NULL;
  }
  NAPI_OR_THROW(env, napi_is_detached_arraybuffer(env, argv[0], &ok));
  if (ok) return undefined(env); /* already released */
  NAPI_OR_THROW(env, napi_check_object_type_tag(env, argv[0], &mapping_tag,
                                                &ok));
  void *p = NULL;
  if (!ok || napi_unwrap(env, argv[0], &p) != napi_ok || p == NULL) {
    throw_type(env, "munmap() expects an ArrayBuffer returned by mmap()");
    return NULL;
  }
  mapping *m = p;
  void *addr = m->addr;
  size_t length = m->length;
  watches_forget_mapping(data, m);
  /* Mark first: once detached, Node may run the finalizer (which frees m)
   * at any later point, so m is not touched after the detach. */
  m->unmapped = true;
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok) {
    m->unmapped = false;
    throw_napi_failure(env, "napi_detach_arraybuffer");
    return NULL;
  }
  napi_remove_wrap(env, argv[0], NULL);
  munmap(addr, length);
  return undefined(env);
}

/* -------------------------------------------------------- positional I/O */

/* Most buffers one preadv/pwritev call takes (the kernel's UIO_MAXIOV). */
#define MUSER_IOV_MAX 1024

/* The buffers of a JS array of Uint8Arrays as iovecs. A detached buffer
 * (guest memory unmapped since) is an empty iovec. */
static bool arg_iovecs(napi_env env, napi_value v, struct iovec *iov,
                       uint32_t *count) {
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, v, &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, v, &n) != napi_ok) {
    throw_type(env, "buffers must be an array of Uint8Arrays");
    return false;
  }
  if (n > MUSER_IOV_MAX) {
    char msg[96];
    snprintf(msg, sizeof msg, "at most %d buffers, got %u", MUSER_IOV_MAX, n);
    throw_range(env, msg);
    return false;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    uint8_t *data;
    size_t length;
    if (napi_get_element(env, v, i, &e) != napi_ok) {
      throw_napi_failure(env, "napi_get_element");
      return false;
    }
    if (!arg_bytes(env, e, &data, &length)) return false;
    iov[i].iov_base = data;
    iov[i].iov_len = length;
  }
  *count = n;
  return true;
}

/* preadv(fd, buffers, position, flags) and pwritev(...): preadv2/pwritev2
 * at `position` with RWF_* flags, retried on EINTR. Bytes moved (a short
 * count at the end of the file or, with RWF_NOWAIT, of what was ready) or
 * -errno (-EAGAIN, -EOPNOTSUPP for RWF_NOWAIT where the file system has
 * no non-blocking path). */
static napi_value positional_io(napi_env env, napi_callback_info info,
                                bool write) {
  GET_ARGS(4);
  int32_t fd, flags;
  uint64_t position;
  struct iovec iov[MUSER_IOV_MAX];
  uint32_t count;
  if (!arg_int32(env, argv[0], "fd", &fd) ||
      !arg_iovecs(env, argv[1], iov, &count) ||
      !arg_size(env, argv[2], "position", &position) ||
      !arg_int32(env, argv[3], "flags", &flags))
    return NULL;
  ssize_t n;
  do {
    n = write ? pwritev2(fd, iov, (int)count, (off_t)position, flags)
              : preadv2(fd, iov, (int)count, (off_t)position, flags);
  } while (n < 0 && errno == EINTR);
  return make_int(env, n < 0 ? -errno : n);
}

static napi_value js_preadv(napi_env env, napi_callback_info info) {
  return positional_io(env, info, false);
}

static napi_value js_pwritev(napi_env env, napi_callback_info info) {
  return positional_io(env, info, true);
}

/* ------------------------------------------------------------------ poll */

/* A uv_poll_t plus what is needed to call back into JS.
 *
 * Lifetime (choice: keep alive while active): while not closed, the handle
 * holds strong references to its JS object and to the callback, so an
 * unclosed handle is never garbage collected; like a net.Socket it lives
 * until close() (its callback can still fire, and must find its function).
 * close() starts uv_close(); the close callback drops the references and
 * the async context. The struct is freed once both the uv close callback
 * has run and the JS object's wrap finalizer has run, whichever is last,
 * because JS methods reach the struct through the object. At environment
 * teardown (process exit, worker termination) an async cleanup hook closes
 * whatever is still open so the loop can be closed cleanly. */
typedef struct poll_handle {
  uv_poll_t uv;
  napi_env env;
  addon_state *state;
  napi_ref self_ref;
  napi_ref cb_ref;
  napi_async_context async;
  struct poll_handle *prev, *next; /* handles whose uv close is not done */
  int events;      /* what uv watches now */
  uint64_t spin_ns; /* busy-poll budget after each callback; 0: none */
  bool closing;
  bool uv_closed;
  bool wrapper_gone;
} poll_handle;

/* A watched range of 32-bit words in a mapping made by mmap() (see
 * watch()). The words are compared with a snapshot; `changes` lists the
 * indexes of the words that differed at the last look. The snapshot and the
 * list are JS arrays (referenced, so they stay put), the words are read
 * through `live` only while the mapping is known to be there: munmap()
 * stops every watch of the mapping before it unmaps. */
typedef struct watch {
  struct watch *next;
  napi_env env;
  uint32_t id;
  const volatile uint32_t *live;
  uint32_t *seen;
  uint32_t *changes;
  uint32_t count;
  mapping *map;
  napi_ref arrays[3]; /* live, seen, changes */
  napi_ref cb_ref;
  napi_ref resource_ref; /* the callback's `this` and async resource */
  napi_async_context async;
  uint64_t spin_ns;     /* keep spinning this long after the last change */
  uint64_t quiet_since; /* spinning: the last change, or the start of the spin */
  uint64_t delay_ns;    /* backed off: the delay before the next look */
  uint64_t max_delay_ns; /* what the delay grows to */
  uint64_t due_ns;      /* backed off: when to look next */
  bool spinning;
  bool stopped; /* released; freed when no walk of the list is under way */
} watch;

/* The timerfd that wakes the loop for backed-off watches (and to go on
 * spinning after the loop had its turn). One per environment while it has
 * watches; a closing one is left to its close callback. */
typedef struct watch_timer {
  uv_poll_t uv;
  int fd;
  addon_state *state;
  uint64_t armed_at; /* CLOCK_MONOTONIC ns it fires at; 0: disarmed */
} watch_timer;

struct addon_state {
  uv_loop_t *loop;
  napi_ref poll_ctor;
  bool constructing; /* the PollHandle constructor is internal only */
  bool tearing_down;
  poll_handle *handles;
  napi_async_cleanup_hook_handle cleanup_hook;
  /* Busy polling (see spin()): the budget left after back-off, and when
   * the last spin ended. One per event loop, shared by its handles. */
  uint64_t spin_budget_ns;
  uint64_t spin_end_ns;
  bool spinning;
  /* Word watches (see watch()), their timer, and how many loops over the
   * list are running (stopped watches are freed when none is). */
  watch *watches;
  uint32_t last_watch_id;
  watch_timer *timer;
  int timers_open;
  int walking;
  uint64_t calls; /* poll callbacks and change reports made so far */
};

static const napi_type_tag poll_tag = {0x6d7573657220706fULL,
                                       0x6c6c68616e646c65ULL};

static void teardown_if_done(addon_state *s) {
  if (s->tearing_down && s->handles == NULL && s->timers_open == 0 &&
      s->cleanup_hook != NULL) {
    napi_async_cleanup_hook_handle hook = s->cleanup_hook;
    s->cleanup_hook = NULL;
    napi_remove_async_cleanup_hook(hook);
  }
}

static void poll_free_if_done(poll_handle *h) {
  if (h->uv_closed && h->wrapper_gone) free(h);
}

static void poll_on_closed(uv_handle_t *uvh) {
  poll_handle *h = uvh->data;
  addon_state *s = h->state;
  napi_env env = h->env;
  napi_handle_scope scope = NULL;
  napi_open_handle_scope(env, &scope);
  if (h->async != NULL) napi_async_destroy(env, h->async);
  if (h->cb_ref != NULL) napi_delete_reference(env, h->cb_ref);
  if (h->self_ref != NULL) napi_delete_reference(env, h->self_ref);
  h->async = NULL;
  h->cb_ref = h->self_ref = NULL;
  if (scope != NULL) napi_close_handle_scope(env, scope);

  if (h->prev != NULL)
    h->prev->next = h->next;
  else
    s->handles = h->next;
  if (h->next != NULL) h->next->prev = h->prev;
  h->uv_closed = true;
  poll_free_if_done(h);
  teardown_if_done(s);
}

static void poll_start_close(poll_handle *h) {
  if (h->closing) return;
  h->closing = true;
  uv_close((uv_handle_t *)&h->uv, poll_on_closed);
}

static void poll_finalize_wrapper(napi_env env, void *data, void *hint) {
  poll_handle *h = data;
  h->wrapper_gone = true;
  poll_free_if_done(h);
}

/* Calls a JS callback from the event loop; false if JS could not run (the
 * environment is going away). */
static bool call_js(napi_env env, napi_async_context async, napi_ref recv_ref,
                    napi_ref cb_ref, int arg_value) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return false;
  napi_value recv, cb, arg;
  bool ok = false;
  if (napi_get_reference_value(env, recv_ref, &recv) == napi_ok &&
      napi_get_reference_value(env, cb_ref, &cb) == napi_ok &&
      napi_create_int32(env, arg_value, &arg) == napi_ok) {
    /* napi_make_callback (not napi_call_function): it enters the handle's
     * async context and, as the outermost callback scope, runs nextTicks
     * and promise microtasks when the callback returns. */
    ok = napi_make_callback(env, async, recv, cb, 1, &arg, NULL) == napi_ok;
    /* We were called from the event loop, not from JS, so an exception
     * left pending here would be silently lost: report it the way Node
     * reports any uncaught exception. */
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value exc;
      if (napi_get_and_clear_last_exception(env, &exc) == napi_ok)
        napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
  return ok;
}

static bool poll_call(poll_handle *h, int arg_value) {
  h->state->calls++;
  return call_js(h->env, h->async, h->self_ref, h->cb_ref, arg_value);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---------------------------------------------------------- word watches */

/* Callback arguments besides a count of changed words (>= 1). */
#define WATCH_IDLE 0
#define WATCH_BUSY (-1)
/* A backed-off watch first looks again after BACKOFF_MIN_NS, then after
 * twice as long each time it finds nothing, up to its maximum (1 ms unless
 * the watch says otherwise): an idle watch costs one wake-up and one compare
 * per maximum delay. (The kernel's timer slack, 50 µs for ordinary threads,
 * comes on top of each delay.) */
#define BACKOFF_MIN_NS 20000u

static void watch_release(watch *w) {
  if (w->stopped) return;
  napi_env env = w->env;
  w->stopped = true;
  napi_handle_scope scope = NULL;
  napi_open_handle_scope(env, &scope);
  for (int i = 0; i < 3; i++)
    if (w->arrays[i] != NULL) napi_delete_reference(env, w->arrays[i]);
  if (w->cb_ref != NULL) napi_delete_reference(env, w->cb_ref);
  if (w->resource_ref != NULL) napi_delete_reference(env, w->resource_ref);
  if (w->async != NULL) napi_async_destroy(env, w->async);
  if (scope != NULL) napi_close_handle_scope(env, scope);
  w->live = NULL;
  w->seen = w->changes = NULL;
  w->map = NULL;
}

static void timer_on_closed(uv_handle_t *uvh) {
  watch_timer *t = uvh->data;
  addon_state *s = t->state;
  close(t->fd);
  free(t);
  s->timers_open--;
  teardown_if_done(s);
}

static void timer_close(addon_state *s) {
  watch_timer *t = s->timer;
  if (t == NULL) return;
  s->timer = NULL;
  uv_close((uv_handle_t *)&t->uv, timer_on_closed);
}

/* Frees stopped watches (unless a loop over the list is running) and,
 * when none is left, the timer. */
static void watches_sweep(addon_state *s) {
  if (s->walking > 0) return;
  for (watch **p = &s->watches; *p != NULL;) {
    watch *w = *p;
    if (w->stopped) {
      *p = w->next;
      free(w);
    } else {
      p = &w->next;
    }
  }
  if (s->watches == NULL) timer_close(s);
}

static void timer_arm(watch_timer *t, uint64_t at) {
  if (t->armed_at == at) return;
  struct itimerspec spec = {
      .it_value = {.tv_sec = (time_t)(at / 1000000000u),
                   .tv_nsec = (long)(at % 1000000000u)}};
  if (timerfd_settime(t->fd, TFD_TIMER_ABSTIME, &spec, NULL) == 0)
    t->armed_at = at;
}

/* After a spin, or a look by the timer: free what was stopped, then wake
 * at once if a watch is still spinning (the slice ended: the loop had its
 * turn), else when the first backed-off watch is due. */
static void watches_schedule(addon_state *s) {
  watches_sweep(s);
  watch_timer *t = s->timer;
  if (t == NULL) return;
  uint64_t at = UINT64_MAX;
  for (watch *w = s->watches; w != NULL; w = w->next) {
    if (w->stopped) continue;
    uint64_t when = w->spinning ? 1 : w->due_ns;
    if (when < at) at = when;
  }
  if (at == UINT64_MAX) at = 0;
  timer_arm(t, at);
}

static bool watch_call(addon_state *s, watch *w, int arg) {
  if (arg > 0) s->calls++;
  return call_js(w->env, w->async, w->resource_ref, w->cb_ref, arg);
}

/* Compares the words with the snapshot, which takes the new values; the
 * indexes of those that changed go to `changes`. Returns how many. */
static uint32_t watch_compare(watch *w) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < w->count; i++) {
    uint32_t v = w->live[i];
    if (v != w->seen[i]) {
      w->seen[i] = v;
      w->changes[n++] = i;
    }
  }
  return n;
}

/* Reports `n` changes, saying busy first if the watch was backed off. */
static bool watch_report(addon_state *s, watch *w, uint32_t n) {
  w->quiet_since = now_ns();
  if (!w->spinning) {
    w->spinning = true;
    if (!watch_call(s, w, WATCH_BUSY)) return false;
    if (w->stopped) return true;
  }
  return watch_call(s, w, (int)n);
}

/* One look at a watch: report changes; a spinning watch quiet for its
 * budget goes idle (and looks once more, for a write that raced with the
 * idle callback); a backed-off one that finds nothing waits longer.
 * False if JS could not run. */
static bool watch_look(addon_state *s, watch *w, uint64_t now) {
  uint32_t n = watch_compare(w);
  if (n > 0) return watch_report(s, w, n);
  if (!w->spinning) {
    w->delay_ns *= 2;
    if (w->delay_ns > w->max_delay_ns) w->delay_ns = w->max_delay_ns;
    w->due_ns = now + w->delay_ns;
    return true;
  }
  if (now < w->quiet_since || now - w->quiet_since < w->spin_ns) return true;
  w->spinning = false;
  if (!watch_call(s, w, WATCH_IDLE)) return false;
  if (w->stopped) return true;
  n = watch_compare(w);
  if (n > 0) return watch_report(s, w, n);
  w->delay_ns = BACKOFF_MIN_NS < w->max_delay_ns ? BACKOFF_MIN_NS : w->max_delay_ns;
  w->due_ns = now_ns() + w->delay_ns;
  return true;
}

/* A message arrived: backed-off watches spin again. */
static bool watches_wake(addon_state *s) {
  bool ok = true;
  s->walking++;
  for (watch *w = s->watches; w != NULL && ok; w = w->next) {
    if (w->stopped || w->spinning) continue;
    w->spinning = true;
    w->quiet_since = now_ns();
    ok = watch_call(s, w, WATCH_BUSY);
  }
  s->walking--;
  return ok;
}

/* munmap() of `m` is about to happen: its watches stop now. */
static void watches_forget_mapping(addon_state *s, mapping *m) {
  for (watch *w = s->watches; w != NULL; w = w->next)
    if (w->map == m) watch_release(w);
  watches_sweep(s);
}

/* ------------------------------------------------------------ spinning */

#define SPIN_MAX_FDS 64
/* Longest stretch spent spinning before the loop gets a turn (timers,
 * immediates, other handles): under steady load the spin never runs dry. */
#define SPIN_SLICE_NS 1000000u
/* A budget halved below this stops spinning until traffic is dense again. */
#define SPIN_MIN_NS 1000u

/* The readable handles of the loop that spin (`all`: every one), for
 * poll(); at most SPIN_MAX_FDS. */
static nfds_t spin_fds(addon_state *s, bool all, struct pollfd *fds,
                       poll_handle **owner) {
  nfds_t n = 0;
  for (poll_handle *h = s->handles; h != NULL && n < SPIN_MAX_FDS;
       h = h->next) {
    if (h->closing || !(h->events & UV_READABLE) || (!all && h->spin_ns == 0))
      continue;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&h->uv, &fd) != 0) continue;
    fds[n].fd = fd;
    fds[n].events = POLLIN;
    fds[n].revents = 0;
    owner[n++] = h;
  }
  return n;
}

/* Busy polling, for two reasons that share one loop.
 *
 * Sockets: after a callback on a handle with a spin budget, instead of
 * going back to the event loop (and sleeping in epoll_wait), poll the
 * readable handles of this loop with a zero timeout for up to the budget,
 * and call back whichever becomes readable. The budget backs off: a spin
 * that finds nothing halves it, so a device whose requests come far apart
 * soon stops paying for spins; it is restored when a spin finds a message on
 * a spinning handle, or when a message arrives within one full budget of
 * the last spin's end (traffic is dense again).
 *
 * Watches: a spinning watch is compared on every round (a backed-off one
 * when it is due), and keeps the spin going (with every readable handle
 * polled, spinning or not, so messages are not held up) until it has been
 * quiet for its own budget; see watch_look().
 *
 * Either way the loop gets a turn at least every SPIN_SLICE_NS once the
 * spin has called back a handle or reported a change (a watch still
 * spinning then resumes from the timer, which fires at once), and at once
 * after such a call when the loop has work of its own ready: an immediate
 * (Node keeps an idle handle active while one is queued), a due timer, a
 * closing handle; uv_backend_timeout() is 0 then. A wait that has found
 * nothing yet lasts its budget (busy and idle callbacks, which only say what
 * the poller does, do not count). */
static void spin(addon_state *s, uint64_t max_ns) {
  if (s->spinning) return;
  s->spinning = true;
  s->walking++;
  uint64_t start = now_ns(), now = start;
  bool sockets = false;
  if (max_ns > 0) {
    if (now - s->spin_end_ns <= max_ns) s->spin_budget_ns = max_ns;
    sockets = s->spin_budget_ns > 0;
  }
  uint64_t deadline = now + s->spin_budget_ns;
  struct pollfd fds[SPIN_MAX_FDS];
  poll_handle *owner[SPIN_MAX_FDS];
  nfds_t n = 0;
  bool collect = true, collected_all = false;
  uint64_t calls = s->calls;
  /* A wait that has called nothing back yet may outlast the slice. */
  while (!s->tearing_down &&
         (calls == s->calls ||
          (now - start < SPIN_SLICE_NS && uv_backend_timeout(s->loop) != 0))) {
    bool watching = false;
    for (watch *w = s->watches; w != NULL; w = w->next) {
      if (w->stopped || (!w->spinning && w->due_ns > now)) continue;
      if (!watch_look(s, w, now)) goto out;
      watching = watching || (!w->stopped && w->spinning);
    }
    if (!sockets && !watching) break;
    if (collect || collected_all != watching) {
      n = spin_fds(s, watching, fds, owner);
      collect = false;
      collected_all = watching;
      if (n == 0 && !watching) sockets = false;
    }
    int ready = n > 0 ? poll(fds, n, 0) : 0;
    if (ready > 0) {
      for (nfds_t i = 0; i < n; i++) {
        poll_handle *h = owner[i];
        if (fds[i].revents == 0 || h->closing) continue;
        if (h->spin_ns > max_ns) max_ns = h->spin_ns;
        if (h->spin_ns > 0) sockets = true;
        /* Hang-ups and errors show up as readable: the read reports them. */
        if (!poll_call(h, UV_READABLE)) goto out;
      }
      if (sockets) s->spin_budget_ns = max_ns;
      if (!watches_wake(s)) goto out;
      collect = true;
      now = now_ns();
      deadline = now + s->spin_budget_ns;
      continue;
    }
    now = now_ns();
    if (sockets && now >= deadline) {
      s->spin_budget_ns /= 2;
      if (s->spin_budget_ns < SPIN_MIN_NS) s->spin_budget_ns = 0;
      sockets = false;
      continue;
    }
    /* Yielding between polls lets a runnable client that shares our core
     * send what we wait for; on an idle core it returns at once. */
    sched_yield();
    now = now_ns();
  }
out:
  s->spin_end_ns = now_ns();
  s->spinning = false;
  s->walking--;
  watches_schedule(s);
}

static void timer_on_event(uv_poll_t *uvp, int status, int events) {
  (void)events;
  watch_timer *t = uvp->data;
  addon_state *s = t->state;
  uint64_t expirations;
  while (read(t->fd, &expirations, sizeof expirations) < 0 && errno == EINTR) {
  }
  t->armed_at = 0;
  if (status < 0 || s->tearing_down) return;
  uint64_t now = now_ns();
  bool ok = true;
  s->walking++;
  for (watch *w = s->watches; w != NULL && ok; w = w->next)
    if (!w->stopped && !w->spinning && w->due_ns <= now)
      ok = watch_look(s, w, now);
  s->walking--;
  if (ok) spin(s, 0); /* spins if a watch is spinning; reschedules */
}

static watch_timer *timer_open(addon_state *s, uv_loop_t *loop, int *err) {
  watch_timer *t = calloc(1, sizeof *t);
  if (t == NULL) {
    *err = ENOMEM;
    return NULL;
  }
  t->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (t->fd < 0) {
    *err = errno;
    free(t);
    return NULL;
  }
  int r = uv_poll_init(loop, &t->uv, t->fd);
  if (r < 0) {
    *err = -r;
    close(t->fd);
    free(t);
    return NULL;
  }
  t->uv.data = t;
  t->state = s;
  s->timers_open++;
  r = uv_poll_start(&t->uv, UV_READABLE, timer_on_event);
  if (r < 0) {
    *err = -r;
    s->timer = t;
    timer_close(s);
    return NULL;
  }
  /* Watching is no reason to keep the process alive. */
  uv_unref((uv_handle_t *)&t->uv);
  return t;
}

static void poll_on_event(uv_poll_t *uvp, int status, int events) {
  poll_handle *h = uvp->data;
  addon_state *s = h->state;
  if (!poll_call(h, status < 0 ? status : events)) return;
  if (status < 0) return;
  if (s->watches != NULL && !watches_wake(s)) return;
  uint64_t budget = h->closing ? 0 : h->spin_ns;
  if (budget > 0 || s->watches != NULL) spin(s, budget);
}

/* Environment teardown: close every handle still open, stop the watches,
 * then tell Node we are done once the last close callback has run (see
 * teardown_if_done). */
static void on_env_teardown(napi_async_cleanup_hook_handle hook, void *arg) {
  (void)hook;
  addon_state *s = arg;
  s->tearing_down = true;
  for (poll_handle *h = s->handles; h != NULL; h = h->next)
    poll_start_close(h);
  for (watch *w = s->watches; w != NULL; w = w->next)
    watch_release(w);
  watches_sweep(s);
  teardown_if_done(s);
}

static bool valid_events(napi_env env, napi_value v, int32_t *events) {
  if (!arg_int32(env, v, "events", events)) return false;
  if ((*events & ~(UV_READABLE | UV_WRITABLE)) != 0) {
    throw_range(env, "events must be a combination of READABLE and WRITABLE");
    return false;
  }
  return true;
}

/* (Re)start watching; 0 events means watch nothing for now. */
static int poll_set_events(poll_handle *h, int events) {
  h->events = events;
  if (events == 0) return uv_poll_stop(&h->uv);
  return uv_poll_start(&h->uv, events, poll_on_event);
}

/* poll(fd, events, cb) -> PollHandle */
static napi_value js_poll(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  void *data;
  NAPI_OR_THROW(env, napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  addon_state *s = data;
  int32_t fd, events;
  napi_valuetype t;
  if (!arg_int32(env, argv[0], "fd", &fd) ||
      !valid_events(env, argv[1], &events))
    return NULL;
  NAPI_OR_THROW(env, napi_typeof(env, argv[2], &t));
  if (t != napi_function) {
    throw_type(env, "cb must be a function");
    return NULL;
  }
  uv_loop_t *loop;
  NAPI_OR_THROW(env, napi_get_uv_event_loop(env, &loop));

  poll_handle *h = calloc(1, sizeof *h);
  if (h == NULL) {
    throw_errno(env, ENOMEM, "poll", NULL);
    return NULL;
  }
  /* Note: uv_poll_init puts fd in non-blocking mode. It fails with EEXIST
   * if another poll handle on this loop already watches fd. */
  int r = uv_poll_init(loop, &h->uv, fd);
  if (r < 0) {
    free(h);
    throw_errno(env, -r, "uv_poll_init", NULL);
    return NULL;
  }
  h->uv.data = h;
  h->env = env;
  h->state = s;
  h->wrapper_gone = true; /* no JS object yet */
  h->next = s->handles;
  if (h->next != NULL) h->next->prev = h;
  s->handles = h;

  /* From here on, failures go through poll_start_close(), which copes with
   * a partly built handle. */
  napi_value ctor, obj, name;
  bool ok = napi_get_reference_value(env, s->poll_ctor, &ctor) == napi_ok;
  if (ok) {
    s->constructing = true;
    ok = napi_new_instance(env, ctor, 0, NULL, &obj) == napi_ok;
    s->constructing = false;
  }
  ok = ok && napi_type_tag_object(env, obj, &poll_tag) == napi_ok &&
       napi_wrap(env, obj, h, poll_finalize_wrapper, NULL, NULL) == napi_ok;
  if (ok) h->wrapper_gone = false;
  ok = ok && napi_create_reference(env, obj, 1, &h->self_ref) == napi_ok &&
       napi_create_reference(env, argv[2], 1, &h->cb_ref) == napi_ok &&
       napi_create_string_utf8(env, "muser.PollHandle", NAPI_AUTO_LENGTH,
                               &name) == napi_ok &&
       napi_async_init(env, obj, name, &h->async) == napi_ok;
  if (!ok) {
    throw_napi_failure(env, "poll setup");
    poll_start_close(h);
    return NULL;
  }
  r = poll_set_events(h, events);
  if (r < 0) {
    poll_start_close(h);
    throw_errno(env, -r, "uv_poll_start", NULL);
    return NULL;
  }
  return obj;
}

static napi_value poll_ctor(napi_env env, napi_callback_info info) {
  napi_value self;
  void *data;
  NAPI_OR_THROW(env, napi_get_cb_info(env, info, NULL, NULL, &self, &data));
  addon_state *s = data;
  if (!s->constructing) {
    napi_throw_type_error(env, "ERR_ILLEGAL_CONSTRUCTOR",
                          "PollHandle objects are created by poll()");
    return NULL;
  }
  return self;
}

/* `this` of a PollHandle method, or NULL with a TypeError thrown. */
static poll_handle *poll_this(napi_env env, napi_callback_info info,
                              size_t *argc, napi_value *argv) {
  napi_value self;
  bool ok = false;
  void *p = NULL;
  if (napi_get_cb_info(env, info, argc, argv, &self, NULL) != napi_ok)
    return NULL;
  if (napi_check_object_type_tag(env, self, &poll_tag, &ok) != napi_ok ||
      !ok || napi_unwrap(env, self, &p) != napi_ok || p == NULL) {
    throw_type(env, "not a PollHandle");
    return NULL;
  }
  return p;
}

static napi_value poll_update(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t events;
  poll_handle *h = poll_this(env, info, &argc, argv);
  if (h == NULL || !valid_events(env, argv[0], &events)) return NULL;
  if (h->closing) {
    napi_throw_error(env, "ERR_POLL_CLOSED", "PollHandle is closed");
    return NULL;
  }
  int r = poll_set_events(h, events);
  if (r < 0) {
    throw_errno(env, -r, "uv_poll_start", NULL);
    return NULL;
  }
  return undefined(env);
}

/* spin(us): after each callback, busy-poll for up to `us` microseconds
 * (adaptively less when idle; see spin()); 0 turns it off. */
static napi_value poll_spin(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint32_t us;
  poll_handle *h = poll_this(env, info, &argc, argv);
  if (h == NULL) return NULL;
  if (napi_get_value_uint32(env, argv[0], &us) != napi_ok || us > 1000000) {
    throw_range(env, "spin takes microseconds from 0 to 1000000");
    return NULL;
  }
  h->spin_ns = (uint64_t)us * 1000u;
  if (h->spin_ns > h->state->spin_budget_ns) h->state->spin_budget_ns = h->spin_ns;
  return undefined(env);
}

static napi_value poll_ref(napi_env env, napi_callback_info info) {
  poll_handle *h = poll_this(env, info, NULL, NULL);
  if (h == NULL) return NULL;
  if (!h->closing) uv_ref((uv_handle_t *)&h->uv);
  return undefined(env);
}

static napi_value poll_unref(napi_env env, napi_callback_info info) {
  poll_handle *h = poll_this(env, info, NULL, NULL);
  if (h == NULL) return NULL;
  if (!h->closing) uv_unref((uv_handle_t *)&h->uv);
  return undefined(env);
}

static napi_value poll_close(napi_env env, napi_callback_info info) {
  poll_handle *h = poll_this(env, info, NULL, NULL);
  if (h == NULL) return NULL;
  poll_start_close(h);
  return undefined(env);
}

/* --------------------------------------------------------- watch (JS) */

static bool arg_words(napi_env env, napi_value v, const char *name,
                      uint32_t **data, size_t *count, napi_value *buffer) {
  napi_typedarray_type type;
  void *p = NULL;
  if (napi_get_typedarray_info(env, v, &type, count, &p, buffer, NULL) !=
          napi_ok ||
      type != napi_uint32_array) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a Uint32Array", name);
    throw_type(env, msg);
    return false;
  }
  *data = p;
  return true;
}

/* watch(live, seen, changes, spinUs, backoffUs, cb) -> id (see
 * src/transport/native.ts) */
static napi_value js_watch(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  void *data;
  NAPI_OR_THROW(env, napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  addon_state *s = data;
  uint32_t *live, *seen, *changes;
  size_t count, seen_count, changes_count;
  napi_value buffer;
  if (!arg_words(env, argv[0], "live", &live, &count, &buffer) ||
      !arg_words(env, argv[1], "seen", &seen, &seen_count, NULL) ||
      !arg_words(env, argv[2], "changes", &changes, &changes_count, NULL))
    return NULL;
  if (count == 0 || count > INT32_MAX || seen_count != count ||
      changes_count != count) {
    throw_range(env, "live must not be empty, and seen and changes must be "
                     "as long as live");
    return NULL;
  }
  /* Only memory whose unmapping we hear of (munmap() stops the watch). */
  bool ours = false;
  void *p = NULL;
  if (napi_check_object_type_tag(env, buffer, &mapping_tag, &ours) !=
          napi_ok ||
      !ours || napi_unwrap(env, buffer, &p) != napi_ok || p == NULL ||
      ((mapping *)p)->unmapped) {
    throw_type(env, "live must be a view of memory mapped by mmap()");
    return NULL;
  }
  uint32_t spin_us, backoff_us;
  if (napi_get_value_uint32(env, argv[3], &spin_us) != napi_ok ||
      spin_us > 1000000) {
    throw_range(env, "spinUs takes microseconds from 0 to 1000000");
    return NULL;
  }
  if (napi_get_value_uint32(env, argv[4], &backoff_us) != napi_ok ||
      backoff_us < 1 || backoff_us > 10000000) {
    throw_range(env, "backoffUs takes microseconds from 1 to 10000000");
    return NULL;
  }
  napi_valuetype t;
  NAPI_OR_THROW(env, napi_typeof(env, argv[5], &t));
  if (t != napi_function) {
    throw_type(env, "cb must be a function");
    return NULL;
  }
  if (s->timer == NULL) {
    uv_loop_t *loop;
    int err = 0;
    NAPI_OR_THROW(env, napi_get_uv_event_loop(env, &loop));
    s->timer = timer_open(s, loop, &err);
    if (s->timer == NULL) {
      throw_errno(env, err, "timerfd", NULL);
      return NULL;
    }
  }
  watch *w = calloc(1, sizeof *w);
  if (w == NULL) {
    watches_sweep(s);
    throw_errno(env, ENOMEM, "watch", NULL);
    return NULL;
  }
  w->env = env;
  napi_value resource, name;
  bool ok = napi_create_reference(env, argv[0], 1, &w->arrays[0]) == napi_ok &&
            napi_create_reference(env, argv[1], 1, &w->arrays[1]) == napi_ok &&
            napi_create_reference(env, argv[2], 1, &w->arrays[2]) == napi_ok &&
            napi_create_reference(env, argv[5], 1, &w->cb_ref) == napi_ok &&
            napi_create_object(env, &resource) == napi_ok &&
            napi_create_reference(env, resource, 1, &w->resource_ref) ==
                napi_ok &&
            napi_create_string_utf8(env, "muser.Watch", NAPI_AUTO_LENGTH,
                                    &name) == napi_ok &&
            napi_async_init(env, resource, name, &w->async) == napi_ok;
  w->next = s->watches;
  s->watches = w;
  if (!ok) {
    throw_napi_failure(env, "watch setup");
    watch_release(w);
    watches_sweep(s);
    return NULL;
  }
  w->live = live;
  w->seen = seen;
  w->changes = changes;
  w->count = (uint32_t)count;
  w->map = p;
  w->spin_ns = (uint64_t)spin_us * 1000u;
  w->max_delay_ns = (uint64_t)backoff_us * 1000u;
  for (uint32_t i = 0; i < w->count; i++) seen[i] = w->live[i];
  /* It starts backed off, looking again soon. */
  w->delay_ns = BACKOFF_MIN_NS < w->max_delay_ns ? BACKOFF_MIN_NS : w->max_delay_ns;
  w->due_ns = now_ns() + w->delay_ns;
  do
    w->id = ++s->last_watch_id;
  while (w->id == 0);
  watches_schedule(s);
  return make_int(env, w->id);
}

/* unwatch(id) -> whether it was watching (a watch whose memory was
 * unmapped has stopped already). */
static napi_value js_unwatch(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *data;
  NAPI_OR_THROW(env, napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  addon_state *s = data;
  uint32_t id;
  if (napi_get_value_uint32(env, argv[0], &id) != napi_ok) {
    throw_type(env, "id must be a number");
    return NULL;
  }
  bool found = false;
  for (watch *w = s->watches; w != NULL; w = w->next) {
    if (w->id == id && !w->stopped) {
      watch_release(w);
      found = true;
    }
  }
  watches_sweep(s);
  napi_value r;
  NAPI_OR_THROW(env, napi_get_boolean(env, found, &r));
  return r;
}

/* ------------------------------------------------------------------ init */

static void finalize_state(napi_env env, void *data, void *hint) {
  addon_state *s = data;
  if (s->poll_ctor != NULL) napi_delete_reference(env, s->poll_ctor);
  free(s);
}

static napi_value make_errno_object(napi_env env) {
  napi_value obj, v;
  NAPI_OR_THROW(env, napi_create_object(env, &obj));
  for (size_t i = 0; i < COUNT_OF(errno_table); i++) {
    NAPI_OR_THROW(env, napi_create_int32(env, errno_table[i].value, &v));
    NAPI_OR_THROW(env,
                  napi_set_named_property(env, obj, errno_table[i].name, v));
  }
  NAPI_OR_THROW(env, napi_object_freeze(env, obj));
  return obj;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  addon_state *s = calloc(1, sizeof *s);
  if (s == NULL) {
    napi_throw_error(env, NULL, "muser: out of memory");
    return NULL;
  }
  if (napi_get_uv_event_loop(env, &s->loop) != napi_ok) {
    free(s);
    throw_napi_failure(env, "napi_get_uv_event_loop");
    return NULL;
  }
  if (napi_set_instance_data(env, s, finalize_state, NULL) != napi_ok) {
    free(s);
    throw_napi_failure(env, "napi_set_instance_data");
    return NULL;
  }

  napi_property_descriptor poll_methods[] = {
      {"update", NULL, poll_update, NULL, NULL, NULL, napi_default_method,
       NULL},
      {"spin", NULL, poll_spin, NULL, NULL, NULL, napi_default_method, NULL},
      {"ref", NULL, poll_ref, NULL, NULL, NULL, napi_default_method, NULL},
      {"unref", NULL, poll_unref, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, poll_close, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value ctor;
  NAPI_OR_THROW(env, napi_define_class(env, "PollHandle", NAPI_AUTO_LENGTH,
                                       poll_ctor, s, COUNT_OF(poll_methods),
                                       poll_methods, &ctor));
  NAPI_OR_THROW(env, napi_create_reference(env, ctor, 1, &s->poll_ctor));
  NAPI_OR_THROW(env, napi_add_async_cleanup_hook(env, on_env_teardown, s,
                                                 &s->cleanup_hook));

  napi_value readable, writable, nowait, errnos;
  NAPI_OR_THROW(env, napi_create_int32(env, UV_READABLE, &readable));
  NAPI_OR_THROW(env, napi_create_int32(env, RWF_NOWAIT, &nowait));
  NAPI_OR_THROW(env, napi_create_int32(env, UV_WRITABLE, &writable));
  errnos = make_errno_object(env);
  if (errnos == NULL) return NULL;

#define METHOD(name, fn, data)                                              \
  {name, NULL, fn, NULL, NULL, NULL, napi_enumerable, data}
#define VALUE(name, v)                                                      \
  {name, NULL, NULL, NULL, NULL, v, napi_enumerable, NULL}
  napi_property_descriptor props[] = {
      METHOD("listen", js_listen, NULL),
      METHOD("accept", js_accept, NULL),
      METHOD("connect", js_connect, NULL),
      METHOD("socketpair", js_socketpair, NULL),
      METHOD("peerPid", js_peer_pid, NULL),
      METHOD("recvmsg", js_recvmsg, NULL),
      METHOD("sendmsg", js_sendmsg, NULL),
      METHOD("poll", js_poll, s),
      METHOD("close", js_close, NULL),
      METHOD("memfd", js_memfd, NULL),
      METHOD("eventfd", js_eventfd, NULL),
      METHOD("eventfdRead", js_eventfd_read, NULL),
      METHOD("eventfdWrite", js_eventfd_write, NULL),
      METHOD("seals", js_seals, NULL),
      METHOD("mmap", js_mmap, NULL),
      METHOD("munmap", js_munmap, s),
      METHOD("preadv", js_preadv, NULL),
      METHOD("pwritev", js_pwritev, NULL),
      METHOD("watch", js_watch, s),
      METHOD("unwatch", js_unwatch, s),
      VALUE("READABLE", readable),
      VALUE("WRITABLE", writable),
      VALUE("RWF_NOWAIT", nowait),
      VALUE("errno", errnos),
  };
#undef METHOD
#undef VALUE
  NAPI_OR_THROW(env,
                napi_define_properties(env, exports, COUNT_OF(props), props));
  return exports;
}
