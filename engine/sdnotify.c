/* systemd's readiness protocol (Type=notify), without libsystemd: one datagram to the
 * socket named by NOTIFY_SOCKET. main.c (start, reload, stop) and upgrade.c (MAINPID). */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "log.h"
#include "server.h"

void lp_notify_systemd(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    /* "@name" is an abstract socket: a NUL first byte, and no terminating NUL counted. */
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sa.sun_path))
        return;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0)
        lp_log_warn("systemd notify (%s): %s", path, strerror(errno));
    close(fd);
}
