/*
 * cohmem_example.c: a C client of cohmemd through libcohmem.
 *
 * Creates a BO, writes two of its pages like ordinary memory, syncs, and
 * checks that exactly those pages were uploaded and that the GPU resource
 * (mapped through its exported fd) holds the bytes written.
 *
 * Build and run:
 *   cc -o cohmem_example cohmem_example.c $(pkg-config --cflags --libs cohmem)
 *   ./cohmem_example [SOCKET]
 */
#include <cohmem.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define PAGES 16

static int fail(const char *what, int code)
{
    fprintf(stderr, "%s: %s (%d): %s\n", what, cohmem_strerror(code), code, cohmem_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    cohmem_connection *conn = NULL;
    cohmem_bo *bo = NULL;
    cohmem_mapping *map = NULL;
    struct cohmem_sync_result done;
    struct cohmem_dmabuf buf;
    int rc;

    if ((rc = cohmem_connect(argc > 1 ? argv[1] : NULL, &conn)) != COHMEM_OK)
        return fail("cohmem_connect", rc);
    if ((rc = cohmem_bo_create(conn, PAGES * PAGE, &bo)) != COHMEM_OK)
        return fail("cohmem_bo_create", rc);
    if ((rc = cohmem_bo_map(bo, &map)) != COHMEM_OK)
        return fail("cohmem_bo_map", rc);

    unsigned char *p = cohmem_mapping_ptr(map);
    if (p == NULL || cohmem_mapping_len(map) != PAGES * PAGE) {
        fprintf(stderr, "bad mapping\n");
        return 1;
    }
    /* A first sync uploads whatever the new BO holds; start clean. */
    if ((rc = cohmem_bo_sync(bo, &done)) != COHMEM_OK)
        return fail("cohmem_bo_sync", rc);

    memset(p + 2 * PAGE, 0xab, PAGE);
    strcpy((char *)p + 5 * PAGE + 100, "hello from C");
    if ((rc = cohmem_bo_sync(bo, &done)) != COHMEM_OK)
        return fail("cohmem_bo_sync", rc);
    printf("synced %llu pages (%llu bytes) in %llu ns, mechanism %u\n",
           (unsigned long long)done.pages, (unsigned long long)done.bytes,
           (unsigned long long)done.duration_ns, done.mechanism);
    if (done.pages != 2) {
        fprintf(stderr, "expected exactly the 2 pages written, got %llu\n", (unsigned long long)done.pages);
        return 1;
    }

    /* Pinned I/O (an O_DIRECT read, io_uring, a device) fills pages with
     * no write fault: report the range once the I/O completed. Here a
     * read(2) from a pipe into page 7 stands for it. */
    int fds[2];
    if (pipe(fds) != 0 || write(fds[1], "pinned", 6) != 6 || read(fds[0], p + 7 * PAGE, 6) != 6) {
        perror("pipe read into the mapping");
        return 1;
    }
    close(fds[0]);
    close(fds[1]);
    if ((rc = cohmem_bo_damage(bo, 7 * PAGE, 6)) != COHMEM_OK)
        return fail("cohmem_bo_damage", rc);
    if ((rc = cohmem_bo_sync(bo, &done)) != COHMEM_OK)
        return fail("cohmem_bo_sync", rc);
    printf("damaged and synced %llu page(s)\n", (unsigned long long)done.pages);
    if (done.pages != 1) {
        fprintf(stderr, "expected the 1 damaged page, got %llu\n", (unsigned long long)done.pages);
        return 1;
    }

    if ((rc = cohmem_bo_export_dmabuf(bo, &buf)) != COHMEM_OK)
        return fail("cohmem_bo_export_dmabuf", rc);
    if (buf.pitch != PAGE) {
        fprintf(stderr, "unexpected pitch %llu\n", (unsigned long long)buf.pitch);
        return 1;
    }
    unsigned char *gpu = mmap(NULL, buf.size, PROT_READ, MAP_SHARED, buf.fd, 0);
    if (gpu == MAP_FAILED) {
        perror("mmap of the exported resource");
        return 1;
    }
    if (memcmp(gpu, p, PAGES * PAGE) != 0) {
        fprintf(stderr, "the GPU copy differs from the BO\n");
        return 1;
    }
    printf("GPU copy equals the BO (%llu bytes): \"%s\"\n", (unsigned long long)buf.size,
           (const char *)gpu + 5 * PAGE + 100);
    munmap(gpu, buf.size);
    close(buf.fd);

    struct cohmem_stats stats;
    if ((rc = cohmem_stats_get(conn, &stats)) != COHMEM_OK)
        return fail("cohmem_stats_get", rc);
    printf("daemon: %llu syncs, %llu pages uploaded\n", (unsigned long long)stats.syncs,
           (unsigned long long)stats.pages_uploaded);

    /* A bad request gets a typed error and a message. */
    cohmem_bo *huge = NULL;
    rc = cohmem_bo_create(conn, 1ULL << 50, &huge);
    if (rc != COHMEM_E_DAEMON) {
        fprintf(stderr, "a 1 PiB BO was not refused by the daemon (%d)\n", rc);
        return 1;
    }
    printf("refused as expected: daemon code %d: %s\n", cohmem_last_daemon_code(), cohmem_last_error());

    if ((rc = cohmem_unmap(map)) != COHMEM_OK)
        return fail("cohmem_unmap", rc);
    cohmem_bo_free(bo);
    cohmem_disconnect(conn);
    printf("ok\n");
    return 0;
}
