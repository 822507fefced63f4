/*
 * cohmem_example.c: a C client of cohmemd through libcohmem.
 *
 * 1. Creates a BO, writes two of its pages like ordinary memory, syncs, and
 *    checks that exactly those pages were uploaded (a new BO and its GPU
 *    copy start equal, all zero, so even the first sync uploads only the
 *    pages written) and that the GPU resource, mapped through its exported
 *    fd, holds the bytes written. Reports pinned I/O as damage.
 * 2. Looks at the BO's tracker (cohmem_bo_scan, cohmem_bo_dirty_state) and
 *    pins its policy (cohmem_bo_set_policy): under COHMEM_POLICY_FULL a
 *    one-byte store uploads the whole BO.
 * 3. Draws a rectangle and a line into a small image BO and prints the
 *    rectangles of pixels the sync reports changed (capi/tests/c_example.rs
 *    checks them against the pixels drawn).
 * 4. Checks the BO's bytes three ways: an exact snapshot, a pread of its
 *    memfd, and a readback of the GPU copy.
 * 5. Switches the process to the explicit mechanism: a store that is not
 *    reported is not uploaded (and nothing fails), a reported one is.
 * 6. Syncs without blocking: cohmem_bo_sync_start() returns at once, and
 *    the pending sync's fd becomes readable when the upload is done.
 * 7. Shows a typed daemon error with its name.
 *
 * Build and run:
 *   cc -o cohmem_example cohmem_example.c $(pkg-config --cflags --libs cohmem)
 *   ./cohmem_example [SOCKET]
 */
#include <cohmem.h>

#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES 16
static size_t PAGE;

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
    if (code == COHMEM_E_DAEMON)
        fprintf(stderr, "  daemon code %s\n", cohmem_daemon_error_name(cohmem_last_daemon_code()));
    return 1;
}

