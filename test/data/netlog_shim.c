/* LD_PRELOAD shim for test_network_safety.py: logs the destination of every datagram or connection a
 * process sends or opens (sendto, sendmsg, sendmmsg, connect) to $COLLAB_NETLOG, one line each:
 *   <call> <family> <address> <port>
 * then calls the real libc function. Built by the test with the system C compiler. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void log_addr(const char *call, const struct sockaddr *sa) {
    const char *path = getenv("COLLAB_NETLOG");
    if (!path || !sa) return;
    char line[160], host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    const char *family = "other";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
        family = "inet";
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        family = "inet6";
    } else {
        return;  /* unix sockets, netlink: not network traffic */
    }
    int n = snprintf(line, sizeof line, "%s %s %s %d\n", call, family, host, port);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd >= 0) {
        if (write(fd, line, n) < 0) { /* nothing to do */ }
        close(fd);
    }
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen) {
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "sendto");
    log_addr("sendto", to);
    return real(fd, buf, len, flags, to, tolen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, const struct msghdr *, int);
    if (!real) real = dlsym(RTLD_NEXT, "sendmsg");
    if (msg) log_addr("sendmsg", (const struct sockaddr *)msg->msg_name);
    return real(fd, msg, flags);
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags) {
    static int (*real)(int, struct mmsghdr *, unsigned int, int);
    if (!real) real = dlsym(RTLD_NEXT, "sendmmsg");
    for (unsigned int i = 0; vec && i < vlen; i++)
        log_addr("sendmmsg", (const struct sockaddr *)vec[i].msg_hdr.msg_name);
    return real(fd, vec, vlen, flags);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "connect");
    log_addr("connect", addr);
    return real(fd, addr, len);
}
