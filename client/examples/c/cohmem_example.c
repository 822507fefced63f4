/*
 * cohmem_example.c: a C client of cohmemd through libcohmem.
 *
 * Creates a BO, writes two of its pages like ordinary memory, syncs, and
 * checks that exactly those pages were uploaded and that the GPU resource
 * (mapped through its exported fd) holds the bytes written. Then creates
 * a small image BO, draws a rectangle and a line into it, and prints the
 * rectangles of pixels the sync reports changed (capi/tests/c_example.rs
 * checks them against the pixels drawn).
 *
 * Build and run:
 *   cc -o cohmem_example cohmem_example.c $(pkg-config --cflags --libs cohmem)
 *   ./cohmem_example [SOCKET]
 */
#include <cohmem.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define PAGES 16

/* The image BO and what is drawn into it (capi/tests/c_example.rs draws the
 * same pixels to check the rectangles printed). */
#define IMG_W 320
#define IMG_H 200
#define RECT_X 40
#define RECT_Y 30
#define RECT_W 100
#define RECT_H 50
#define LINE_X0 180
#define LINE_Y0 100
#define LINE_X1 300
#define LINE_Y1 140

static int fail(const char *what, int code)
{
    fprintf(stderr, "%s: %s (%d): %s\n", what, cohmem_strerror(code), code, cohmem_last_error());
    return 1;
}

/* A fourcc's four characters ("XR24"). */
#define FOURCC_CHARS(f) (char)((f) & 0xff), (char)(((f) >> 8) & 0xff), (char)(((f) >> 16) & 0xff), \
                        (char)(((f) >> 24) & 0xff)

/* Stores one XRGB8888 pixel where the image's layout puts it. */
static void put_pixel(unsigned char *bo, const struct cohmem_image_info *info, uint32_t x, uint32_t y,
                      uint32_t color)
{
    memcpy(bo + info->offset + (size_t)y * info->pitch + (size_t)x * 4, &color, 4);
}

/* Creates an image BO, draws into it through its mapping, syncs and prints
 * the rectangles the daemon reports. */
static int image_demo(cohmem_connection *conn)
{
    cohmem_bo *img = NULL;
    cohmem_mapping *map = NULL;
    struct cohmem_image_info info;
    struct cohmem_sync_result done;
    struct cohmem_rect rects[COHMEM_MAX_DAMAGE_RECTS];
    size_t count = 0;
    int merged = 0;
    int rc;

    if ((rc = cohmem_image_create(conn, IMG_W, IMG_H, COHMEM_FORMAT_XRGB8888, &img)) != COHMEM_OK)
        return fail("cohmem_image_create", rc);
    if ((rc = cohmem_bo_image_info(img, &info)) != COHMEM_OK)
        return fail("cohmem_bo_image_info", rc);
    /* The GPU device chose the pitch; the BO's bytes have its layout. */
    printf("image %ux%u %c%c%c%c: pitch %u, offset %llu, size %llu bytes\n", info.width, info.height,
           FOURCC_CHARS(info.fourcc), info.pitch, (unsigned long long)info.offset,
           (unsigned long long)cohmem_bo_size(img));
    if ((rc = cohmem_bo_map(img, &map)) != COHMEM_OK)
        return fail("cohmem_bo_map", rc);
    unsigned char *px = cohmem_mapping_ptr(map);

    /* A filled rectangle and a line, drawn like into any framebuffer. */
    for (uint32_t y = RECT_Y; y < RECT_Y + RECT_H; y++)
        for (uint32_t x = RECT_X; x < RECT_X + RECT_W; x++)
            put_pixel(px, &info, x, y, 0x00ff8000);
    for (uint32_t x = LINE_X0; x <= LINE_X1; x++)
        put_pixel(px, &info, x, LINE_Y0 + (x - LINE_X0) * (LINE_Y1 - LINE_Y0) / (LINE_X1 - LINE_X0), 0x00ffffff);
    printf("drew rectangle x=%d y=%d w=%d h=%d and line (%d,%d)-(%d,%d)\n", RECT_X, RECT_Y, RECT_W, RECT_H,
           LINE_X0, LINE_Y0, LINE_X1, LINE_Y1);

    /* Room for COHMEM_MAX_DAMAGE_RECTS receives every rectangle. Tracking
     * is by page: they cover every pixel that shares a page with one drawn. */
    rc = cohmem_bo_sync_rects(img, &done, rects, COHMEM_MAX_DAMAGE_RECTS, &count, &merged);
    if (rc != COHMEM_OK)
        return fail("cohmem_bo_sync_rects", rc);
    printf("image synced %llu pages, %zu rect(s), merged %d\n", (unsigned long long)done.pages, count, merged);
    for (size_t i = 0; i < count; i++)
        printf("rect x=%u y=%u w=%u h=%u\n", rects[i].x, rects[i].y, rects[i].w, rects[i].h);

    /* The export describes the image to an importer (EGL, Vulkan, KMS). */
    struct cohmem_dmabuf buf;
    if ((rc = cohmem_bo_export_dmabuf(img, &buf)) != COHMEM_OK)
        return fail("cohmem_bo_export_dmabuf", rc);
    if (memcmp(&buf.image, &info, sizeof info) != 0) {
        fprintf(stderr, "the export describes another image\n");
        return 1;
    }
    size_t end = info.offset + (size_t)(info.height - 1) * info.pitch + (size_t)info.width * 4;
    if (buf.size < end) {
        fprintf(stderr, "the exported image has %llu bytes, its layout needs %zu\n",
                (unsigned long long)buf.size, end);
        return 1;
    }
    unsigned char *gpu = mmap(NULL, end, PROT_READ, MAP_SHARED, buf.fd, 0);
    if (gpu == MAP_FAILED) {
        perror("mmap of the exported image");
        return 1;
    }
    for (uint32_t y = 0; y < info.height; y++) {
        size_t row = info.offset + (size_t)y * info.pitch;
        if (memcmp(gpu + row, px + row, (size_t)info.width * 4) != 0) {
            fprintf(stderr, "row %u of the GPU image differs from the BO\n", y);
            return 1;
        }
    }
    printf("GPU image equals the BO: %ux%u %c%c%c%c pitch %u offset %llu modifier %llu\n", buf.image.width,
           buf.image.height, FOURCC_CHARS(buf.image.fourcc), buf.image.pitch,
           (unsigned long long)buf.image.offset, (unsigned long long)buf.image.modifier);
    munmap(gpu, end);
    close(buf.fd);

    if ((rc = cohmem_unmap(map)) != COHMEM_OK)
        return fail("cohmem_unmap", rc);
    cohmem_bo_free(img);
    return 0;
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
    /* No sync is needed before writing: a new BO and its GPU copy start
     * equal (zero), and even a first sync uploads only the pages written. */
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

    if (image_demo(conn) != 0)
        return 1;

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