#define CHECK(call)                                                                                      \
    do {                                                                                                 \
        int rc_ = (call);                                                                                \
        if (rc_ != COHMEM_OK)                                                                            \
            return fail(#call, rc_);                                                                     \
    } while (0)

#define EXPECT(cond, ...)                                                                                \
    do {                                                                                                 \
        if (!(cond)) {                                                                                   \
            fprintf(stderr, __VA_ARGS__);                                                                \
            fprintf(stderr, "\n");                                                                       \
            return 1;                                                                                    \
        }                                                                                                \
    } while (0)

/* A fourcc's four characters ("XR24"). */
#define FOURCC_CHARS(f) (char)((f) & 0xff), (char)(((f) >> 8) & 0xff), (char)(((f) >> 16) & 0xff), \
                        (char)(((f) >> 24) & 0xff)

/* Stores one XRGB8888 pixel where the image's layout puts it. */
static void put_pixel(unsigned char *bo, const struct cohmem_image_info *info, uint32_t x, uint32_t y,
                      uint32_t color)
{
    memcpy(bo + info->offset + (size_t)y * info->pitch + (size_t)x * 4, &color, 4);
}

/* Maps the BO's exported GPU resource read-only and compares `len` bytes
 * at `offset` with `want`: 0 when equal, 1 when not, -1 on error. */
static int gpu_equals(cohmem_bo *bo, size_t offset, const unsigned char *want, size_t len)
{
    struct cohmem_dmabuf buf;
    int rc = cohmem_bo_export_dmabuf(bo, &buf);
    if (rc != COHMEM_OK) {
        fail("cohmem_bo_export_dmabuf", rc);
        return -1;
    }
    unsigned char *gpu = mmap(NULL, buf.size, PROT_READ, MAP_SHARED, buf.fd, 0);
    close(buf.fd);
    if (gpu == MAP_FAILED) {
        perror("mmap of the exported resource");
        return -1;
    }
    int differs = offset + len > buf.size || memcmp(gpu + offset, want, len) != 0;
    munmap(gpu, buf.size);
    return differs;
}

/* Part 3: creates an image BO, draws into it through its mapping, syncs and
 * prints the rectangles the daemon reports. */
static int image_demo(cohmem_connection *conn)
{
    cohmem_bo *img = NULL;
    cohmem_mapping *map = NULL;
    struct cohmem_image_info info;
    struct cohmem_sync_result done;
    struct cohmem_rect rects[COHMEM_MAX_DAMAGE_RECTS];
    size_t count = 0;
    int merged = 0;

    CHECK(cohmem_image_create(conn, IMG_W, IMG_H, COHMEM_FORMAT_XRGB8888, &img));
    CHECK(cohmem_bo_image_info(img, &info));
    /* The GPU device chose the pitch; the BO's bytes have its layout. */
    printf("image %ux%u %c%c%c%c: pitch %u, offset %llu, size %llu bytes\n", info.width, info.height,
           FOURCC_CHARS(info.fourcc), info.pitch, (unsigned long long)info.offset,
           (unsigned long long)cohmem_bo_size(img));
    CHECK(cohmem_bo_map(img, &map));
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
    CHECK(cohmem_bo_sync_rects(img, &done, rects, COHMEM_MAX_DAMAGE_RECTS, &count, &merged));
    printf("image synced %llu pages, %zu rect(s), merged %d\n", (unsigned long long)done.pages, count, merged);
    for (size_t i = 0; i < count; i++)
        printf("rect x=%u y=%u w=%u h=%u\n", rects[i].x, rects[i].y, rects[i].w, rects[i].h);

    /* The export describes the image to an importer (EGL, Vulkan, KMS). */
    struct cohmem_dmabuf buf;
    CHECK(cohmem_bo_export_dmabuf(img, &buf));
    EXPECT(memcmp(&buf.image, &info, sizeof info) == 0, "the export describes another image");
    size_t end = info.offset + (size_t)(info.height - 1) * info.pitch + (size_t)info.width * 4;
    EXPECT(buf.size >= end, "the exported image has %llu bytes, its layout needs %zu",
           (unsigned long long)buf.size, end);
    unsigned char *gpu = mmap(NULL, end, PROT_READ, MAP_SHARED, buf.fd, 0);
    EXPECT(gpu != MAP_FAILED, "mmap of the exported image failed");
    for (uint32_t y = 0; y < info.height; y++) {
        size_t row = info.offset + (size_t)y * info.pitch;
        EXPECT(memcmp(gpu + row, px + row, (size_t)info.width * 4) == 0, "row %u of the GPU image differs", y);
    }
    printf("GPU image equals the BO: %ux%u %c%c%c%c pitch %u offset %llu modifier %llu\n", buf.image.width,
           buf.image.height, FOURCC_CHARS(buf.image.fourcc), buf.image.pitch,
           (unsigned long long)buf.image.offset, (unsigned long long)buf.image.modifier);
    munmap(gpu, end);
    close(buf.fd);

    CHECK(cohmem_unmap(map));
    cohmem_bo_free(img);
    return 0;
}

/* Part 2: the tracker and the policy of `bo` (mapped at `p`). */
static int tracker_and_policy(cohmem_bo *bo, unsigned char *p)
{
    struct cohmem_sync_result done;
    struct cohmem_dirty_state state;
    struct cohmem_run runs[8];
    size_t nruns = 0;

    /* A scan harvests what was written into the dirty state without
     * uploading it; the next sync uploads it. */
    p[9 * PAGE] = 9;
    CHECK(cohmem_bo_scan(bo, NULL));
    CHECK(cohmem_bo_dirty_state(bo, &state, runs, 8, &nruns));
    printf("dirty state: method %s, %llu dirty page(s), first run %u+%u\n", cohmem_method_name(state.method),
           (unsigned long long)state.dirty_pages, nruns > 0 ? runs[0].first_page : 0,
           nruns > 0 ? runs[0].pages : 0);
    EXPECT(state.dirty_pages == 1 && nruns == 1 && runs[0].first_page == 9 && runs[0].pages == 1,
           "expected page 9 alone dirty");
    CHECK(cohmem_bo_sync(bo, &done));
    EXPECT(done.pages == 1, "the scanned page was not uploaded (%llu pages)", (unsigned long long)done.pages);

    /* A BO rewritten whole every frame is cheaper untracked. */
    cohmem_policy previous;
    cohmem_method method;
    CHECK(cohmem_bo_set_policy(bo, COHMEM_POLICY_FULL, &previous, &method));
    p[3 * PAGE] = 3;
    CHECK(cohmem_bo_sync(bo, &done));
    printf("policy %s (was %s): a 1-byte store synced %llu pages\n", cohmem_policy_name(COHMEM_POLICY_FULL),
           cohmem_policy_name(previous), (unsigned long long)done.pages);
    EXPECT(done.pages == PAGES, "the full policy uploads the whole BO");
    CHECK(cohmem_bo_set_policy(bo, COHMEM_POLICY_AUTO, &previous, &method));
    EXPECT(previous == COHMEM_POLICY_FULL, "the policy was %s", cohmem_policy_name(previous));
    CHECK(cohmem_bo_sync(bo, NULL));

    struct cohmem_bo_stats stats;
    CHECK(cohmem_bo_stats_get(bo, &stats));
    printf("BO %llu: %llu syncs, %llu pages uploaded, policy %s, method %s\n", (unsigned long long)cohmem_bo_id(bo),
           (unsigned long long)stats.syncs, (unsigned long long)stats.pages_uploaded,
           cohmem_policy_name(stats.policy), cohmem_method_name(stats.method));
    return 0;
}

/* Part 4: the BO's bytes, seen three ways. */
static int check_bytes(cohmem_bo *bo, const unsigned char *p)
{
    int fd = -1;
    struct cohmem_snapshot snap;
    CHECK(cohmem_bo_snapshot(bo, &fd, &snap));
    unsigned char *copy = mmap(NULL, snap.size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    EXPECT(copy != MAP_FAILED, "mmap of the snapshot failed");
    EXPECT(snap.size == PAGES * PAGE && memcmp(copy, p, snap.size) == 0, "the snapshot differs from the BO");
    munmap(copy, snap.size);
    printf("snapshot equals the BO (%llu bytes, exact %d)\n", (unsigned long long)snap.size, snap.exact);

    char text[16] = {0};
    CHECK(cohmem_bo_read(bo, 5 * PAGE + 100, text, sizeof text - 1));
    EXPECT(strcmp(text, "hello from C") == 0, "cohmem_bo_read gave \"%s\"", text);

    struct cohmem_readback rb;
    CHECK(cohmem_bo_readback(bo, &rb));
    EXPECT(gpu_equals(bo, 0, p, PAGES * PAGE) == 0, "after a readback the GPU copy differs from the BO");
    printf("read back %llu bytes from the GPU: \"%s\"\n", (unsigned long long)rb.bytes, text);
    return 0;
}

/* Part 5: under the explicit mechanism only reported damage is sure to be
 * uploaded. */
static int explicit_damage(cohmem_connection *conn)
{
    cohmem_mechanism now;
    struct cohmem_mechanism_switch sw;
    struct cohmem_sync_result done;

    CHECK(cohmem_get_mechanism(conn, &now));
    CHECK(cohmem_set_mechanism(conn, COHMEM_MECHANISM_EXPLICIT, &sw));
    printf("mechanism %s -> %s (%u mapping(s) moved)\n", cohmem_mechanism_name(now), cohmem_mechanism_name(sw.to),
           sw.views);

    /* A switch marks every mapping wholly dirty once (nothing is lost);
     * a new BO shows the explicit mechanism alone. */
    cohmem_bo *bo = NULL;
    cohmem_mapping *bmap = NULL;
    CHECK(cohmem_bo_create(conn, PAGES * PAGE, &bo));
    CHECK(cohmem_bo_map(bo, &bmap));
    unsigned char *p = cohmem_mapping_ptr(bmap);
    memset(p + 4 * PAGE, 0x44, 64);
    CHECK(cohmem_bo_sync(bo, &done));
    printf("explicit: an unreported store synced %llu pages (mechanism %s)\n", (unsigned long long)done.pages,
           cohmem_mechanism_name(done.mechanism));
    EXPECT(done.mechanism == COHMEM_MECHANISM_EXPLICIT, "the sync did not run under the explicit mechanism");
    if (done.pages == 0)
        EXPECT(gpu_equals(bo, 4 * PAGE, p + 4 * PAGE, 64) == 1, "the unreported store reached the GPU");

    struct cohmem_range damaged = {.offset = 4 * PAGE, .len = 64};
    CHECK(cohmem_bo_sync_damaged(bo, &damaged, 1, &done));
    printf("explicit: the reported store synced %llu page(s)\n", (unsigned long long)done.pages);
    EXPECT(done.pages == 1, "expected the damaged page");
    EXPECT(gpu_equals(bo, 0, p, PAGES * PAGE) == 0, "the GPU copy differs after the damaged sync");
    CHECK(cohmem_unmap(bmap));
    cohmem_bo_free(bo);

    /* An image BO reports rectangles of pixels. */
    cohmem_bo *img = NULL;
    cohmem_mapping *map = NULL;
    struct cohmem_image_info info;
    CHECK(cohmem_image_create(conn, 64, 64, COHMEM_FORMAT_XRGB8888, &img));
    CHECK(cohmem_bo_image_info(img, &info));
    CHECK(cohmem_bo_map(img, &map));
    unsigned char *px = cohmem_mapping_ptr(map);
    CHECK(cohmem_bo_sync(img, NULL));
    for (uint32_t y = 10; y < 20; y++)
        for (uint32_t x = 5; x < 15; x++)
            put_pixel(px, &info, x, y, 0x0000ff00);
    struct cohmem_rect r = {.x = 5, .y = 10, .w = 10, .h = 10};
    CHECK(cohmem_bo_sync_damaged_rects(img, &r, 1, &done));
    printf("explicit: a damaged 10x10 rectangle synced %llu page(s)\n", (unsigned long long)done.pages);
    EXPECT(done.pages >= 1, "the damaged rectangle was not uploaded");
    size_t row0 = info.offset + 10 * (size_t)info.pitch;
    EXPECT(gpu_equals(img, row0, px + row0, 10 * (size_t)info.pitch) == 0, "the rectangle's rows differ");
    CHECK(cohmem_unmap(map));
    cohmem_bo_free(img);
    return 0;
}

/* Part 6: a sync that does not block the calling thread (an event loop
 * polls the fd with everything else it waits for). */
static int background_sync(cohmem_bo *bo, unsigned char *p)
{
    cohmem_pending_sync *pending = NULL;
    struct cohmem_sync_result done;

    memset(p + 11 * PAGE, 0x11, 16);
    CHECK(cohmem_bo_sync_start(bo, &pending));
    struct pollfd pfd = {.fd = cohmem_pending_sync_fd(pending), .events = POLLIN};
    EXPECT(poll(&pfd, 1, 10000) == 1 && cohmem_pending_sync_done(pending), "the sync did not complete");
    CHECK(cohmem_pending_sync_wait(pending, &done));
    printf("background sync: %llu page(s), signalled on fd %d\n", (unsigned long long)done.pages, pfd.fd);
    EXPECT(done.pages == 1, "expected the page written");
    return 0;
}

int main(int argc, char **argv)
{
    cohmem_connection *conn = NULL;
    cohmem_bo *bo = NULL;
    cohmem_mapping *map = NULL;
    struct cohmem_sync_result done;

    PAGE = (size_t)sysconf(_SC_PAGESIZE);
    CHECK(cohmem_connect(argc > 1 ? argv[1] : NULL, &conn));
    CHECK(cohmem_bo_create(conn, PAGES * PAGE, &bo));
    CHECK(cohmem_bo_map(bo, &map));

    unsigned char *p = cohmem_mapping_ptr(map);
    EXPECT(p != NULL && cohmem_mapping_len(map) == PAGES * PAGE, "bad mapping");
    /* 1. No sync is needed before writing: a new BO and its GPU copy start
     * equal (zero), and even a first sync uploads only the pages written. */
    memset(p + 2 * PAGE, 0xab, PAGE);
    strcpy((char *)p + 5 * PAGE + 100, "hello from C");
    CHECK(cohmem_bo_sync(bo, &done));
    printf("synced %llu pages (%llu bytes) in %llu ns, mechanism %s, method %s\n", (unsigned long long)done.pages,
           (unsigned long long)done.bytes, (unsigned long long)done.duration_ns,
           cohmem_mechanism_name(done.mechanism), cohmem_method_name(done.method));
    EXPECT(done.pages == 2, "expected exactly the 2 pages written, got %llu", (unsigned long long)done.pages);

    /* Pinned I/O (an O_DIRECT read, io_uring, a device) fills pages with
     * no write fault: report the range once the I/O completed. Here a
     * read(2) from a pipe into page 7 stands for it. */
    int fds[2];
    EXPECT(pipe(fds) == 0 && write(fds[1], "pinned", 6) == 6 && read(fds[0], p + 7 * PAGE, 6) == 6,
           "pipe read into the mapping failed");
    close(fds[0]);
    close(fds[1]);
    CHECK(cohmem_bo_damage(bo, 7 * PAGE, 6));
    CHECK(cohmem_bo_sync(bo, &done));
    printf("damaged and synced %llu page(s)\n", (unsigned long long)done.pages);
    EXPECT(done.pages == 1, "expected the 1 damaged page, got %llu", (unsigned long long)done.pages);
    EXPECT(gpu_equals(bo, 0, p, PAGES * PAGE) == 0, "the GPU copy differs from the BO");
    printf("GPU copy equals the BO (%zu bytes)\n", PAGES * PAGE);

    struct cohmem_stats stats;
    CHECK(cohmem_stats_get(conn, &stats));
    printf("daemon: %llu syncs, %llu pages uploaded\n", (unsigned long long)stats.syncs,
           (unsigned long long)stats.pages_uploaded);

    if (tracker_and_policy(bo, p) != 0)
        return 1;
    if (image_demo(conn) != 0)
        return 1;
    if (check_bytes(bo, p) != 0)
        return 1;
    if (background_sync(bo, p) != 0)
        return 1;
    if (explicit_damage(conn) != 0)
        return 1;

    /* 7. A bad request gets a typed error, a name and a message. */
    cohmem_bo *huge = NULL;
    int rc = cohmem_bo_create(conn, 1ULL << 50, &huge);
    EXPECT(rc == COHMEM_E_DAEMON && cohmem_last_daemon_code() == COHMEM_DAEMON_E_TOO_LARGE,
           "a 1 PiB BO was not refused as too large (%s)", cohmem_strerror(rc));
    printf("refused as expected: %s, daemon code %s: %s\n", cohmem_strerror(rc),
           cohmem_daemon_error_name(cohmem_last_daemon_code()), cohmem_last_error());

    CHECK(cohmem_unmap(map));
    cohmem_bo_free(bo);
    cohmem_disconnect(conn);
    printf("ok\n");
    return 0;
}
